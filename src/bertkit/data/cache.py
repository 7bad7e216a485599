"""The shard cache: record files converted once per machine into shards that every process memory-maps.

`bertkit pretrain --data_dir` of record files (OFRecord, TFRecord) converts them under `--log_dir/data_cache`,
keyed by the files' paths, sizes and mtimes and the features wanted; one process per key builds while the others
wait on a file lock. The pages are the kernel's page cache, shared by all processes of a machine, so a rank's
private memory does not grow with the data set. Data written by `create-pretraining-data --output_format shards`
needs no cache at all (`data/shards.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bertkit.data.records import Spec
from bertkit.data.shards import SHARDS_META, _write_shards, resolve_inputs

try:
    import fcntl
except ImportError:  # not on Windows: the cache is then built without a lock (see cached_shards)
    fcntl = None

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
    progress: bool, wait: bool = True,
) -> Path | None:  # fmt: skip
    """See `cached_shards`; `wait=False`: None at once when another process holds the lock (building)."""
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
            if not wait:
                return None
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


def cached_parts(
    sources: list[tuple[Path, str]], spec: dict[str, Spec], cache_dir: Path, *, rank: int = 0, world_size: int = 1,
    build: bool = True, timeout_s: float = CACHE_TIMEOUT_S, progress: bool = False,
) -> list[Path]:  # fmt: skip
    """One cached shard directory per record file, the conversion shared by every process that calls this: process
    `rank` of `world_size` starts at file rank * F / world_size and converts each file no other process is
    converting (a non-blocking lock per file), then waits for the others' files. Every rank of every machine
    converts: with a shared file system each file once in all, without one each machine converts all its files
    with its own ranks. So the time before the first step is the data's size over the processes' conversion rate,
    not over one process's. Returns the directories in the order of `sources`."""
    start = rank * len(sources) // max(world_size, 1)
    mine = sources[start:] + sources[:start]
    if build:
        for src in tqdm(mine, desc="cache", unit="file", disable=not (progress and sys.stderr.isatty())):
            _cached_shards([src], spec, cache_dir, True, timeout_s, False, wait=False)
    return [_cached_shards([src], spec, cache_dir, build, timeout_s, False) for src in sources]
