"""Read a TensorFlow V2 checkpoint (a "tensor bundle") in pure Python: no TensorFlow needed.

References: tensorflow/core/util/tensor_bundle/tensor_bundle.{cc,proto} for the bundle, and the LevelDB table
format (leveldb doc/table_format.md; TensorFlow keeps a copy in tensorflow/core/lib/io/) for its index.

A checkpoint with prefix P is two kinds of file:

    P.index                    a LevelDB-style table. Key "" holds a BundleHeaderProto (shard count, endianness);
                               every other key is a variable name holding a BundleEntryProto
                               (dtype, shape, shard_id, offset, size, crc32c of the bytes).
    P.data-0000K-of-0000N      shard K: the variables' raw little-endian bytes, back to back.

The table is data blocks followed by an index block (one key and block handle per data block), a meta-index
block and a 48-byte footer: two block handles, zero padding, magic 0xdb4775248b80fb57. A block holds entries
whose keys share a prefix with the previous key (shared, unshared, value lengths as varints), then restart
offsets (uint32 each, then their count); every block is followed by a compression-type byte and a masked
crc32c of block + type byte.

Everything is checked: block and tensor CRCs, the magic, file lengths (a truncated .data file is named with the
first variable it cuts). `TFCheckpoint` is a lazy mapping: listing names reads only the index; each tensor is
read, and its CRC verified, when it is looked up.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import torch
from torch import Tensor

from bertkit.data import protobuf

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two BlockHandles (at most 2 x 2 x 10 varint bytes), zero padding to 40, 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked crc32c (4 bytes)

# TensorFlow DataType enum (tensorflow/core/framework/types.proto) -> (name, torch dtype).
DTYPES: dict[int, tuple[str, torch.dtype]] = {
    1: ("float32", torch.float32),
    3: ("int32", torch.int32),
    9: ("int64", torch.int64),
    14: ("bfloat16", torch.bfloat16),
    19: ("float16", torch.float16),
}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 9: "int64"}
DTYPE_NAMES.update({10: "bool", 14: "bfloat16", 19: "float16"})


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or in a form bertkit cannot read."""


# --- crc32c ---------------------------------------------------------------------------------------------

CRC_CHUNK = 1 << 22  # google_crc32c takes only immutable bytes; copying 4 MiB at a time bounds the extra memory


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of `data`, as LevelDB and TensorFlow compute it: crc32c(b"123456789") == 0xE3069283."""
    view = memoryview(data).cast("B")
    crc = 0
    for start in range(0, len(view), CRC_CHUNK):
        crc = google_crc32c.extend(crc, bytes(view[start : start + CRC_CHUNK]))
    return crc


def unmask_crc(masked: int) -> int:
    """LevelDB stores CRCs rotated and offset ("masked") so that a CRC of data holding CRCs stays strong."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --- protobuf wire format, just enough for the bundle's three messages -----------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A varint of the LevelDB table around the protobufs (block entries, handles), by the same decoder."""
    try:
        return protobuf.varint(buf, pos)
    except protobuf.ParseError as e:
        raise CheckpointError(str(e)) from None


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs: an int for varint and fixed-width fields, bytes for length-delimited; decoded by
    bertkit's one protobuf decoder (data/protobuf.py)."""
    try:
        for number, wire, a, b in protobuf.fields(buf):
            if wire == 0:
                yield number, protobuf.varint(buf, a, b)[0]
            elif wire in (1, 5):
                yield number, int.from_bytes(buf[a:b], "little")
            else:
                yield number, bytes(buf[a:b])
    except protobuf.ParseError as e:
        raise CheckpointError(f"malformed protobuf message: {e} (byte {e.pos})") from None


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v  # varints carry int64 in two's complement


