"""The protocol buffers of OneFlow's OFRecord and TensorFlow's tf.train.Example, encoded and decoded by hand.

References: OneFlow `oneflow/core/record/record.proto`; TensorFlow `core/example/{example,feature}.proto`; the
Protocol Buffers encoding guide (varints, wire types, packed repeated fields). Only these messages, so bertkit
needs neither the protobuf package nor generated code:
    OFRecord {map<string, Feature> feature = 1}      Feature oneof {bytes_list = 1, float_list = 2,
                                                                    double_list = 3, int32_list = 4, int64_list = 5}
    Example {Features features = 1}                  Features {map<string, Feature> feature = 1}
                                                     Feature oneof {bytes_list = 1, float_list = 2, int64_list = 3}
A map entry is a message {key = 1, value = 2}; every *List is {repeated T value = 1}, packed for numbers.
A record is a dict: feature name -> 1-D numpy array (int32, int64, float32, float64, or object holding bytes).
`data/records.py` frames these messages into files.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BYTES = np.dtype(object)
# Feature field number -> value dtype, per format (the oneof above).
OFRECORD_KINDS = {1: BYTES, 2: np.dtype("<f4"), 3: np.dtype("<f8"), 4: np.dtype(np.int32), 5: np.dtype(np.int64)}
EXAMPLE_KINDS = {1: BYTES, 2: np.dtype("<f4"), 3: np.dtype(np.int64)}


class _ParseError(ValueError):
    """Protobuf that does not parse; `pos` is relative to the message, `feature` is set once known."""

    def __init__(self, reason: str, pos: int, feature: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.pos, self.feature = reason, pos, feature


# --- protobuf wire format: decoding -------------------------------------------------------------------------


def varint(buf: bytes, pos: int, end: int | None = None) -> tuple[int, int]:
    """One varint at buf[pos:end] -> (value, position after it); ParseError when truncated or over 10 bytes. The one
    protobuf decoder bertkit has: records (here) and TensorFlow checkpoint indexes (checkpoint/tf_bundle.py) use it."""
    return _varint(buf, pos, len(buf) if end is None else end)


def fields(buf: bytes, pos: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """The fields of the message buf[pos:end] as (field number, wire type, value start, value end); ParseError on a
    malformed message (wire types 3, 4, 6, 7, field 0, a field past the end)."""
    return _fields(buf, pos, len(buf) if end is None else end)


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """One varint at buf[pos:] -> (value, position after it). Used for tags and lengths only."""
    if pos < end and buf[pos] < 0x80:  # the common case: tags and short lengths are one byte
        return buf[pos], pos + 1
    value = shift = 0
    while shift < 70:
        if pos >= end:
            raise _ParseError("truncated varint", pos)
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    raise _ParseError("varint longer than 10 bytes", pos)


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """The fields of the message buf[pos:end] as (field number, wire type, value start, value end)."""
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _ParseError("field number 0 (not a protobuf message)", start)
        if wire == 0:  # varint: (start, end) span its bytes
            a = pos
            _, pos = _varint(buf, pos, end)
        elif wire == 1:  # fixed64
            a, pos = pos, pos + 8
        elif wire == 2:  # length-delimited
            n, a = _varint(buf, pos, end)
            pos = a + n
        elif wire == 5:  # fixed32
            a, pos = pos, pos + 4
        else:  # groups (3, 4) are not in these messages; 6 and 7 do not exist
            raise _ParseError(f"wire type {wire} (not a protobuf message these formats use)", start)
        if pos > end:
            raise _ParseError(f"field {number} runs past the end of its message", start)
        yield number, wire, a, pos


def _unpack_varints(buf: bytes, a: int, b: int) -> np.ndarray:
    """Every varint in buf[a:b] as int64, vectorised: a 128-token list is a few numpy calls, not a byte loop."""
    raw = np.frombuffer(buf, np.uint8, b - a, a)
    more = raw >= 0x80  # continuation bit: another byte of this value follows
    if not more.any():  # all values < 128 (masks, segment ids, labels): one byte each
        return raw.astype(np.int64)
    if more[-1]:
        raise _ParseError("truncated varint in a packed list", b)
    last = np.flatnonzero(~more)  # index of each value's final byte
    first = np.concatenate(([0], last[:-1] + 1))
    nbytes = last - first + 1
    if nbytes.max() > 10:
        raise _ParseError("varint longer than 10 bytes in a packed list", a)
    shift = 7 * (np.arange(raw.size) - np.repeat(first, nbytes))
    # The 7-bit groups do not overlap, so adding them is or-ing them; uint64 wraps the 10th byte into bit 63,
    # which reinterpreted as int64 is the two's complement that protobuf uses for negative numbers.
    parts = (raw & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
    return np.add.reduceat(parts, first).view(np.int64)


def _decode_values(buf: bytes, a: int, b: int, dtype: np.dtype) -> np.ndarray:
    """A packed run (or one unpacked value) of `dtype` numbers in buf[a:b]."""
    if dtype.kind == "f":
        if (b - a) % dtype.itemsize:
            raise _ParseError(f"{b - a} bytes is not a whole number of {dtype.itemsize}-byte floats", a)
        return np.frombuffer(buf, dtype, (b - a) // dtype.itemsize, a).copy()
    # int32 is sent as a sign-extended 64-bit varint, so narrowing keeps negative values right.
    return _unpack_varints(buf, a, b).astype(dtype, copy=False)


def _list_runs(buf: bytes, a: int, b: int, dtype: np.dtype) -> list[tuple[int, int]]:
    """The value runs (start, end) of a *List message {repeated T value = 1}.

    A run is one packed block of numbers, one unpacked number or one bytes value: packed and unpacked encodings are
    both legal protobuf, so both are read.
    """
    scalar_wire = {"i": 0, "f": 5 if dtype.itemsize == 4 else 1}.get(dtype.kind)
    runs = []
    for number, wire, s, e in _fields(buf, a, b):
        if number != 1:
            continue  # an unknown field: protobuf readers skip it
        if wire != 2 and wire != scalar_wire:
            raise _ParseError(f"wire type {wire} for a value of a {dtype} list", s)
        runs.append((s, e))
    return runs


def _decode_runs(buf: bytes, dtype: np.dtype, runs: list[tuple[int, int]]) -> np.ndarray:
    if dtype is BYTES:
        out = np.empty(len(runs), BYTES)
        out[:] = [bytes(buf[s:e]) for s, e in runs]
        return out
    chunks = [_decode_values(buf, s, e, dtype) for s, e in runs]
    if not chunks:
        return np.empty(0, dtype)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


Runs = dict[str, tuple[np.dtype, list[tuple[int, int]]]]  # feature name -> (value dtype, value runs)


def _feature_map_runs(buf: bytes, a: int, b: int, kinds: dict[int, np.dtype]) -> Runs:
    """Field 1, a map<string, Feature>: repeated entries {key = 1, value = 2}; a Feature is a oneof of lists."""
    out = {}
    for number, wire, s, e in _fields(buf, a, b):
        if number != 1:
            continue
        if wire != 2:
            raise _ParseError(f"map entry has wire type {wire}, expected a message", s)
        key, span = "", None
        for n2, w2, s2, e2 in _fields(buf, s, e):
            if n2 == 1 and w2 == 2:
                try:
                    key = bytes(buf[s2:e2]).decode("utf-8")
                except UnicodeDecodeError:
                    raise _ParseError("feature name is not UTF-8", s2) from None
            elif n2 == 2 and w2 == 2:
                span = (s2, e2)
        value = (np.dtype(np.int64), [])  # a Feature with no kind set holds no values
        try:
            for n3, w3, s3, e3 in _fields(buf, *span) if span else ():
                if n3 in kinds:
                    if w3 != 2:
                        raise _ParseError(f"Feature field {n3} has wire type {w3}, expected a message", s3)
                    value = (kinds[n3], _list_runs(buf, s3, e3, kinds[n3]))  # a oneof: the last kind set wins
        except _ParseError as err:
            err.feature = key
            raise
        out[key] = value
    return out


def _ofrecord_runs(data: bytes) -> Runs:
    return _feature_map_runs(data, 0, len(data), OFRECORD_KINDS)


def _example_runs(data: bytes) -> Runs:
    out = {}
    for number, wire, s, e in _fields(data, 0, len(data)):
        if number == 1 and wire == 2:
            out.update(_feature_map_runs(data, s, e, EXAMPLE_KINDS))  # repeated sub-messages merge
        elif number == 1:
            raise _ParseError(f"Example.features has wire type {wire}, expected a message", s)
    return out


def _decode(data: bytes, runs: Runs) -> dict[str, np.ndarray]:
    out = {}
    for name, (dtype, spans) in runs.items():
        try:
            out[name] = _decode_runs(data, dtype, spans)
        except _ParseError as err:
            err.feature = name
            raise
    return out


def parse_ofrecord(data: bytes) -> dict[str, np.ndarray]:
    """A serialized oneflow.OFRecord -> record. Raises ValueError if it does not parse."""
    return _decode(data, _ofrecord_runs(data))


def parse_example(data: bytes) -> dict[str, np.ndarray]:
    """A serialized tf.train.Example -> record. Raises ValueError if it does not parse."""
    return _decode(data, _example_runs(data))


# --- protobuf wire format: encoding -------------------------------------------------------------------------


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _message_field(number: int, payload: bytes) -> bytes:
    return _varint_bytes(number << 3 | 2) + _varint_bytes(len(payload)) + payload


def _pack_varints(values: np.ndarray) -> bytes:
    """Packed varints, vectorised; negative numbers take 10 bytes (sign-extended to 64 bits), as protobuf does."""
    v = values.astype(np.int64).view(np.uint64)
    if v.size == 0 or v.max() < 0x80:
        return v.astype(np.uint8).tobytes()
    nbytes = 1 + sum((v >> np.uint64(7 * k) > 0).astype(np.int64) for k in range(1, 10))
    first = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), np.uint8)
    for k in range(int(nbytes.max())):
        has = nbytes > k
        group = (v[has] >> np.uint64(7 * k)) & np.uint64(0x7F)
        out[first[has] + k] = group | np.where(nbytes[has] > k + 1, 0x80, 0).astype(np.uint64)
    return out.tobytes()


def _encode_feature_map(record: dict[str, np.ndarray], kind_of) -> bytes:
    entries = []
    for name, values in record.items():
        values = np.atleast_1d(np.asarray(values))
        number, dtype = kind_of(name, values)
        if dtype is BYTES:
            body = b"".join(_message_field(1, bytes(v)) for v in values)
        elif dtype.kind == "f":
            body = _message_field(1, values.astype(dtype).tobytes())
        else:
            body = _message_field(1, _pack_varints(values))
        entry = _message_field(1, name.encode("utf-8")) + _message_field(2, _message_field(number, body))
        entries.append(_message_field(1, entry))
    return b"".join(entries)


def _ofrecord_kind(name: str, values: np.ndarray) -> tuple[int, np.dtype]:
    k, size = values.dtype.kind, values.dtype.itemsize
    if k in "biu":  # int32_list for what fits in int32, else int64_list
        return (4, OFRECORD_KINDS[4]) if size < 4 or (size == 4 and k != "u") else (5, OFRECORD_KINDS[5])
    if k == "f":
        return (2, OFRECORD_KINDS[2]) if size <= 4 else (3, OFRECORD_KINDS[3])
    if k in "OS":
        return 1, BYTES
    raise ValueError(f"feature '{name}': cannot store {values.dtype} values in an OFRecord")


def _example_kind(name: str, values: np.ndarray) -> tuple[int, np.dtype]:
    k = values.dtype.kind
    if k in "biu":
        return 3, EXAMPLE_KINDS[3]
    if k == "f":  # tf.train.Example has no double list: float64 is rounded to float32, as TensorFlow does
        return 2, EXAMPLE_KINDS[2]
    if k in "OS":
        return 1, BYTES
    raise ValueError(f"feature '{name}': cannot store {values.dtype} values in a tf.train.Example")


def serialize_ofrecord(record: dict[str, np.ndarray]) -> bytes:
    """record -> serialized oneflow.OFRecord: int32_list / int64_list / float_list / double_list by dtype."""
    return _encode_feature_map(record, _ofrecord_kind)


def serialize_example(record: dict[str, np.ndarray]) -> bytes:
    """record -> serialized tf.train.Example: integers as int64_list, floats as float_list."""
    return _message_field(1, _encode_feature_map(record, _example_kind))


def serialize_rows(features: dict[str, np.ndarray], fmt: str) -> list[bytes]:
    """Row i of every (N, ...) array -> serialized record i, byte for byte what `serialize_example` (fmt
    "tfrecord") or `serialize_ofrecord` ("ofrecord") makes of `{name: a[i] for name, a in features.items()}`, with
    the varints of all N rows packed in one numpy pass per feature (the per-record encoder's cost is Python calls).
    Numeric arrays only; a bytes (object) feature falls back to the per-record encoder. N rows -> list of N bytes."""
    kind_of = _ofrecord_kind if fmt == "ofrecord" else _example_kind
    n = len(next(iter(features.values()))) if features else 0
    if any(a.dtype.kind in "OS" for a in features.values()):
        serialize = serialize_ofrecord if fmt == "ofrecord" else serialize_example
        return [serialize({name: a[i] for name, a in features.items()}) for i in range(n)]
    columns = []  # per feature: the N row headers and the N packed rows, interleaved below
    for name, a in features.items():
        a = a.reshape(n, -1)
        number, dtype = kind_of(name, a[:0].reshape(-1))
        if dtype.kind == "f":
            flat = np.ascontiguousarray(a, dtype.newbyteorder("<")).tobytes()
            sizes = np.full(n, a.shape[1] * dtype.itemsize, np.int64)
        else:
            v = a.astype(np.int64).view(np.uint64)
            nbytes = np.ones(v.shape, np.int64)
            for k in range(1, 10):
                nbytes += v >> np.uint64(7 * k) > 0
            flat = _pack_varints(v.reshape(-1))
            sizes = nbytes.sum(axis=1)
        key = _message_field(1, name.encode("utf-8"))
        headers = {}
        for size in np.unique(sizes).tolist():  # a feature map entry up to its packed values, by their size
            packed = _varint_bytes(1 << 3 | 2) + _varint_bytes(size)  # the *List's field 1, packed
            inner = _varint_bytes(number << 3 | 2) + _varint_bytes(len(packed) + size)
            value = _varint_bytes(2 << 3 | 2) + _varint_bytes(len(inner) + len(packed) + size)
            entry = len(key) + len(value) + len(inner) + len(packed) + size
            headers[size] = _varint_bytes(1 << 3 | 2) + _varint_bytes(entry) + key + value + inner + packed
        ends = np.cumsum(sizes).tolist()
        columns.append([headers[size] for size in sizes.tolist()])
        columns.append([flat[lo:hi] for lo, hi in zip([0, *ends[:-1]], ends, strict=True)])
    bodies = [b"".join(parts) for parts in zip(*columns, strict=True)] if columns else [b""] * n
    if fmt == "ofrecord":
        return bodies
    outer = {size: _varint_bytes(1 << 3 | 2) + _varint_bytes(size) for size in set(map(len, bodies))}
    return [outer[len(b)] + b for b in bodies]  # the Example's field 1 around the feature map


ParseError = _ParseError  # the public name, for other decoders of protobuf bytes (checkpoint/tf_bundle.py)
