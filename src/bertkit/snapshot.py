"""Training snapshots: write them so a crash never damages the previous one, find them, prune them, load them.

A snapshot is a bertkit model directory (model.safetensors + bert_config.json) plus train_state.pt (step,
optimizer, loss scale, every rank's RNG state and data position). It is written under a temporary name
and renamed into place, so a crash during a save leaves the previous snapshot whole.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bertkit.config import BertConfig

SNAPSHOT_NAME = re.compile(r"^snapshot_(\d+)$")
FILES = ("model.safetensors", "bert_config.json", "train_state.pt")


def atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Write into final.tmp-PID, then swap it in; the old copy is removed only after the new one is whole."""
    final = Path(final)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def save_snapshot(path: Path, model: nn.Module, cfg: BertConfig, train_state: dict) -> None:
    def write(d: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors")
        cfg.to_json_file(d / "bert_config.json")
        torch.save(train_state, d / "train_state.pt")

    atomic_dir(path, write)


def is_snapshot(d: Path) -> bool:
    return all((d / name).is_file() for name in FILES)


def latest_snapshot(model_save_dir: str | os.PathLike) -> Path:
    """The complete snapshot_N in model_save_dir with the largest N (what `--resume latest` means).

    Raises ValueError when there is none (so a scheduler's first launch with `--resume latest` is told plainly).
    """
    d = Path(model_save_dir)
    found = sorted(
        (int(m.group(1)), p) for p in (d.iterdir() if d.is_dir() else []) if (m := SNAPSHOT_NAME.match(p.name))
    )
    complete = [p for _, p in found if is_snapshot(p)]
    if not complete:
        raise ValueError(f"--resume latest: no complete snapshot_N in --model_save_dir {d}")
    return complete[-1]


def prune_snapshots(model_save_dir: str | os.PathLike, keep_last_n: int) -> None:
    """Remove all but the newest keep_last_n snapshot_N directories (0 keeps all); last_snapshot is never removed."""
    if keep_last_n <= 0:
        return
    d = Path(model_save_dir)
    found = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := SNAPSHOT_NAME.match(p.name)))
    for _, p in found[:-keep_last_n]:
        shutil.rmtree(p, ignore_errors=True)


def load_snapshot(path: str | os.PathLike) -> tuple[dict[str, Tensor], BertConfig, dict]:
    d = Path(path)
    for name in FILES:
        if not (d / name).is_file():
            raise ValueError(f"--resume {d}: not a bertkit snapshot ({name} is missing)")
    cfg = BertConfig.from_json_file(d / "bert_config.json")
    return load_file(d / "model.safetensors"), cfg, torch.load(d / "train_state.pt", weights_only=True)


def check_writable(directory: str) -> None:
    """Fail before training, not after an hour, when snapshots cannot be written."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".bertkit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--model_save_dir {directory} cannot be written: {e.strerror or e}") from None
