"""Training shards: bertkit's memory-mapped format, and where a `--data_dir` names its samples.

A shard directory holds one `<feature>.npy` (N, length) per feature and `meta.json` (sample count, features,
sources). A data set is one shard directory, or a directory of `part-<i>` entries that are record files (OFRecord
as the seed writes them, or TFRecord) or shard directories (what `bertkit create-pretraining-data --output_dir
--output_format shards` writes, one per chunk): those are memory-mapped in place, side by side (`ShardSet`), so
training starts without a pass over the data, whatever its size.

References: the seed's OneFlow BERT reader (`--data_dir` of `--data_part_num` part files) and numpy's .npy format
(`numpy.lib.format`: magic, version, header length, a dict literal padded with spaces, then the C-order data).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from bertkit.data.records import Spec, count_records, read_arrays, sniff_format

SHARDS_META = "meta.json"
CREATED = "manifest.json"  # create-pretraining-data's summary of a finished --output_dir (tasks/pretrain/parts.py)

# --- inputs ---------------------------------------------------------------------------------------------------


def ofrecord_parts(data_dir: str | Path, data_part_num: int = 0) -> list[Path]:
    """`part-0 ... part-{data_part_num-1}` of an OFRecord directory (0: every part-<i> there).

    A directory create-pretraining-data wrote (`--output_dir`, with its `manifest.json`) is read whole, its
    `num_chunks` parts whatever `data_part_num` says (the seed's default, 32, is about the seed's own data); one
    without `manifest.json` yet but with `manifest/` is still being written: ValueError saying so."""
    d = Path(data_dir)
    if not d.is_dir():
        raise ValueError(f"--data_dir {d}: no such directory")
    if (d / CREATED).is_file():
        data_part_num = int(json.loads((d / CREATED).read_text(encoding="utf-8"))["num_chunks"])
    elif (d / "manifest").is_dir():
        raise ValueError(
            f"--data_dir {d}: create-pretraining-data has not finished writing it (no {CREATED}): run it again to "
            f"finish the missing chunks"
        )
    found = {p.name: p for p in d.iterdir() if p.name.startswith("part-") and p.name[5:].isdigit()}
    if not found:
        names = sorted(p.name for p in d.iterdir())
        raise ValueError(f"--data_dir {d} holds no OFRecord part-<i> files (found: {', '.join(names) or 'nothing'})")
    n = data_part_num or len(found)
    missing = [f"part-{i}" for i in range(n) if f"part-{i}" not in found]
    if missing:
        have = sorted(found, key=lambda name: int(name[5:]))
        raise ValueError(
            f"--data_part_num {n} needs part-0 ... part-{n - 1} in {d}, but {', '.join(missing[:5])}"
            f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''} "
            f"{'is' if len(missing) == 1 else 'are'} missing; found {len(have)}: {', '.join(have[:10])}"
            + (" ..." if len(have) > 10 else "")
        )
    return [found[f"part-{i}"] for i in range(n)]


def resolve_inputs(
    inputs: str | Path | Sequence[str | Path], input_format: str = "auto", data_part_num: int = 0, flag: str = "--input"
) -> list[tuple[Path, str]]:
    """(path, format) for each file or shard directory named by `inputs`.

    `inputs` is a comma-separated string or a list of: data directories (part-<i> files, OFRecord as the seed
    writes them or TFRecord), shard directories (holding meta.json), record files, or globs. `input_format` 'auto'
    tells the kinds apart by looking at each file, in a directory as well as named. Errors name `flag`, the
    user's flag for `inputs` (--data_dir for pretrain).
    """
    if input_format not in ("auto", "ofrecord", "tfrecord"):
        raise ValueError(f"--input_format must be auto, ofrecord or tfrecord, got {input_format!r}")
    items = str(inputs).split(",") if isinstance(inputs, str | Path) else [str(p) for p in inputs]
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise ValueError(f"{flag} is empty: name an OFRecord directory, TFRecord file(s) or a shard directory")
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            if (p / SHARDS_META).is_file():
                out.append((p, "shards"))
            else:
                parts = ofrecord_parts(p, data_part_num)
                out += [(f, _part_format(f, input_format)) for f in parts]
            continue
        files = sorted(Path(f) for f in glob.glob(item)) if glob.has_magic(item) else [p]
        if not files:
            raise ValueError(f"{flag} {item}: no file matches")
        for f in files:
            if not f.is_file():
                raise ValueError(f"{flag} {f}: no such file or directory")
            out.append((f, sniff_format(f) if input_format == "auto" else input_format))
    if any(fmt == "shards" for _, fmt in out) and any(fmt != "shards" for _, fmt in out):
        raise ValueError(f"{flag}: shard directories and record files cannot be mixed; convert the records first")
    return out


def _part_format(part: Path, input_format: str) -> str:
    """A part's format: 'shards' for a shard directory (one chunk of create-pretraining-data), else the record
    format, sniffed ('auto') or as given."""
    if part.is_dir():
        if not (part / SHARDS_META).is_file():
            raise ValueError(f"{part}: a directory without {SHARDS_META} (an unfinished chunk?); remove it or rerun")
        return "shards"
    return sniff_format(part) if input_format == "auto" else input_format


# --- shard directories --------------------------------------------------------------------------------------


def load_shards(shard_dir: str | Path, spec: dict[str, Spec] | None = None) -> dict[str, np.ndarray]:
    """The memory-mapped (N, length) arrays of a shard directory, checked against `spec` when given."""
    d = Path(shard_dir)
    try:
        meta = json.loads((d / SHARDS_META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{d}: not a bertkit shard directory ({SHARDS_META}: {e})") from None
    if meta.get("format") != "bertkit-shards":
        raise ValueError(f"{d}: {SHARDS_META} does not describe bertkit shards (format {meta.get('format')!r})")
    arrays = {}
    for name, info in meta["features"].items():
        try:
            arrays[name] = np.load(d / f"{name}.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"{d}: feature '{name}': {e}") from None
        if arrays[name].shape != (meta["num_samples"], info["length"]):
            raise ValueError(
                f"{d}: {name}.npy has shape {arrays[name].shape}, meta.json says "
                f"({meta['num_samples']}, {info['length']})"
            )
    for name, s in (spec or {}).items():
        if name not in arrays:
            raise ValueError(f"{d}: feature '{name}' missing (the shards have {', '.join(sorted(arrays))})")
        length = arrays[name].shape[1]
        if length != s.length:
            want = f"but {s.flag} is {s.length}" if s.flag else f"expected {s.length}"
            raise ValueError(f"{d}: feature '{name}' has {length} values per sample {want}")
    return {name: arrays[name] for name in spec} if spec else arrays


def shard_sources(shard_dir: str | Path) -> list[tuple[str, int]]:
    """(file, samples) in sample order for the record files a shard directory was made from; [(shard_dir, N)]
    when its meta.json does not count them (shards from text, or from an older bertkit)."""
    meta = json.loads((Path(shard_dir) / SHARDS_META).read_text())
    sources = meta.get("sources", [])
    if sources and all("num_samples" in src for src in sources):
        return [(src["path"], src["num_samples"]) for src in sources]
    return [(str(shard_dir), meta["num_samples"])]


def check_shards_output(out: Path, flag: str) -> None:
    """A shard directory is written whole or not at all: refuse one that already holds something."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{flag} {out} already exists and is not empty; remove it or choose another")


