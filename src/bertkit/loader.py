"""Pretraining data: from record files to training shards to batches.

References: the seed's OneFlow BERT reader (an OFRecord `--data_dir` of `--data_part_num` part files, shuffled, one
batch per iteration for `--iter_num` iterations) and torch's `DistributedSampler` (a permutation seeded by seed and
epoch, every rank taking its own stride of it).

Inputs are OFRecord directories, TFRecord files or globs (parsed by `records`), or a shard directory: one
`<feature>.npy` (N, length) per feature plus `meta.json`, memory-mapped, which `convert_data` / `bertkit
convert-data` writes so that the training loop never parses protobuf.

The loader: one global stream of samples, epoch e being a permutation of all N samples seeded by (seed, e), the
epochs laid end to end (so no sample is skipped at an epoch's end). The stream is cut into batches of
batch_size and the batches are dealt round-robin: rank r's k-th batch is global batch k * world_size + r.
So W processes at step k see exactly the samples that one process with W accumulation micro-steps sees
(micro-step m = global batch k * W + m): the multi-process run equals the accumulated one. The loader's whole
position is the number of batches a rank has taken; it is the same on every rank, so the state that rank 0
saves restores every rank, and a resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor
from tqdm import tqdm

from bertkit.records import Spec, atomic_output, count_records, pretraining_features, read_arrays, sniff_format

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
            f"--data_part_num {n} needs part-0 ... part-{n - 1} in {d}, but {', '.join(missing[:5])} "
            f"{'is' if len(missing) == 1 else 'are'} missing; found {len(have)}: {', '.join(have[:10])}"
            + (" ..." if len(have) > 10 else "")
        )
    return [found[f"part-{i}"] for i in range(n)]


def resolve_inputs(
    inputs: str | Path | Sequence[str | Path], input_format: str = "auto", data_part_num: int = 0
) -> list[tuple[Path, str]]:
    """(path, format) for each file or shard directory named by `inputs`.

    `inputs` is a comma-separated string or a list of: OFRecord directories (part-<i> files), shard directories
    (holding meta.json), record files, or globs. `input_format` 'auto' tells the kinds apart by looking.
    """
    if input_format not in ("auto", "ofrecord", "tfrecord"):
        raise ValueError(f"--input_format must be auto, ofrecord or tfrecord, got {input_format!r}")
    items = str(inputs).split(",") if isinstance(inputs, str | Path) else [str(p) for p in inputs]
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise ValueError("--input is empty: name an OFRecord directory, TFRecord file(s) or a shard directory")
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            if (p / SHARDS_META).is_file():
                out.append((p, "shards"))
            elif input_format == "tfrecord":
                raise ValueError(f"--input {p} is a directory; --input_format tfrecord wants files or a glob")
            else:
                out += [(f, "ofrecord") for f in ofrecord_parts(p, data_part_num)]
            continue
        files = sorted(Path(f) for f in glob.glob(item)) if glob.has_magic(item) else [p]
        if not files:
            raise ValueError(f"--input {item}: no file matches")
        for f in files:
            if not f.is_file():
                raise ValueError(f"--input {f}: no such file or directory")
            out.append((f, sniff_format(f) if input_format == "auto" else input_format))
    if any(fmt == "shards" for _, fmt in out) and len(out) > 1:
        raise ValueError(f"--input: a shard directory must be the only input, got {len(out)} inputs")
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


def _fill(
    sources: list[tuple[Path, str]],
    spec: dict[str, Spec],
    allocate: Callable[[int], dict[str, np.ndarray]],
    progress: bool,
) -> dict[str, np.ndarray]:
    """Parse every record of `sources` into arrays from allocate(N): one pass to count, one to fill."""
    n = sum(count_records(path, fmt) for path, fmt in sources)
    if n == 0:
        raise ValueError(f"--input: no records in {', '.join(str(p) for p, _ in sources)}")
    arrays, i = allocate(n), 0
    with tqdm(total=n, desc="records", unit="rec", disable=not progress) as bar:
        for path, fmt in sources:
            for chunk in read_arrays(path, spec, fmt):
                k = len(next(iter(chunk.values())))
                for name, values in chunk.items():
                    arrays[name][i : i + k] = values
                i += k
                bar.update(k)
    return arrays


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
    sources = resolve_inputs(inputs, input_format, data_part_num)
    if sources[0][1] == "shards":
        return load_shards(sources[0][0], spec)
    return _fill(sources, spec, lambda n: {k: np.empty((n, s.length), s.dtype) for k, s in spec.items()}, progress)


def check_shards_output(out: Path, flag: str) -> None:
    """A shard directory is written whole or not at all: refuse one that already holds something."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{flag} {out} already exists and is not empty; remove it or choose another")


def shards_meta(num_samples: int, arrays: dict[str, np.ndarray], sources: Sequence[tuple[Path, str]]) -> dict:
    """The meta.json of a shard directory: sample count, each feature's (length, dtype), where it came from."""
    return {
        "format": "bertkit-shards",
        "version": 1,
        "num_samples": num_samples,
        "features": {k: {"length": a.shape[1], "dtype": a.dtype.name} for k, a in arrays.items()},
        "sources": [{"path": str(p), "format": fmt} for p, fmt in sources],
    }


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
        tmp.mkdir()

        def allocate(n: int) -> dict[str, np.ndarray]:  # .npy files written in place through memory maps
            return {k: open_memmap(tmp / f"{k}.npy", "w+", s.dtype, (n, s.length)) for k, s in spec.items()}

        arrays = _fill(sources, spec, allocate, progress)
        for a in arrays.values():
            a.flush()
        meta = shards_meta(len(next(iter(arrays.values()))), arrays, sources)
        del arrays  # close the memory maps before the rename
        (tmp / SHARDS_META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


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


class ArrayLoader:
    """The sample stream over in-memory or memory-mapped arrays (N, ...): one global permutation per epoch,
    batches dealt round-robin to the ranks, a resumable position (see the module docstring). Subclasses say
    what a batch holds (`next_batch`)."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:  # fmt: skip
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
        self.batches = 0  # batches this rank has taken, over all epochs
        self._orders: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> int:
        return self.batches * self.world_size * self.batch_size // self.num_samples

    def order(self, epoch: int) -> np.ndarray:
        """The global sample order of `epoch`, (N,)."""
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}  # keep at most two
            n = self.num_samples
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._orders[epoch] = perm
        return self._orders[epoch]

    def next_indices(self) -> np.ndarray:
        """The sample indices of this rank's next batch, (B,); advances the position."""
        start = (self.batches * self.world_size + self.rank) * self.batch_size  # in the global stream
        self.batches += 1
        picks, need = [], self.batch_size
        while need:
            epoch, offset = divmod(start, self.num_samples)
            take = self.order(epoch)[offset : offset + need]
            picks.append(take)
            need -= len(take)
            start += len(take)
        return picks[0] if len(picks) == 1 else np.concatenate(picks)

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

    `inputs`: an OFRecord directory, TFRecord file(s) or glob, or a shard directory (see `resolve_inputs`).
    Shards are memory-mapped; record files are parsed into memory once, here (`progress` shows a bar meanwhile:
    pass rank == 0).
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
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        spec = pretraining_features(seq_length, max_predictions_per_seq)
        arrays = read_dataset(inputs, spec, input_format, data_part_num, progress)
        super().__init__(arrays, batch_size, rank=rank, world_size=world_size, seed=seed, shuffle=shuffle)

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
