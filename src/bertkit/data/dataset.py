"""Data sets as arrays: open what a `--data_dir` names (shards memory-mapped, record files through the cache or
parsed into memory), and `bertkit convert-data`, which turns record files into a shard directory once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertkit.data.cache import CACHE_TIMEOUT_S, _cached_shards, cached_parts
from bertkit.data.records import Spec, atomic_output, pretraining_features
from bertkit.data.shards import (
    _fill,
    _write_shards,
    check_shards_output,
    load_shard_set,
    load_shards,
    resolve_inputs,
    shard_set_sources,
    shard_sources,
)


def open_dataset(
    inputs: str | Path | Sequence[str | Path],
    spec: dict[str, Spec],
    input_format: str = "auto",
    data_part_num: int = 0,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    build_cache: bool = True,
    cache_timeout_s: float | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[dict[str, np.ndarray], list[tuple[str, int]]]:
    """The arrays (N, length) per feature of `spec` and the (file, samples) they came from, in order.

    Shards (one directory, or `part-<i>` directories) are memory-mapped where they are. Record files are converted
    once into cached shards under `cache_dir`, one per file, every process `rank` of `world_size` converting its
    share (`cache.cached_parts`), and memory-mapped from there; with no `cache_dir`, parsed into this process's
    memory.
    """
    sources = resolve_inputs(inputs, input_format, data_part_num)
    if sources[0][1] == "shards":
        dirs = [p for p, _ in sources]
        return load_shard_set(dirs, spec), shard_set_sources(dirs)
    if cache_dir is not None:
        timeout = CACHE_TIMEOUT_S if cache_timeout_s is None else cache_timeout_s
        if len(sources) == 1:
            d = _cached_shards(sources, spec, Path(cache_dir), build_cache, timeout, progress)
            return load_shards(d, spec), shard_sources(d)
        dirs = cached_parts(sources, spec, Path(cache_dir), rank=rank, world_size=world_size, build=build_cache,
                            timeout_s=timeout, progress=progress)  # fmt: skip
        return load_shard_set(dirs, spec), shard_set_sources(dirs)
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
        raise ValueError(f"--input {sources[0][0]} is already a shard directory (or several)")
    out = Path(output_dir)
    check_shards_output(out, "--output_dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        meta = _write_shards(sources, spec, tmp, progress)
    return meta


@dataclass(frozen=True)
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
