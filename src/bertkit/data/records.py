"""Record formats: OneFlow OFRecord and Google TFRecord, read and written, and their records as fixed-length arrays.

References:
- OneFlow `oneflow/core/record/record.proto` and its OFRecord reader: a part file is a sequence of
  [int64 little-endian length][serialized OFRecord]; a dataset is a directory `part-0 ... part-{N-1}`
  (the seed's `--data_dir` and `--data_part_num`).
- TensorFlow `core/example/{example,feature}.proto` and `core/lib/io/record_writer.cc`: a TFRecord file is a
  sequence of [uint64 length][masked crc32c of the length][data][masked crc32c of the data], data a tf.train.Example.
- The Protocol Buffers encoding guide (varints, wire types, packed repeated fields). Only the few messages above are
  encoded and decoded, by hand, so bertkit needs neither the protobuf package nor generated code:
      OFRecord {map<string, Feature> feature = 1}      Feature oneof {bytes_list = 1, float_list = 2,
                                                                      double_list = 3, int32_list = 4, int64_list = 5}
      Example {Features features = 1}                  Features {map<string, Feature> feature = 1}
                                                       Feature oneof {bytes_list = 1, float_list = 2, int64_list = 3}
  A map entry is a message {key = 1, value = 2}; every *List is {repeated T value = 1}, packed for numbers.

A record is a dict: feature name -> 1-D numpy array (int32, int64, float32, float64, or object holding bytes).
For training, `read_arrays` checks the features a `Spec` names (present, right length) and stacks them, decoding a
chunk of records per numpy call; `loader` turns those into memory-mapped shards and batches.

OFRecord has no checksum of its own (TFRecord has a CRC per record), so every OFRecord file bertkit writes gets a
sidecar `<file>.sha256` in `sha256sum` format (`sha256sum -c part-0.sha256` checks it too); a file that has one is
verified before it is read. A file read in the wrong format gets an error that says which format it looks like.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import google_crc32c
import numpy as np

from bertkit.runtime.atomic import atomic_output  # the one atomic writer; loader and pretraining_data import it here

BYTES = np.dtype(object)
# Feature field number -> value dtype, per format (the oneof above).
OFRECORD_KINDS = {1: BYTES, 2: np.dtype("<f4"), 3: np.dtype("<f8"), 4: np.dtype(np.int32), 5: np.dtype(np.int64)}
EXAMPLE_KINDS = {1: BYTES, 2: np.dtype("<f4"), 3: np.dtype(np.int64)}
HEADER = {"ofrecord": 8, "tfrecord": 12}  # bytes before a record's data: length (+ its CRC for TFRecord)
TRAILER = {"ofrecord": 0, "tfrecord": 4}  # bytes after it: the data CRC for TFRecord


class RecordError(ValueError):
    """A record that cannot be read; the message names the file, record index, byte offset and feature."""

    def __init__(self, path: str | Path, index: int, offset: int, reason: str, feature: str | None = None) -> None:
        self.path, self.index, self.offset, self.feature = str(path), index, offset, feature
        where = f"{path}: record {index} at byte offset {offset}"
        super().__init__(f"{where}, feature '{feature}': {reason}" if feature else f"{where}: {reason}")


class _ParseError(ValueError):
    """Protobuf that does not parse; `pos` is relative to the message, `feature` is set once known."""

    def __init__(self, reason: str, pos: int, feature: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.pos, self.feature = reason, pos, feature


# --- protobuf wire format: decoding -------------------------------------------------------------------------


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


# --- file framing ---------------------------------------------------------------------------------------------


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant (record_writer.cc's MaskedCrc)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def checksum_path(path: str | Path) -> Path:
    """The checksum sidecar of a record file: `part-0` -> `part-0.sha256` (not a `part-<i>` name, so a data
    directory's part list does not include it)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | Path) -> bool:
    """Check `path` against its sidecar `<path>.sha256` when there is one; returns whether there was.

    Raises ValueError naming the file when the sums differ or the sidecar does not parse. Reads the whole file
    (hashlib, ~1-2 GB/s), once per read of the file: a cost next to parsing it, none next to training from it.
    """
    path = Path(path)
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return False
    want = sidecar.read_text(encoding="utf-8", errors="replace").split()
    if not want or len(want[0]) != 64 or any(c not in "0123456789abcdef" for c in want[0].lower()):
        raise ValueError(f"{sidecar}: not a sha256 checksum file (expected '<64 hex digits>  {path.name}')")
    got = _sha256_of(path)
    if got != want[0].lower():
        raise ValueError(
            f"{path}: damaged or changed since it was written: its sha256 is {got[:16]}..., {sidecar.name} says "
            f"{want[0][:16]}...; restore the file, or delete {sidecar} if it was changed on purpose"
        )
    return True


def _write(path: str | Path, records: Iterable[dict[str, np.ndarray]], fmt: str) -> int:
    return write_serialized(path, map(serialize_ofrecord if fmt == "ofrecord" else serialize_example, records), fmt)


def write_serialized(path: str | Path, payloads: Iterable[bytes], fmt: str) -> int:
    """Write one file of already serialized records (`serialize_example` / `serialize_ofrecord` / `serialize_rows`
    output), framed for `fmt` ("tfrecord" or "ofrecord", which also gets its sidecar); returns the record count."""
    path, n = Path(path), 0
    digest = hashlib.sha256()  # of the bytes as written, so the file is not read back
    sidecar = checksum_path(path)
    pack_q, pack_i, pack_lq = struct.Struct("<q").pack, struct.Struct("<I").pack, struct.Struct("<Q").pack
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        frames: list[bytes] = []
        for data in payloads:
            if fmt == "ofrecord":
                frames += (pack_q(len(data)), data)
            else:
                length = pack_lq(len(data))
                frames += (length, pack_i(masked_crc32c(length)), data, pack_i(masked_crc32c(data)))
            n += 1
            if len(frames) >= 4096:  # a few MB per write
                chunk = b"".join(frames)
                fh.write(chunk)
                digest.update(chunk)
                frames.clear()
        chunk = b"".join(frames)
        fh.write(chunk)
        digest.update(chunk)
        # An old sidecar goes before the new file takes the name: never a stale sum beside new data.
        sidecar.unlink(missing_ok=True)
    if fmt == "ofrecord":  # TFRecord has its own CRCs
        with atomic_output(sidecar) as tmp:
            tmp.write_text(f"{digest.hexdigest()}  {path.name}\n", encoding="utf-8")
    return n


def write_ofrecord(path: str | Path, records: Iterable[dict[str, np.ndarray]]) -> int:
    """Write one OFRecord part file (name it `part-<i>` inside a dataset directory) and its checksum sidecar
    `<path>.sha256`; returns the record count."""
    return _write(path, records, "ofrecord")


def write_tfrecord(path: str | Path, records: Iterable[dict[str, np.ndarray]]) -> int:
    """Write one TFRecord file of tf.train.Example records; returns the record count."""
    return _write(path, records, "tfrecord")


def _frames(path: Path, fmt: str, read_data: bool = True) -> Iterator[tuple[int, int, bytes | None]]:
    """(index, byte offset, data) per record of one file, its framing (and TFRecord CRCs) checked; when the data
    is read, the file is first checked against its checksum sidecar, if it has one."""
    header, trailer = HEADER[fmt], TRAILER[fmt]
    if read_data:
        verify_checksum(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        index = offset = 0
        while offset < size:
            head = fh.read(header)
            if len(head) < header:
                reason = f"truncated record: {len(head)} of {header} header bytes"
                raise RecordError(path, index, offset, _hinted(path, fmt, reason))
            if fmt == "tfrecord":
                length, crc = struct.unpack("<QI", head)
                if masked_crc32c(head[:8]) != crc:
                    reason = "bad CRC of the length field (corrupt file?)"
                    raise RecordError(path, index, offset, _hinted(path, fmt, reason) if index == 0 else reason)
            else:
                (length,) = struct.unpack("<q", head)
            end = offset + header + length + trailer
            if length < 0 or end > size:
                reason = (
                    f"truncated record: the length prefix says {length} bytes, past the end of the file ({size} bytes)"
                )
                raise RecordError(path, index, offset, _hinted(path, fmt, reason))
            data = None
            if read_data:
                data = fh.read(length)
                if fmt == "tfrecord":
                    (crc,) = struct.unpack("<I", fh.read(4))
                    if masked_crc32c(data) != crc:
                        raise RecordError(path, index, offset, "bad CRC of the record data (corrupt file?)")
            else:
                fh.seek(end)
            yield index, offset, data
            index, offset = index + 1, end


def _looks_like_ofrecord(path: Path) -> bool:
    """Whether the file opens with OFRecord framing: a length prefix that fits the file and a record that parses."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return False
        (length,) = struct.unpack("<q", head)
        if length < 0 or 8 + length > path.stat().st_size:
            return False
        try:
            return bool(parse_ofrecord(fh.read(length)))
        except ValueError:
            return False


def _hinted(path: Path, fmt: str, reason: str) -> str:
    """`reason` for an error in reading `path` as `fmt`, led by what the file is instead when it looks like the
    other format (worked out only once something has gone wrong, so it costs nothing on good files)."""
    try:
        if fmt == "ofrecord" and sniff_format(path) == "tfrecord":
            hint = "this is a TFRecord file (its length CRCs check out): pass --input_format tfrecord (or auto)"
        elif fmt == "tfrecord" and _looks_like_ofrecord(path):
            hint = (
                "this looks like an OFRecord file (a length prefix without a CRC, then a record that parses): "
                "pass --input_format ofrecord (or auto)"
            )
        else:
            return reason
    except OSError:
        return reason
    return f"{hint} (read as {'OFRecord' if fmt == 'ofrecord' else 'TFRecord'}: {reason})"


def _parse_error(path: Path, fmt: str, index: int, offset: int, e: _ParseError) -> RecordError:
    at = offset + HEADER[fmt] + e.pos
    reason = f"protobuf does not parse: {e.reason} (byte {at})"
    return RecordError(path, index, offset, _hinted(path, fmt, reason) if index == 0 else reason, e.feature)


def _records(path: Path, fmt: str) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    parse = parse_ofrecord if fmt == "ofrecord" else parse_example
    for index, offset, data in _frames(path, fmt):
        try:
            yield index, offset, parse(data)
        except _ParseError as e:
            raise _parse_error(path, fmt, index, offset, e) from None


def read_ofrecord(path: str | Path) -> Iterator[dict[str, np.ndarray]]:
    """The records of one OFRecord part file, in order."""
    return (rec for _, _, rec in _records(Path(path), "ofrecord"))


def read_tfrecord(path: str | Path) -> Iterator[dict[str, np.ndarray]]:
    """The tf.train.Example records of one TFRecord file, in order; both CRCs of every record are verified."""
    return (rec for _, _, rec in _records(Path(path), "tfrecord"))


# --- fixed-length features: records -> arrays ----------------------------------------------------------------


class Spec(NamedTuple):
    """What a feature must be: `length` values per record, stored as `dtype`; `flag` sets the length."""

    length: int
    dtype: type
    flag: str | None = None


def pretraining_features(seq_length: int, max_predictions_per_seq: int) -> dict[str, Spec]:
    """The features of Google's and the seed's pretraining records."""
    T = Spec(seq_length, np.int32, "--seq_length")
    P = Spec(max_predictions_per_seq, np.int32, "--max_predictions_per_seq")
    return {
        "input_ids": T,
        "input_mask": T,
        "segment_ids": T,
        "masked_lm_positions": P,
        "masked_lm_ids": P,
        "masked_lm_weights": P._replace(dtype=np.float32),
        "next_sentence_labels": Spec(1, np.int32),
    }


def squad_features(seq_length: int, training: bool) -> dict[str, Spec]:
    """The features of the seed's SQuAD records: answer positions when training, unique ids for prediction."""
    T = Spec(seq_length, np.int32, "--seq_length")
    extra = ("start_positions", "end_positions") if training else ("unique_ids",)
    return {"input_ids": T, "input_mask": T, "segment_ids": T, **{n: Spec(1, np.int64) for n in extra}}


def _check(record: dict[str, np.ndarray], spec: dict[str, Spec], path: Path, index: int, offset: int) -> None:
    for name, s in spec.items():
        values = record.get(name)
        if values is None:
            have = ", ".join(sorted(record)) or "no features"
            raise RecordError(path, index, offset, f"missing (the record has {have})", name)
        if values.dtype.kind not in "iuf" or (np.dtype(s.dtype).kind == "i" and values.dtype.kind == "f"):
            raise RecordError(path, index, offset, f"holds {values.dtype} values, expected {np.dtype(s.dtype)}", name)
        if values.size != s.length:
            want = f"but {s.flag} is {s.length}" if s.flag else f"expected {s.length}"
            raise RecordError(path, index, offset, f"has {values.size} values {want}", name)


def sniff_format(path: str | Path) -> str:
    """'tfrecord' if the file opens with a length whose CRC checks out, else 'ofrecord' (a chance of 2^-32)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    ok = len(head) == 12 and masked_crc32c(head[:8]) == struct.unpack("<I", head[8:])[0]
    return "tfrecord" if ok else "ofrecord"


def count_records(path: str | Path, fmt: str) -> int:
    """Records in one file, counted from the length prefixes alone (framing checked, data not read)."""
    return sum(1 for _ in _frames(Path(path), fmt, read_data=False))


CHUNK = 1024  # records decoded together: one numpy call per feature, not one per record and feature


class _Irregular(Exception):
    """A chunk the bulk decoder leaves to the record-by-record one (which also words any error precisely)."""


def _bulk_decode(datas: list[bytes], runs: list[tuple[np.dtype, list] | None], s: Spec) -> np.ndarray:
    """One feature of a chunk of records, (K, length): the fast path for the usual case, where every record holds
    it as one packed run of `length` numbers of one dtype; the runs are joined and decoded in one call."""
    if any(r is None or len(r[1]) != 1 or r[0] != runs[0][0] for r in runs):
        raise _Irregular  # missing, unpacked, split or mixed-dtype lists
    dtype = runs[0][0]
    if dtype is BYTES or (dtype.kind == "f" and np.dtype(s.dtype).kind != "f"):
        raise _Irregular
    joined = b"".join(d[a:b] for d, (_, [(a, b)]) in zip(datas, runs, strict=True))
    sizes = np.array([b - a for _, [(a, b)] in runs])
    if dtype.kind == "f":
        if (sizes != s.length * dtype.itemsize).any():
            raise _Irregular
        return np.frombuffer(joined, dtype).reshape(len(runs), s.length)
    # A varint's last byte has the high bit clear: counting those per run counts its values, and a run must
    # end on one, else a truncated value would borrow bytes from the next record's run.
    last = np.frombuffer(joined, np.uint8) < 0x80
    starts = np.cumsum(sizes) - sizes
    if (sizes == 0).any() or not last[starts + sizes - 1].all():
        raise _Irregular
    if (np.add.reduceat(last, starts, dtype=np.int64) != s.length).any():
        raise _Irregular
    return _unpack_varints(joined, 0, len(joined)).reshape(len(runs), s.length)


def _decode_chunk(path: Path, fmt: str, chunk: list[tuple[int, int, bytes]], spec: dict[str, Spec]) -> dict:
    """The `spec` features of a chunk of records as arrays (K, length), checked; errors name the record."""
    structure = _ofrecord_runs if fmt == "ofrecord" else _example_runs
    runs = []
    for index, offset, data in chunk:
        try:
            runs.append(structure(data))
        except _ParseError as e:
            raise _parse_error(path, fmt, index, offset, e) from None
    datas = [data for _, _, data in chunk]
    try:
        return {name: _bulk_decode(datas, [r.get(name) for r in runs], s).astype(s.dtype) for name, s in spec.items()}
    except (_Irregular, _ParseError):
        pass
    out = {name: np.empty((len(chunk), s.length), s.dtype) for name, s in spec.items()}
    for k, ((index, offset, data), r) in enumerate(zip(chunk, runs, strict=True)):
        try:
            record = _decode(data, {name: r[name] for name in spec if name in r})
        except _ParseError as e:
            raise _parse_error(path, fmt, index, offset, e) from None
        _check(record, spec, path, index, offset)
        for name in spec:
            out[name][k] = record[name]
    return out


def read_arrays(path: str | Path, spec: dict[str, Spec], fmt: str = "auto") -> Iterator[dict[str, np.ndarray]]:
    """The `spec` features of every record of one file, checked, as arrays (K, length) per chunk of K records."""
    path = Path(path)
    fmt = sniff_format(path) if fmt == "auto" else fmt
    frames = _frames(path, fmt)
    while chunk := list(itertools.islice(frames, CHUNK)):
        yield _decode_chunk(path, fmt, chunk, spec)
