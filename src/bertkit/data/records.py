"""Record formats: OneFlow OFRecord and Google TFRecord, read and written, and their records as fixed-length arrays.

References:
- OneFlow `oneflow/core/record/record.proto` and its OFRecord reader: a part file is a sequence of
  [int64 little-endian length][serialized OFRecord]; a dataset is a directory `part-0 ... part-{N-1}`
  (the seed's `--data_dir` and `--data_part_num`).
- TensorFlow `core/example/{example,feature}.proto` and `core/lib/io/record_writer.cc`: a TFRecord file is a
  sequence of [uint64 length][masked crc32c of the length][data][masked crc32c of the data], data a tf.train.Example.
- The messages themselves (OFRecord, tf.train.Example) are encoded and decoded by hand in `data/protobuf.py`.

A record is a dict: feature name -> 1-D numpy array (int32, int64, float32, float64, or object holding bytes).
For training, `read_arrays` checks the features a `Spec` names (present, right length) and stacks them, decoding a
chunk of records per numpy call; `loader` turns those into memory-mapped shards and batches.

OFRecord has no checksum of its own (TFRecord has a CRC per record), so every OFRecord file bertkit writes gets a
sidecar `<file>.sha256` in `sha256sum` format (`sha256sum -c part-0.sha256` checks it too); a file that has one is
verified before it is read. A file read in the wrong format gets an error that says which format it looks like.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import google_crc32c
import numpy as np

from bertkit.data.protobuf import (  # noqa: F401 - parse_* and serialize_* are this module's API too
    BYTES,
    _decode,
    _example_runs,
    _ofrecord_runs,
    _pack_varints,
    _ParseError,
    _unpack_varints,
    parse_example,
    parse_ofrecord,
    serialize_example,
    serialize_ofrecord,
    serialize_rows,
)
from bertkit.runtime.atomic import atomic_output  # the one atomic writer; loader and pretraining_data import it here

HEADER = {"ofrecord": 8, "tfrecord": 12}  # bytes before a record's data: length (+ its CRC for TFRecord)
TRAILER = {"ofrecord": 0, "tfrecord": 4}  # bytes after it: the data CRC for TFRecord


class RecordError(ValueError):
    """A record that cannot be read; the message names the file, record index, byte offset and feature."""

    def __init__(self, path: str | Path, index: int, offset: int, reason: str, feature: str | None = None) -> None:
        self.path, self.index, self.offset, self.feature = str(path), index, offset, feature
        where = f"{path}: record {index} at byte offset {offset}"
        super().__init__(f"{where}, feature '{feature}': {reason}" if feature else f"{where}: {reason}")


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
    with record_writer(path, fmt) as write:
        for data in payloads:
            write(data)
    return write.count


class _Framer:
    """The `write` of `record_writer`: frames records for `fmt`, buffers a few MB, hashes what it writes."""

    def __init__(self, fh, fmt: str) -> None:
        self.fh, self.fmt, self.count = fh, fmt, 0
        self.digest = hashlib.sha256()  # of the bytes as written, so the file is not read back
        self.frames: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        if self.fmt == "ofrecord":
            self.frames += (struct.pack("<q", len(data)), data)
        else:
            length = struct.pack("<Q", len(data))
            self.frames += (
                length,
                struct.pack("<I", masked_crc32c(length)),
                data,
                struct.pack("<I", masked_crc32c(data)),
            )
        self.count += 1
        if len(self.frames) >= 4096:  # a few MB per write
            self.flush()

    def flush(self) -> None:
        chunk = b"".join(self.frames)
        self.fh.write(chunk)
        self.digest.update(chunk)
        self.frames.clear()


@contextlib.contextmanager
def record_writer(path: str | Path, fmt: str) -> Iterator[_Framer]:
    """Yield `write(payload)` appending one serialized record to a new `fmt` file at `path` (`write.count`:
    records so far); the file is atomic (runtime.atomic) and an OFRecord file gets its sidecar when complete.
    Several can be open at once (round-robin output files)."""
    path = Path(path)
    sidecar = checksum_path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        write = _Framer(fh, fmt)
        yield write
        write.flush()
        # An old sidecar goes before the new file takes the name: never a stale sum beside new data.
        sidecar.unlink(missing_ok=True)
    if fmt == "ofrecord":  # TFRecord has its own CRCs
        with atomic_output(sidecar) as tmp:
            tmp.write_text(f"{write.digest.hexdigest()}  {path.name}\n", encoding="utf-8")


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
