"""Weight files as lazy mappings, name -> tensor, read when looked up: safetensors files, pickled PyTorch state
dicts (unpickled with weights_only=True), and the shards of a sharded Hugging Face checkpoint behind its index; and
the few helpers every writer shares (the state to write, the vocabulary and label files beside it).

Reference: Hugging Face's file layouts (`model.safetensors`, `pytorch_model.bin`, and for a model saved in shards
`model.safetensors.index.json` / `pytorch_model.bin.index.json`, whose `weight_map` names each tensor's shard).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

VOCAB, LABELS = "vocab.txt", "labels.txt"


class SafetensorsFile(Mapping[str, Tensor]):
    """A .safetensors file, optionally renamed (saved key -> the name the table expects). `shapes` from the header."""

    def __init__(self, path: str | os.PathLike, rename: Callable[[str], str] = lambda k: k):
        self.path = str(path)
        try:
            with safe_open(self.path, framework="pt") as f:
                self._keys = {rename(k): k for k in f.keys()}
                self.shapes = {k: tuple(f.get_slice(saved).get_shape()) for k, saved in self._keys.items()}
        except Exception as e:  # safetensors' own SafetensorError: a truncated or damaged header
            if isinstance(e, OSError):
                raise
            raise ValueError(f"{self.path}: damaged safetensors file ({str(e).strip()[:200]})") from None

    def __getitem__(self, name: str) -> Tensor:
        # Opened per tensor: the file is memory-mapped, and the pages read would stay resident until it closes.
        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self._keys[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def load_torch_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A pickled state dict (pytorch_model.bin), memory-mapped where the format allows. Never unpickles arbitrary
    objects: weights_only admits tensors and plain containers only (ValueError otherwise)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the pre-1.6 non-zip format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused to unpickle it: it holds more than tensors ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


class Renamed(Mapping[str, Tensor]):
    """Another mapping seen under new names (`rename`: saved key -> name); `shapes` passed through when known."""

    def __init__(self, inner: Mapping[str, Tensor], rename: Callable[[str], str]):
        self.inner, self._keys = inner, {rename(k): k for k in inner}
        shapes = getattr(inner, "shapes", None)
        self.shapes = None if shapes is None else {k: shapes[saved] for k, saved in self._keys.items()}

    def __getitem__(self, name: str) -> Tensor:
        return self.inner[self._keys[name]]

    def saved(self, name: str) -> str:
        """The key `name` has in the file."""
        return self._keys.get(name, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Sharded(Mapping[str, Tensor]):
    """The shards an index json lists, as one mapping. Every tensor its `weight_map` names must be in the shard it
    names (ValueError naming the first that is not); a tensor in two shards is an error too."""

    def __init__(self, index: str | os.PathLike, open_shard: Callable[[Path], Mapping[str, Tensor]]):
        index = Path(index)
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"{index}: not a sharded checkpoint's index (a json object with weight_map): {e}"
            ) from None
        self.shards, self._where = {}, {}
        for name in sorted(set(weight_map.values())):
            if not (index.parent / name).is_file():
                raise ValueError(f"{index}: its shard {name} is not there")
            self.shards[name] = open_shard(index.parent / name)
            for key in self.shards[name]:
                if key in self._where:
                    raise ValueError(f"{index}: {key} is in both {self._where[key]} and {name}")
                self._where[key] = name
        for key, name in weight_map.items():
            if self._where.get(key) != name:
                raise ValueError(f"{index}: weight_map puts {key} in {name}, which does not hold it")
        shapes = [getattr(s, "shapes", None) for s in self.shards.values()]
        self.shapes = None if None in shapes else {k: v for s in shapes for k, v in s.items()}

    def __getitem__(self, name: str) -> Tensor:
        return self.shards[self._where[name]][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


# --- what every writer shares ---------------------------------------------------------------------------------


def state_of(model_or_state: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict to write, detached, on the CPU."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().cpu() for k, v in state.items()}


def copy_vocab(vocab_file: str | os.PathLike | None, out: Path) -> None:
    if vocab_file is not None:
        shutil.copyfile(vocab_file, out / VOCAB)


def write_labels(labels: list[str] | tuple[str, ...] | None, out: Path) -> None:
    """labels.txt: a classifier's label names, one per line in output order (bertkit's recorded label list)."""
    if labels:
        if any("\n" in label or not label for label in labels):
            raise ValueError(f"label names must be non-empty single lines, got {list(labels)}")
        (out / LABELS).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def read_labels(directory: Path) -> list[str] | None:
    """The labels.txt of a bertkit directory, or None when it has none."""
    path = directory / LABELS
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else None
