"""Pretraining data: from record files to training shards to batches.

References: the seed's OneFlow BERT reader (an OFRecord `--data_dir` of `--data_part_num` part files, shuffled, one
batch per iteration for `--iter_num` iterations) and torch's `DistributedSampler` (a permutation seeded by seed and
epoch, every rank taking its own stride of it).

Inputs (`data/shards.py` resolves them): directories of `part-<i>` files (OFRecord, or TFRecord: each file's format
is sniffed) or of `part-<i>` shard directories, TFRecord files or globs, or a shard directory: one `<feature>.npy`
(N, length) per feature plus `meta.json`, memory-mapped (`data/dataset.py` opens them), so that the training loop
never parses protobuf.

Memory per rank: record files parsed in each process cost every rank ~1.8 KB per sample (seq 128) of private
memory. `data/cache.py` instead converts them once into shards in a cache directory that every process
memory-maps: the pages are the kernel's page cache, shared by all processes of a machine, and a rank's private
memory no longer grows with the data set but for the epoch's sample order, 4 bytes per sample
(`benchmarks/bench_memory.py` measures it). Shards written by create-pretraining-data need no cache.

The loader: one global stream of samples, epoch e being a permutation of all N samples seeded by (seed, e), the
epochs laid end to end (so no sample is skipped at an epoch's end). The stream is cut into batches of
batch_size and the batches are dealt round-robin: rank r's k-th batch is global batch k * world_size + r.
So W processes at step k see exactly the samples that one process with W accumulation micro-steps sees
(micro-step m = global batch k * W + m): the multi-process run equals the accumulated one. The loader's whole
position is the number of batches a rank has taken; it is the same on every rank, so the state that rank 0
saves restores every rank, and a resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# What callers import from here, whose homes are the modules beside this one.
from bertkit.data.cache import CACHE_TIMEOUT_S, cache_key, cached_shards
from bertkit.data.dataset import ConvertDataConfig, convert_data, open_dataset, read_dataset, run_convert_data
from bertkit.data.records import pretraining_features
from bertkit.data.shards import (
    SHARDS_META,
    ShardSet,
    check_shards_output,
    load_shards,
    ofrecord_parts,
    resolve_inputs,
    shard_sources,
    shards_meta,
)

__all__ = [
    "CACHE_TIMEOUT_S", "SHARDS_META", "ArrayLoader", "ConvertDataConfig", "Prefetcher", "PretrainingLoader",
    "ShardSet", "cache_key", "cached_shards", "check_limits", "check_shards_output", "convert_data", "id_limits",
    "load_shards", "ofrecord_parts", "open_dataset", "prefetch", "read_dataset", "resolve_inputs",
    "run_convert_data", "shard_sources", "shards_meta",
]  # fmt: skip

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
            inputs,
            spec,
            input_format,
            data_part_num,
            progress,
            cache_dir,
            build_cache,
            cache_timeout_s,
            rank,
            world_size,
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
