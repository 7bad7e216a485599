"""Where create-pretraining-data's chunks go: which process makes which chunk, and the `--output_dir` layout that
lets a killed run resume without redoing finished chunks.

Processes: `--shard_index/--num_shards` when given, else torchrun's `RANK/WORLD_SIZE`, else SLURM's
`SLURM_PROCID/SLURM_NTASKS`, else one process. Process r of n makes the chunks whose index is r mod n; no process
talks to another. Within a process, `--num_workers` processes take its chunks as they come.

`--output_dir DIR` holds, per chunk i, `part-<i>` (a TFRecord or OFRecord file, or a shard directory: what
`bertkit pretrain --data_dir DIR` reads) and the manifest of finished chunks, `DIR/manifest/`:
`settings.json` (what the records depend on: inputs, chunking, seed, flags, vocabulary) and `chunk-<i>.json`
(its counts), each written atomically (runtime/atomic.py) after `part-<i>` is complete. A chunk is finished when
its entry exists; a rerun with the same settings skips those, a rerun with other settings is refused.
When a process finds every chunk finished it writes `DIR/manifest.json` (chunk count and totals).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from bertkit.runtime.atomic import atomic_output, remove_stale

MANIFEST = "manifest"


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk `index`'s random.Random: Google's `--random_seed` for chunk 0 (so one chunk gives Google's
    records), a hash of (seed, index) for the others: independent of how many processes make them."""
    if index == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:8], "little")


def resolve_shard(shard_index: int, num_shards: int, environ=os.environ) -> tuple[int, int]:
    """(this process's index, processes): the flags, else RANK/WORLD_SIZE, else SLURM_PROCID/SLURM_NTASKS, else
    (0, 1). ValueError naming the flag or variables when the index is outside [0, processes)."""
    if num_shards > 0:
        where, index, n = "--shard_index/--num_shards", shard_index, num_shards
    elif "WORLD_SIZE" in environ:
        where, index, n = "RANK/WORLD_SIZE", int(environ.get("RANK", "0")), int(environ["WORLD_SIZE"])
    elif "SLURM_NTASKS" in environ:
        where, index, n = (
            "SLURM_PROCID/SLURM_NTASKS",
            int(environ.get("SLURM_PROCID", "0")),
            int(environ["SLURM_NTASKS"]),
        )
    else:
        return 0, 1
    if not (n >= 1 and 0 <= index < n):
        raise ValueError(f"{where}: index {index} is not in [0, {n})")
    return index, n


def input_identity(files: list[Path]) -> list[dict]:
    """What the chunks depend on in the inputs: each file's path, size and modification time."""
    out = []
    for f in files:
        st = f.stat()
        out.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _write_json(path: Path, value: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def open_output_dir(out: Path, settings: dict) -> None:
    """Make `out` ready for chunks: clear what killed writers left (this host's), then record `settings` or check
    them against the recorded ones. ValueError when `out` holds parts made otherwise or parts without a manifest."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    remove_stale(out / MANIFEST)
    recorded = out / MANIFEST / "settings.json"
    if recorded.is_file():
        old = json.loads(recorded.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise ValueError(
                f"--output_dir {out} holds chunks made with other settings ({', '.join(changed)} differ); "
                f"rerun with the same flags and inputs to resume, or choose another directory"
            )
        return
    if any(p.name.startswith("part-") for p in out.iterdir()):
        raise ValueError(f"--output_dir {out} already holds part-<i> files but no {MANIFEST}/; choose another")
    _write_json(recorded, settings)


def finished(out: Path, index: int) -> bool:
    """Whether chunk `index` is complete in `out` (its manifest entry is written only after its part)."""
    return (out / MANIFEST / f"chunk-{index}.json").is_file() and (out / f"part-{index}").exists()


def mark_finished(out: Path, index: int, stats: dict) -> None:
    _write_json(out / MANIFEST / f"chunk-{index}.json", {"chunk": index, **stats})


def finish(out: Path, num_chunks: int) -> dict | None:
    """When all `num_chunks` chunks are finished: write and return `out/manifest.json` (chunk count, totals)."""
    entries = []
    for i in range(num_chunks):
        entry = out / MANIFEST / f"chunk-{i}.json"
        if not entry.is_file():
            return None
        entries.append(json.loads(entry.read_text(encoding="utf-8")))
    totals = {k: sum(e[k] for e in entries) for k in entries[0] if k not in ("chunk", "seconds")} if entries else {}
    summary = {"num_chunks": num_chunks, "parts": [f"part-{i}" for i in range(num_chunks)], **totals}
    _write_json(out / "manifest.json", summary)
    return summary