def shards_meta(
    num_samples: int,
    arrays: dict[str, np.ndarray],
    sources: Sequence[tuple[Path, str]],
    counts: Sequence[int] | None = None,
) -> dict:
    """The meta.json of a shard directory: sample count, each feature's (length, dtype), where it came from
    (with each record file's sample count when known, so errors can name the file and record)."""
    src = [{"path": str(p), "format": fmt} for p, fmt in sources]
    for entry, c in zip(src, counts or [], strict=False):
        entry["num_samples"] = int(c)
    return {
        "format": "bertkit-shards",
        "version": 1,
        "num_samples": num_samples,
        "features": {k: {"length": a.shape[1], "dtype": a.dtype.name} for k, a in arrays.items()},
        "sources": src,
    }


def _fill(
    sources: list[tuple[Path, str]],
    spec: dict[str, Spec],
    allocate: Callable[[int], dict[str, np.ndarray]],
    progress: bool,
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Parse every record of `sources` into arrays from allocate(N): one pass to count, one to fill.
    Returns the arrays and the sample count of each source."""
    counts = [count_records(path, fmt) for path, fmt in sources]
    n = sum(counts)
    if n == 0:
        raise ValueError(f"--input: no records in {', '.join(str(p) for p, _ in sources)}")
    arrays, i = allocate(n), 0
    with tqdm(total=n, desc="records", unit="rec", disable=not (progress and sys.stderr.isatty())) as bar:
        for path, fmt in sources:
            for chunk in read_arrays(path, spec, fmt):
                k = len(next(iter(chunk.values())))
                for name, values in chunk.items():
                    arrays[name][i : i + k] = values
                i += k
                bar.update(k)
    return arrays, counts


def _write_shards(
    sources: list[tuple[Path, str]], spec: dict[str, Spec], tmp: Path, progress: bool, extra: dict | None = None
) -> dict:
    """Parse `sources` into a new shard directory `tmp` (.npy files filled in place through memory maps) and
    write its meta.json last, flushed to disk; returns the meta."""
    tmp.mkdir()

    def allocate(n: int) -> dict[str, np.ndarray]:
        return {k: open_memmap(tmp / f"{k}.npy", "w+", s.dtype, (n, s.length)) for k, s in spec.items()}

    arrays, counts = _fill(sources, spec, allocate, progress)
    for a in arrays.values():
        a.flush()  # msync: the data is on disk before meta.json says the directory is complete
    meta = shards_meta(len(next(iter(arrays.values()))), arrays, sources, counts) | (extra or {})
    del arrays  # close the memory maps before the rename
    with open(tmp / SHARDS_META, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(meta, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return meta


# --- several shard directories as one data set ------------------------------------------------------------------


class ShardSet:
    """The (N, length) arrays of one feature over several shard directories, read as one: `len`, `shape`,
    `dtype`, and `a[idx]` for an int array of global sample indices (rows gathered from each part's memory map, in
    `idx`'s order). A part's .npy is memory-mapped when a batch first needs it and at most `max_open` stay open
    (each map holds a file descriptor: 3,000 parts x 7 features would pass a usual limit of open files)."""

    def __init__(self, dirs: list[Path], name: str, counts: list[int], length: int, dtype, max_open: int = 256):
        self.dirs, self.name, self.max_open = dirs, name, max_open
        self.ends = np.cumsum(counts)
        self.starts = self.ends - np.asarray(counts)
        self.dtype = np.dtype(dtype)
        self.shape = (int(self.ends[-1]), length)
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.shape[0]

    def part(self, k: int) -> np.ndarray:
        """Part k's memory map (opened, checked against its meta.json, kept among the `max_open` last used)."""
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        path = self.dirs[k] / f"{self.name}.npy"
        try:
            a = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.dirs[k]}: feature '{self.name}': {e}") from None
        want = (int(self.ends[k] - self.starts[k]), self.shape[1])
        if a.shape != want or a.dtype != self.dtype:
            raise ValueError(f"{path}: {a.shape} {a.dtype}, its {SHARDS_META} says {want} {self.dtype}")
        self._open[k] = a
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return a

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.ndim == 0 or idx.dtype.kind not in "iu":
            return np.asarray(self)[idx]  # slices, masks: whole-array semantics (tests, small sets)
        which = np.searchsorted(self.ends, idx, side="right")  # (B,): which part holds each sample
        out = np.empty((len(idx), self.shape[1]), self.dtype)
        for k in np.unique(which).tolist():
            rows = which == k
            out[rows] = self.part(k)[idx[rows] - self.starts[k]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate([self.part(k) for k in range(len(self.dirs))])
        return whole if dtype is None else whole.astype(dtype)


def _meta(d: Path) -> dict:
    try:
        meta = json.loads((d / SHARDS_META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{d}: not a bertkit shard directory ({SHARDS_META}: {e})") from None
    if meta.get("format") != "bertkit-shards":
        raise ValueError(f"{d}: {SHARDS_META} does not describe bertkit shards (format {meta.get('format')!r})")
    return meta


def load_shard_set(dirs: list[Path], spec: dict[str, Spec] | None = None) -> dict[str, np.ndarray | ShardSet]:
    """The arrays of several shard directories as one data set (one directory: its own memory maps). Only the
    meta.json files are read here; ValueError naming the directory whose features differ from the first's, or
    from `spec`."""
    if len(dirs) == 1:
        return load_shards(dirs[0], spec)
    metas = [_meta(d) for d in dirs]
    features = metas[0]["features"]
    for d, meta in zip(dirs[1:], metas[1:], strict=True):
        if meta["features"] != features:
            raise ValueError(f"{d}: features {meta['features']} differ from {dirs[0]}'s {features}")
    for name, s in (spec or {}).items():
        if name not in features:
            raise ValueError(f"{dirs[0]}: feature '{name}' missing (the shards have {', '.join(sorted(features))})")
        if features[name]["length"] != s.length:
            want = f"but {s.flag} is {s.length}" if s.flag else f"expected {s.length}"
            raise ValueError(f"{dirs[0]}: feature '{name}' has {features[name]['length']} values per sample {want}")
    counts = [int(m["num_samples"]) for m in metas]
    return {name: ShardSet(dirs, name, counts, info["length"], info["dtype"])
            for name, info in features.items() if not spec or name in spec}  # fmt: skip


def shard_set_sources(dirs: list[Path]) -> list[tuple[str, int]]:
    """(file, samples) in sample order over several shard directories (see `shard_sources`)."""
    return [src for d in dirs for src in shard_sources(d)]


# --- writing a shard directory row block by row block ------------------------------------------------------------


def narrow_pretraining(features: dict[str, np.ndarray], vocab_size: int) -> dict[str, np.ndarray]:
    """Google's pretraining features in the smallest dtypes that hold them, for shards on disk: token ids uint16
    (a vocabulary of at most 65,536; int32 above), positions uint16, masks, segments and labels uint8, weights
    float32: 673 bytes a record at seq 128 / 20 predictions instead of 1,780 in int32 (TFRecord: ~830). The
    loader widens every batch to int64 (float32 for the weights), so training sees the same values."""
    ids = np.uint16 if vocab_size <= 2**16 else np.int32
    dtypes = {"input_ids": ids, "masked_lm_ids": ids, "masked_lm_positions": np.uint16, "input_mask": np.uint8,
              "segment_ids": np.uint8, "next_sentence_labels": np.uint8, "masked_lm_weights": np.float32}  # fmt: skip
    return {name: a.astype(dtypes.get(name, a.dtype), copy=False) for name, a in features.items()}


# --- ------------------------------------------------------------

_HEADER_BYTES = 128  # a .npy header reserved up front, rewritten with the final row count (numpy pads to 64)


class ShardWriter:
    """Appends rows to the .npy files of a new shard directory `d` (created; write it inside `atomic_output`),
    so its size need not be known up front; `close` writes every header and meta.json and returns the meta."""

    def __init__(self, d: Path) -> None:
        d.mkdir()
        self.dir, self.files, self.rows, self.shapes = d, {}, 0, {}

    def append(self, features: dict[str, np.ndarray]) -> None:
        """Rows (K, length) of every feature, the same features and dtypes each call."""
        for name, a in features.items():
            if name not in self.files:
                self.files[name] = open(self.dir / f"{name}.npy", "wb")  # noqa: SIM115 - closed in close()
                self.files[name].write(b"\0" * _HEADER_BYTES)
                self.shapes[name] = (a.shape[1:], a.dtype)
            assert self.shapes[name] == (a.shape[1:], a.dtype), name
            self.files[name].write(np.ascontiguousarray(a).tobytes())
        self.rows += len(next(iter(features.values()))) if features else 0

    def close(self, sources: Sequence[tuple[Path, str]] = ()) -> dict:
        for name, fh in self.files.items():
            tail, dtype = self.shapes[name]
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": (self.rows, *tail)}  # fmt: skip
            text = repr(header).encode("latin1")
            pad = _HEADER_BYTES - 10 - len(text) - 1
            assert pad >= 0, header
            fh.seek(0)
            fh.write(b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little") + text + b" " * pad + b"\n")
            fh.close()
        arrays = {name: np.empty((0, *tail), dtype) for name, (tail, dtype) in self.shapes.items()}
        meta = shards_meta(self.rows, arrays, sources)
        (self.dir / SHARDS_META).write_text(json.dumps(meta, indent=2) + "\n")
        return meta