@dataclass(frozen=True)
class TensorEntry:
    """One BundleEntryProto: where a variable's bytes are and what they hold."""

    name: str
    dtype_enum: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # unmasked
    num_slices: int

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype_enum, f"DataType {self.dtype_enum}")


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for number, value in _fields(buf):
        if number == 2:  # TensorShapeProto.dim
            size = next((_int64(v) for n, v in _fields(value) if n == 1), 0)
            dims.append(size)
        elif number == 3 and value:
            raise CheckpointError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    f = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0, "slices": 0}
    for number, value in _fields(buf):
        if number == 1:
            f["dtype"] = value
        elif number == 2:
            f["shape"] = _parse_shape(value)
        elif number in (3, 4, 5):
            f[("shard_id", "offset", "size")[number - 3]] = _int64(value)
        elif number == 6:
            f["crc32c"] = value  # a fixed32, masked like the table's block CRCs
        elif number == 7:
            f["slices"] += 1
    return TensorEntry(
        name, f["dtype"], f["shape"], f["shard_id"], f["offset"], f["size"], unmask_crc(f["crc32c"]), f["slices"]
    )


# --- the LevelDB-style table ------------------------------------------------------------------------------


def _block(data: bytes, offset: int, size: int, path: str) -> bytes:
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(data) - FOOTER_SIZE or offset < 0:
        raise CheckpointError(f"{path}: block at offset {offset} runs past the end of the file: the index is truncated")
    block, kind = data[offset : offset + size], data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if crc32c(data[offset : offset + size + 1]) != unmask_crc(stored):
        raise CheckpointError(f"{path}: block at offset {offset} fails its crc32c check: the index file is corrupt")
    if kind != 0:
        raise CheckpointError(f"{path}: block at offset {offset} is compressed (type {kind}); only type 0 is read")
    return block


