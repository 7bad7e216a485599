"""Pretraining data: from record files to training shards to batches.

References: the seed's OneFlow BERT reader (an OFRecord `--data_dir` of `--data_part_num` part files, shuffled, one
batch per iteration for `--iter_num` iterations) and torch's `DistributedSampler` (a permutation seeded by seed and
epoch, every rank taking its own stride of it).

Inputs are directories of `part-<i>` files (OFRecord, or TFRecord: each file's format is sniffed), TFRecord files
or globs (parsed by `records`), or a shard directory: one `<feature>.npy` (N, length) per feature plus `meta.json`,
memory-mapped, which `convert_data` / `bertkit convert-data` writes so that the training loop never parses protobuf.

Memory per rank: record files parsed in each process cost every rank ~1.8 KB per sample (seq 128) of private
memory. `cached_shards` instead converts them once into shards in a cache directory (keyed by the files' paths,
sizes and mtimes and the features wanted; one process builds, the others wait) that every process memory-maps:
the pages are the kernel's page cache, shared by all processes of a machine, and a rank's private memory no longer
grows with the data set but for the epoch's sample order, 4 bytes per sample (`benchmarks/bench_memory.py`
measures it).

The loader: one global stream of samples, epoch e being a permutation of all N samples seeded by (seed, e), the
epochs laid end to end (so no sample is skipped at an epoch's end). The stream is cut into batches of
batch_size and the batches are dealt round-robin: rank r's k-th batch is global batch k * world_size + r.
So W processes at step k see exactly the samples that one process with W accumulation micro-steps sees
(micro-step m = global batch k * W + m): the multi-process run equals the accumulated one. The loader's whole
position is the number of batches a rank has taken; it is the same on every rank, so the state that rank 0
saves restores every rank, and a resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import queue
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor
from tqdm import tqdm

from bertkit.data.records import Spec, atomic_output, count_records, pretraining_features, read_arrays, sniff_format

try:
    import fcntl
except ImportError:  # not on Windows: the cache is then built without a lock (see cached_shards)
    fcntl = None

SHARDS_META = "meta.json"


# --- inputs ---------------------------------------------------------------------------------------------------


def ofrecord_parts(data_dir: str | Path, data_part_num: int = 0) -> list[Path]:
    """`part-0 ... part-{data_part_num-1}` of an OFRecord directory (0: every part-<i> there)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise ValueError(f"--data_dir {d}: no such directory")
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
                out += [(f, sniff_format(f) if input_format == "auto" else input_format) for f in parts]
            continue
        files = sorted(Path(f) for f in glob.glob(item)) if glob.has_magic(item) else [p]
        if not files:
            raise ValueError(f"{flag} {item}: no file matches")
        for f in files:
            if not f.is_file():
                raise ValueError(f"{flag} {f}: no such file or directory")
            out.append((f, sniff_format(f) if input_format == "auto" else input_format))
    if any(fmt == "shards" for _, fmt in out) and len(out) > 1:
        raise ValueError(f"{flag}: a shard directory must be the only input, got {len(out)} inputs")
    return out


# --- training shards and in-memory datasets ----------------------------------------------------------------


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


def open_dataset(
    inputs: str | Path | Sequence[str | Path],
    spec: dict[str, Spec],
    input_format: str = "auto",
    data_part_num: int = 0,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    build_cache: bool = True,
    cache_timeout_s: float | None = None,
) -> tuple[dict[str, np.ndarray], list[tuple[str, int]]]:
    """The arrays (N, length) per feature of `spec` and the (file, samples) they came from, in order.

    Shards are memory-mapped. Record files are converted once into cached shards under `cache_dir` and
    memory-mapped from there (see `cached_shards`) or, with no `cache_dir`, parsed into this process's memory.
    """
    sources = resolve_inputs(inputs, input_format, data_part_num)
    if sources[0][1] == "shards":
        return load_shards(sources[0][0], spec), shard_sources(sources[0][0])
    if cache_dir is not None:
        timeout = CACHE_TIMEOUT_S if cache_timeout_s is None else cache_timeout_s
        d = _cached_shards(sources, spec, Path(cache_dir), build_cache, timeout, progress)
        return load_shards(d, spec), shard_sources(d)
    arrays, counts = _fill(
        sources, spec, lambda n: {k: np.empty((n, s.length), s.dtype) for k, s in spec.items()}, progress
    )
    return arrays, [(str(p), c) for (p, _), c in zip(sources, counts, strict=True)]


def read_dataset(
    inputs: str | Path | Sequence[str | Path],
    spec: dict[str, Spec],
    input_format: str = "auto",
    data_part_num: int = 0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Every sample of `inputs` as arrays (N, length) per feature of `spec`.

    Shards are memory-mapped; OFRecord and TFRecord files are parsed once into memory.
    """
    return open_dataset(inputs, spec, input_format, data_part_num, progress)[0]


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


def convert_data(
    inputs: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    seq_length: int = 128,
    max_predictions_per_seq: int = 20,
    input_format: str = "auto",
    data_part_num: int = 0,
    spec: dict[str, Spec] | None = None,
    progress: bool = False,
) -> dict:
    """Convert OFRecord or TFRecord data into a shard directory; returns its meta.json as a dict.

    `spec` defaults to the pretraining features. The shards are written under a temporary name and renamed when
    complete, so a failure (a bad record, a full disk) leaves no half-written output.
    """
    spec = spec or pretraining_features(seq_length, max_predictions_per_seq)
    sources = resolve_inputs(inputs, input_format, data_part_num)
    if sources[0][1] == "shards":
        raise ValueError(f"--input {sources[0][0]} is already a shard directory")
    out = Path(output_dir)
    check_shards_output(out, "--output_dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        meta = _write_shards(sources, spec, tmp, progress)
    return meta


# --- the shard cache: record files converted once per machine, memory-mapped by every process ----------------

CACHE_TIMEOUT_S = 4 * 3600.0  # how long a process waits for another to build the cache (~250M records at 17k/s)
_POLL_S = 0.5


def cache_key(sources: Sequence[tuple[Path, str]], spec: dict[str, Spec]) -> tuple[str, dict]:
    """(directory name, what it hashes) of the cached shards of `sources` read as `spec`.

    The key covers each file's resolved path, format, size and mtime (a file rewritten gets a new cache) and the
    features read: names, lengths (--seq_length, --max_predictions_per_seq) and dtypes.
    """
    files = []
    for path, fmt in sources:
        st = Path(path).stat()
        files.append({"path": str(Path(path).resolve()), "format": fmt, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    features = {name: {"length": s.length, "dtype": np.dtype(s.dtype).str} for name, s in spec.items()}
    desc = {"version": 1, "files": files, "features": features}
    digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24]
    return f"shards-{digest}", desc


def cached_shards(
    inputs: str | Path | Sequence[str | Path],
    spec: dict[str, Spec],
    cache_dir: str | Path,
    *,
    input_format: str = "auto",
    data_part_num: int = 0,
    build: bool = True,
    timeout_s: float = CACHE_TIMEOUT_S,
    progress: bool = False,
) -> Path:
    """The shard directory holding `inputs` read as `spec`, converted once into `cache_dir/<key>/` and reused.

    `inputs` that already are a shard directory are returned as they are. Otherwise the key (`cache_key`) names
    the files' paths, sizes, mtimes and the features, so changed data or flags get a new directory; old ones are
    left for the user to delete. The directory is written under a temporary name and renamed when complete, so
    a complete-looking cache is complete. Nothing is ever written beside the data.

    Several processes (the ranks of a run, or runs sharing a cache) may call this at once:
    - `build=True`: the first to take the lock file `<key>.lock` (flock) builds; the others wait on the lock and
      then find the directory made. If the builder fails, the next one tries and fails the same way (a bad record
      is an error on every rank alike); if it dies, the lock is released and another builds. Call it so on every
      rank: one process per machine (per shared file system) converts.
    - `build=False`: only wait for the directory to appear (for processes that must not convert, e.g. ranks
      other than each machine's local rank 0); a failure of the builder is reported from `<key>.failed`.
    Either way, waiting longer than `timeout_s` is a ValueError naming the directory and the process building it.
    """
    sources = resolve_inputs(inputs, input_format, data_part_num)
    if sources[0][1] == "shards":
        return sources[0][0]
    return _cached_shards(sources, spec, Path(cache_dir), build, timeout_s, progress)


def _is_built(d: Path) -> bool:
    return (d / SHARDS_META).is_file()


def _cached_shards(
    sources: list[tuple[Path, str]], spec: dict[str, Spec], cache_dir: Path, build: bool, timeout_s: float,
    progress: bool,
) -> Path:  # fmt: skip
    key, desc = cache_key(sources, spec)
    final = cache_dir / key
    if _is_built(final):
        return final
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"data cache {cache_dir}: cannot create it ({e.strerror}); choose a writable directory"
        ) from None
    lock_path, failed = cache_dir / f"{key}.lock", cache_dir / f"{key}.failed"
    started, deadline = time.time(), time.monotonic() + timeout_s
    with open(lock_path, "a+") as lock:
        while True:
            if _is_built(final):
                return final
            locked = _try_lock(lock) if build else False
            if locked is not False:
                try:
                    if not _is_built(final):
                        _build_cache(sources, spec, final, desc, lock, failed, progress, exclusive=locked)
                    return final
                finally:
                    _unlock(lock)
            if not build and failed.is_file() and failed.stat().st_mtime >= started - 1:
                raise ValueError(failed.read_text(encoding="utf-8", errors="replace").strip())
            if time.monotonic() > deadline:
                holder = lock_path.read_text(encoding="utf-8", errors="replace").strip()
                state = (
                    f"{holder} is still converting: allow it longer" if holder
                    else "no process is building it (did the one meant to build it fail or not start?)"
                )  # fmt: skip
                raise ValueError(
                    f"data cache {final}: waited {timeout_s:.0f} s for another process to build it; {state}"
                )
            time.sleep(_POLL_S)


def _try_lock(lock) -> bool | None:
    """Take the exclusive lock without blocking: True if taken, False if another process holds it, None where
    flock is unsupported (some network file systems): then every builder proceeds and the atomic rename decides,
    correct, only wasteful."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def _unlock(lock) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _build_cache(
    sources: list[tuple[Path, str]], spec: dict[str, Spec], final: Path, desc: dict, lock, failed: Path,
    progress: bool, exclusive: bool | None,
) -> None:  # fmt: skip
    """Convert `sources` into `final`, the holder recorded in the lock file for waiters' messages. `exclusive`
    (the lock is held): no other builder of this key can be running, so leftovers of killed ones are removed."""
    failed.unlink(missing_ok=True)
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    for stale in final.parent.glob(f".{final.name}.tmp-*") if exclusive else ():
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        _write_shards(sources, spec, tmp, progress, {"cache_key": desc})
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_built(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another builder (without a working lock) finished first
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception):
            msg = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            with contextlib.suppress(OSError):
                failed.write_text(f"data cache {final} could not be built: {msg}\n", encoding="utf-8")
        raise
    finally:
        lock.seek(0)
        lock.truncate()
        lock.flush()


@dataclass
class ConvertDataConfig:
    """Convert OFRecord or TFRecord pretraining records into memory-mapped training shards (one .npy per feature)."""

    input: str = field(
        default="", metadata={"help": "OFRecord directory, TFRecord file(s) or glob; several comma-separated"}
    )
    input_format: str = field(
        default="auto",
        metadata={
            "help": "record format of --input; auto tells them apart",
            "choices": ["auto", "ofrecord", "tfrecord"],
        },
    )
    data_part_num: int = field(
        default=0, metadata={"help": "OFRecord directories: read part-0 ... part-{N-1} (0: every part file)"}
    )
    output_dir: str = field(default="", metadata={"help": "shard directory to create (must not exist or be empty)"})
    seq_length: int = field(default=128, metadata={"help": "tokens per record (input_ids length)"})
    max_predictions_per_seq: int = field(default=20, metadata={"help": "masked slots per record"})

    def __post_init__(self) -> None:
        for name in ("input", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        for name in ("seq_length", "max_predictions_per_seq"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.data_part_num < 0:
            raise ValueError(f"--data_part_num must be >= 0, got {self.data_part_num}")


def run_convert_data(cfg: ConvertDataConfig) -> dict:
    start = time.perf_counter()
    meta = convert_data(
        cfg.input,
        cfg.output_dir,
        cfg.seq_length,
        cfg.max_predictions_per_seq,
        cfg.input_format,
        cfg.data_part_num,
        progress=True,
    )
    seconds = time.perf_counter() - start
    n, files = meta["num_samples"], len(meta["sources"])
    size = sum(f.stat().st_size for f in Path(cfg.output_dir).iterdir())
    print(
        f"convert-data: {n} samples from {files} file(s) -> {cfg.output_dir} ({len(meta['features'])} features, "
        f"{size / 2**20:.1f} MiB) in {seconds:.1f} s ({n / seconds:.0f} samples/s)"
    )
    return meta


# --- the loader -----------------------------------------------------------------------------------------------


def id_limits(
    vocab_size: int | None, type_vocab_size: int | None = None, id_features: Sequence[str] = ("input_ids",)
) -> dict[str, tuple[int, str]]:
    """The `limits` that keep token ids below the model's `vocab_size` and segment ids below its
    `type_vocab_size` (either None: not checked): what the model's embeddings index with."""
    limits = {}
    if vocab_size is not None:
        why = f"--vocab_size {vocab_size}: pass the vocab_size of the vocabulary the data was made with"
        limits |= {name: (vocab_size, why) for name in id_features}
    if type_vocab_size is not None:
        limits["segment_ids"] = (type_vocab_size, f"--type_vocab_size {type_vocab_size}")
    return limits


def check_limits(
    rows: dict[str, np.ndarray],
    limits: dict[str, tuple[int, str]],
    where: Callable[[int], str] = lambda i: f"sample {i}",
) -> None:
    """Raise ValueError if a value of `rows[name]` (N, ...) lies outside [0, bound) for `limits[name] = (bound,
    why)`; the message names `where(i)` of the first offending row i, the feature, the value and `why`. Numpy on
    the host: a batch costs microseconds, and the model needs no host sync to check its inputs."""
    for name, (bound, why) in limits.items():
        r = rows[name].reshape(len(rows[name]), -1)  # (N, length)
        if r.size == 0 or (r.min() >= 0 and r.max() < bound):
            continue
        i, j = np.argwhere((r < 0) | (r >= bound))[0]
        raise ValueError(f"{where(int(i))}, feature '{name}': value {r[i, j]} is outside [0, {bound}) ({why})")


class ArrayLoader:
    """The sample stream over in-memory or memory-mapped arrays (N, ...): one global permutation per epoch,
    batches dealt round-robin to the ranks, a resumable position (see the module docstring). Subclasses say
    what a batch holds (`next_batch`).

    `limits`: feature -> (bound, why): every batch's values of that feature must lie in [0, bound), checked in
    numpy once per batch (so the model needs no host sync to check its inputs); `why` says what sets the bound,
    e.g. "--vocab_size 30522". A value outside is a ValueError naming the file, record, feature and value;
    `sources` ((file, samples) in sample order, as `open_dataset` returns them) lets it name the file.
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, limits: dict[str, tuple[int, str]] | None = None,
                 sources: Sequence[tuple[str, int]] | None = None) -> None:  # fmt: skip
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.arrays = arrays
        self.num_samples = len(next(iter(arrays.values())))
        if self.num_samples == 0:
            raise ValueError("no samples to train on")
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.limits = dict(limits or {})
        for name in self.limits:
            if name not in arrays:
                raise ValueError(f"limits name feature '{name}', which the data does not have")
        self.sources = list(sources or [])
        self.batches = 0  # batches this rank has taken, over all epochs
        self._orders: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> int:
        return self.batches * self.world_size * self.batch_size // self.num_samples

    def order(self, epoch: int) -> np.ndarray:
        """The global sample order of `epoch`, (N,): int32 where it fits (4 bytes per sample per rank)."""
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}  # keep at most two
            n = self.num_samples
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._orders[epoch] = perm.astype(np.int32) if n < 2**31 else perm
        return self._orders[epoch]

    def next_indices(self) -> np.ndarray:
        """The sample indices of this rank's next batch, (B,); advances the position. Checks the `limits`."""
        start = (self.batches * self.world_size + self.rank) * self.batch_size  # in the global stream
        self.batches += 1
        picks, need = [], self.batch_size
        while need:
            epoch, offset = divmod(start, self.num_samples)
            take = self.order(epoch)[offset : offset + need]
            picks.append(take)
            need -= len(take)
            start += len(take)
        idx = picks[0] if len(picks) == 1 else np.concatenate(picks)
        self.check_limits(idx)
        return idx

    def check_limits(self, idx: np.ndarray) -> None:
        """Raise ValueError if a value of a `limits` feature of samples `idx` lies outside [0, bound)."""
        check_limits(
            {name: self.arrays[name][idx] for name in self.limits}, self.limits, lambda i: self.where(int(idx[i]))
        )

    def where(self, sample: int) -> str:
        """'<file>: record k' for global sample index `sample`, from `sources` when known."""
        start = 0
        for path, count in self.sources:
            if sample < start + count:
                return f"{path}: record {sample - start}"
            start += count
        return f"sample {sample} of the data"

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while True:  # endless: the training loop counts iterations (--iter_num)
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "batches": self.batches,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "world_size": self.world_size,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state`'s position; the run must match in data, seed, shuffling and world size."""
        for key in ("num_samples", "seed", "shuffle", "world_size", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data position: the checkpoint has {key} {state[key]}, this run "
                    f"{getattr(self, key)}, so it would not see the samples the saved run would have seen"
                )
        self.batches = int(state["batches"])


class PretrainingLoader(ArrayLoader):
    """Endless batches {input_ids, input_mask, segment_ids (B, T); masked_lm_positions, masked_lm_ids,
    masked_lm_weights (B, P); next_sentence_labels (B,)}, int64 except the float32 weights (as `random_batch`).

    `inputs`: a data directory, TFRecord file(s) or glob, or a shard directory (see `resolve_inputs`). Shards are
    memory-mapped. Record files are, with `cache_dir`, converted once into shards there and memory-mapped by every
    process (see `cached_shards`: `build_cache`, `cache_timeout_s`); without it, parsed into this process's memory.
    `progress` shows a bar meanwhile: pass rank == 0.

    Every batch is checked in numpy (ValueError naming the file, record, feature and value): masked positions
    in [0, seq_length), next-sentence labels 0 or 1, and, when given, input and masked-LM ids in
    [0, vocab_size) and segment ids in [0, type_vocab_size). Pass the model's sizes: the model does not check.
    """

    def __init__(
        self,
        inputs: str | Path | Sequence[str | Path],
        batch_size: int,
        seq_length: int,
        max_predictions_per_seq: int,
        *,
        input_format: str = "auto",
        data_part_num: int = 0,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        progress: bool = False,
        vocab_size: int | None = None,
        type_vocab_size: int | None = None,
        cache_dir: str | Path | None = None,
        build_cache: bool = True,
        cache_timeout_s: float | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        spec = pretraining_features(seq_length, max_predictions_per_seq)
        arrays, sources = open_dataset(
            inputs, spec, input_format, data_part_num, progress, cache_dir, build_cache, cache_timeout_s
        )
        limits = {
            "masked_lm_positions": (seq_length, f"--seq_length {seq_length}: a masked position past the sequence"),
            "next_sentence_labels": (2, "next-sentence labels are 0 or 1"),
        } | id_limits(vocab_size, type_vocab_size, ("input_ids", "masked_lm_ids"))
        super().__init__(arrays, batch_size, rank=rank, world_size=world_size, seed=seed, shuffle=shuffle,
                         limits=limits, sources=sources)  # fmt: skip

    def next_batch(self) -> dict[str, Tensor]:
        """The next batch; shapes in the class docstring."""
        idx = self.next_indices()
        batch = {}
        for name, a in self.arrays.items():
            # Fancy indexing copies the rows out of the memory map; int64 is what embeddings and gather take.
            rows = a[idx].astype(np.float32 if a.dtype.kind == "f" else np.int64)
            batch[name] = torch.from_numpy(rows)
        batch["next_sentence_labels"] = batch["next_sentence_labels"][:, 0]  # (B, 1) -> (B,)
        return batch


# --- background preparation of the next batches (GPU input) -----------------------------------------------------


class Prefetcher:
    """`loader`'s batches, prepared `depth` ahead by a background thread and, with `pin`, in pinned (page-locked)
    host memory, so that the training loop's `.to(device, non_blocking=True)` is an asynchronous copy and the
    gather, cast and pinning of batch k+1 overlap the GPU's work on batch k. The same batches in the same order
    as `loader` itself (tested); use `prefetch(loader, device)`, which wraps only for CUDA.

    The position is the consumer's: `state_dict()` counts the batches handed out, not those prepared ahead, so a
    snapshot resumes at the next unseen batch. `load_state_dict` only before iterating. An error in preparing a
    batch (a value outside its limits) is raised where that batch would have been returned. The thread is a
    daemon and stops at `close()`.
    """

    def __init__(self, loader: ArrayLoader, depth: int = 2, pin: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.loader, self.depth, self.pin = loader, depth, pin
        self.handed_out = 0  # batches returned to the caller since the (re)start position
        self._start = loader.batches
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.loader.next_batch()
                if self.pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                item = (batch, None)
            except Exception as e:  # handed to the consumer, raised in its thread
                item = (None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[1] is not None:
                return

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self._thread is None:
            self._queue = queue.Queue(self.depth)
            self._thread = threading.Thread(target=self._work, name="bertkit-prefetch", daemon=True)
            self._thread.start()
        while True:
            batch, error = self._queue.get()
            if error is not None:
                raise error
            self.handed_out += 1
            yield batch

    def next_batch(self) -> dict[str, Tensor]:
        return next(iter(self))

    def close(self) -> None:
        """Stop the thread (the batches it prepared ahead are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def state_dict(self) -> dict:
        return self.loader.state_dict() | {"batches": self._start + self.handed_out}

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("Prefetcher.load_state_dict after iteration started")
        self.loader.load_state_dict(state)
        self._start, self.handed_out = self.loader.batches, 0

    @property
    def num_samples(self) -> int:
        return self.loader.num_samples


def prefetch(loader: ArrayLoader, device: torch.device | str, depth: int = 2) -> ArrayLoader | Prefetcher:
    """`loader` wrapped in a pinned-memory `Prefetcher` when `device` is CUDA; on the CPU `loader` itself (a
    thread would only compete with the step for the same cores)."""
    if torch.device(device).type != "cuda":
        return loader
    return Prefetcher(loader, depth, pin=True)