def _block_entries(block: bytes, path: str) -> Iterator[tuple[bytes, bytes]]:
    """Walk a block's prefix-compressed entries in order (the restart array only serves binary search)."""
    if len(block) < 4:
        raise CheckpointError(f"{path}: block of {len(block)} bytes is too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise CheckpointError(f"{path}: block has a bad restart count {num_restarts}")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise CheckpointError(f"{path}: corrupt block entry at byte {pos}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def read_table(path: str | os.PathLike) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB-format table file, in key order."""
    path = str(path)
    data = Path(path).read_bytes()
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{path}: {len(data)} bytes is shorter than a table footer: the index is truncated")
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != TABLE_MAGIC:
        raise CheckpointError(f"{path}: bad magic number {magic:#x}: not a TensorFlow checkpoint index, or truncated")
    pos = len(data) - FOOTER_SIZE
    _meta_offset, pos = _varint(data, pos)
    _meta_size, pos = _varint(data, pos)
    index_offset, pos = _varint(data, pos)
    index_size, pos = _varint(data, pos)
    for _, handle in _block_entries(_block(data, index_offset, index_size, path), path):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        yield from _block_entries(_block(data, offset, size, path), path)


# --- the bundle -----------------------------------------------------------------------------------------


def resolve_prefix(path: str | os.PathLike) -> str:
    """A checkpoint prefix from a prefix, a `.index` path, or a directory (its `checkpoint` file or sole index)."""
    p = str(path)
    if p.endswith(".index") and os.path.isfile(p):
        return p[: -len(".index")]
    if os.path.isfile(p + ".index"):
        return p
    if os.path.isdir(p):
        state = os.path.join(p, "checkpoint")
        if os.path.isfile(state):
            m = re.search(r'^model_checkpoint_path:\s*"(.*)"', Path(state).read_text(), re.M)
            if m:
                # The path may be absolute on the machine that trained it; the file beside it is what we have.
                for cand in (os.path.join(p, m.group(1)), os.path.join(p, os.path.basename(m.group(1)))):
                    if os.path.isfile(cand + ".index"):
                        return cand
        indexes = sorted(f for f in os.listdir(p) if f.endswith(".index"))
        if len(indexes) == 1:
            return os.path.join(p, indexes[0][: -len(".index")])
        if indexes:
            raise CheckpointError(f"{p}: several checkpoints ({', '.join(indexes)}); give the prefix of one")
    raise CheckpointError(f"{p}: no TensorFlow checkpoint (expected PREFIX.index and PREFIX.data-00000-of-0000N)")


def is_tf_checkpoint(path: str | os.PathLike) -> bool:
    try:
        resolve_prefix(path)
    except (CheckpointError, OSError):
        return False
    return True


class TFCheckpoint(Mapping[str, Tensor]):
    """A TensorFlow V2 checkpoint as a lazy, read-only mapping: variable name -> CPU tensor.

    `entries` holds every variable's dtype, shape and location, read from the index alone; looking a name up
    reads that variable's bytes and verifies their CRC. Sliced (partitioned) variables are listed but
    refuse to load.
    """

    def __init__(self, path: str | os.PathLike):
        self.prefix = resolve_prefix(path)
        index = self.prefix + ".index"
        header, self.entries = None, {}
        for key, value in read_table(index):
            if key == b"":
                header = dict(_fields(value))
                continue
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                continue  # the data of one slice of a partitioned variable: keyed in binary, never looked up
            self.entries[name] = _parse_entry(name, value)
        if header is None:
            raise CheckpointError(f"{index}: no bundle header (empty key): not a V2 checkpoint index")
        if header.get(2, 0) != 0:
            raise CheckpointError(f"{index}: the checkpoint is big-endian; only little-endian bundles are read")
        self.num_shards = header.get(1, 1)
        self._check_shards()

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: e.shape for name, e in self.entries.items()}

    def data_path(self, shard_id: int) -> str:
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    def _check_shards(self) -> None:
        """Fail at open, not halfway through a conversion, if a shard is missing or too short."""
        for shard in range(self.num_shards):
            path = self.data_path(shard)
            held = [e for e in self.entries.values() if e.shard_id == shard and not e.num_slices]
            if not held:
                continue
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: data file missing (it holds {held[0].name} and {len(held) - 1} more)")
            have = os.path.getsize(path)
            for e in sorted(held, key=lambda e: e.offset):
                if e.offset + e.size > have:
                    raise CheckpointError(
                        f"{path} is truncated: it has {have} bytes, but variable {e.name} "
                        f"(shape {list(e.shape)}, {e.dtype_name}) needs bytes {e.offset}..{e.offset + e.size}"
                    )

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> Tensor:
        e = self.entries[name]
        if e.num_slices:
            raise CheckpointError(
                f"variable {name} is saved in {e.num_slices} slices (a partitioned variable); bertkit reads only "
                "whole variables: re-save the checkpoint without partitioning"
            )
        if e.dtype_enum not in DTYPES:
            raise CheckpointError(f"variable {name} has dtype {e.dtype_name}, which bertkit does not read")
        dtype = DTYPES[e.dtype_enum][1]
        numel = int(np.prod(e.shape, dtype=np.int64))
        if numel * dtype.itemsize != e.size:
            raise CheckpointError(
                f"variable {name}: shape {list(e.shape)} of {e.dtype_name} needs {numel * dtype.itemsize} bytes, "
                f"the index says {e.size}"
            )
        path = self.data_path(e.shard_id)
        buf = bytearray(e.size)
        with open(path, "rb") as f:
            f.seek(e.offset)
            got = f.readinto(buf)
        if got != e.size:
            raise CheckpointError(f"{path} is truncated: variable {name} needs {e.size} bytes, found {got}")
        actual = crc32c(buf)
        if actual != e.crc32c:
            raise CheckpointError(
                f"variable {name}: crc32c of its {e.size} bytes in {path} is {actual:#010x}, the index says "
                f"{e.crc32c:#010x}: the data file is corrupt"
            )
        if not numel:
            return torch.empty(e.shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(e.shape)
