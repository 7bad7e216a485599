"""Training snapshots: written so that nothing is lost, checked so that nothing is silently wrong.

A snapshot is a bertkit model directory plus what a resumed run and a later `squad-predict` need:

    model.safetensors       the weights (bertkit's names)
    bert_config.json        the model's config (Google's keys)
    train_state.pt          step, optimizer, loss scale, RNG states, data position (torch.save, weights_only)
    vocab.txt               the WordPiece vocabulary it was trained with, when known
    tokenizer_config.json   {"do_lower_case": ...}, when known (Hugging Face's file and key)
    run_config.json         every flag of the run that wrote it, resolved
    labels.txt              a classifier's label names in output order, when it has them
    manifest.json           {"files": {name: {"bytes": n, "sha256": hex}}} of every file above

It is written through `atomic.atomic_output` (a hidden temporary sibling, fsynced, renamed; the free space is
checked first), so a crash, a kill -9 or a full disk leaves the previous snapshot whole and no partial one.
`load_snapshot` checks every file against the manifest before reading any (a flipped bit is refused), and turns a
damaged file into one line naming it. A snapshot without its manifest loads unchecked, with a warning that says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from bertkit.checkpoint.files import LABELS
from bertkit.data.vocab import checkpoint_vocab, recorded_casing
from bertkit.model.config import BertConfig
from bertkit.runtime import atomic
from bertkit.runtime.atomic import OutputError

SNAPSHOT_NAME = re.compile(r"^snapshot_(\d+)$")
WEIGHTS, CONFIG, STATE = "model.safetensors", "bert_config.json", "train_state.pt"
VOCAB, TOKENIZER, RUN_CONFIG, MANIFEST = "vocab.txt", "tokenizer_config.json", "run_config.json", "manifest.json"
FILES = (WEIGHTS, CONFIG, STATE)
__all__ = ["OutputError", "SnapshotError", "save_snapshot", "load_snapshot", "verify_snapshot", "compare_flags"]


class SnapshotError(ValueError):
    """A snapshot that cannot be used: the message names the file and what is wrong with it."""


# --- writing --------------------------------------------------------------------------------------------------


class _HashingWriter:
    """A write-only file that hashes what passes through it (torch.save streams into it)."""

    def __init__(self, path: Path):
        self.file, self.sha, self.bytes = atomic.open_for_write(path), hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            n = self.file.write(data)
        except OSError as e:
            self.error = e  # torch.save's zip writer hides it behind a RuntimeError of its own; _write re-raises it
            raise
        self.sha.update(memoryview(data)[:n] if n is not None else data)
        self.bytes += n if n is not None else len(data)
        return n

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _write(d: Path, name: str, fill, manifest: dict) -> None:
    w = _HashingWriter(d / name)
    try:
        fill(w)
    except Exception:
        if w.error is not None:
            raise w.error from None
        raise
    finally:
        w.close()
    manifest[name] = {"bytes": w.bytes, "sha256": w.sha.hexdigest()}


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor in a nested state (what torch.save will write, give or take its headers)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_snapshot(
    path: str | os.PathLike,
    model: nn.Module,
    cfg: BertConfig,
    train_state: dict,
    *,
    vocab_file: str | os.PathLike | bytes | None = None,
    do_lower_case: bool | None = None,
    run_config: Mapping | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
) -> None:
    """Write a snapshot at `path` (replacing one there only once the new one is whole).

    `vocab_file` (a path, or the file's bytes), `do_lower_case`, `run_config` (every flag, JSON-serialisable) and
    `labels` (a classifier's label names in output order: labels.txt) are stored when given, so that
    prediction tokenizes as training did and `--resume` can say which flags changed. Raises OutputError (a
    ValueError, one line; DiskFullError when space runs out, checked before writing) and leaves the previous
    snapshot untouched and no partial directory behind.
    """
    path = Path(path)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    need = _tensor_bytes(weights) + _tensor_bytes(train_state) + (1 << 20)
    vocab = Path(vocab_file).read_bytes() if isinstance(vocab_file, str | os.PathLike) else vocab_file
    if vocab is not None:
        need += len(vocab)
    manifest: dict[str, dict] = {}
    with atomic.atomic_output(path, need_bytes=need) as tmp:
        tmp.mkdir()
        # safetensors' bytes in memory (one copy of the weights, not of the optimizer) so that every byte of
        # the snapshot goes through one Python writer: hashed as written, and testable with injected faults.
        _write(tmp, WEIGHTS, lambda f: f.write(save(weights, metadata={"format": "pt"})), manifest)
        config = json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"  # as BertConfig.to_json_file
        _write(tmp, CONFIG, lambda f: f.write(config.encode()), manifest)
        _write(tmp, STATE, lambda f: torch.save(train_state, f), manifest)
        if vocab is not None:
            _write(tmp, VOCAB, lambda f: f.write(vocab), manifest)
        if do_lower_case is not None:
            text = json.dumps({"do_lower_case": bool(do_lower_case)}, indent=2) + "\n"
            _write(tmp, TOKENIZER, lambda f: f.write(text.encode()), manifest)
        if run_config is not None:
            text = json.dumps(dict(run_config), indent=2, sort_keys=True, default=str) + "\n"
            _write(tmp, RUN_CONFIG, lambda f: f.write(text.encode()), manifest)
        if labels:
            names = "".join(f"{label}\n" for label in labels)
            _write(tmp, LABELS, lambda f: f.write(names.encode()), manifest)
        text = json.dumps({"bertkit_snapshot": 1, "files": manifest}, indent=2, sort_keys=True) + "\n"
        with atomic.open_for_write(tmp / MANIFEST) as f:
            f.write(text.encode())


# --- finding and pruning ---------------------------------------------------------------------------------------


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


def existing_snapshots(model_save_dir: str | os.PathLike) -> list[Path]:
    """The snapshot_N and last_snapshot directories of an earlier run in model_save_dir (none if it is absent):
    what a fresh run must not silently train over."""
    d = Path(model_save_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if SNAPSHOT_NAME.match(p.name) or p.name == "last_snapshot")


def prune_snapshots(model_save_dir: str | os.PathLike, keep_last_n: int) -> None:
    """Remove all but the newest keep_last_n snapshot_N directories (0 keeps all); last_snapshot is never removed."""
    if keep_last_n <= 0:
        return
    d = Path(model_save_dir)
    found = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := SNAPSHOT_NAME.match(p.name)))
    for _, p in found[:-keep_last_n]:
        shutil.rmtree(p, ignore_errors=True)


def check_writable(directory: str) -> list[Path]:
    """Fail before training, not after an hour, when snapshots cannot be written; and clear what a killed save
    left there (atomic.remove_stale: this host's temporary directories whose process is gone). Returns those."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".bertkit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return atomic.remove_stale(d)
    except OSError as e:
        raise ValueError(f"--model_save_dir {directory} cannot be written: {e.strerror or e}") from None


# --- reading --------------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def verify_snapshot(path: str | os.PathLike) -> bool:
    """Check every file of the snapshot against its manifest: sizes first (a truncation), then sha256.

    Returns False for a directory without a manifest (nothing to check against; a snapshot, one with train_state.pt,
    warns that it loads unchecked), True when every file matches; raises SnapshotError naming the first file that
    does not.
    """
    d = Path(path)
    if not (d / MANIFEST).is_file():
        if is_snapshot(d):
            warnings.warn(f"{d} has no {MANIFEST}: its files are loaded unchecked (a damaged one may load; snapshots "
                          f"bertkit writes carry one)", stacklevel=2)  # fmt: skip
        return False
    try:
        files = json.loads((d / MANIFEST).read_text(encoding="utf-8"))["files"]
        entries = {str(name): (int(e["bytes"]), str(e["sha256"])) for name, e in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SnapshotError(f"{d / MANIFEST}: damaged ({_first_line(e)})") from None
    for name in FILES:
        if name not in entries:
            raise SnapshotError(f"{d / MANIFEST}: damaged (it does not list {name})")
    for name, (size, _) in entries.items():
        f = d / name
        if not f.is_file():
            raise SnapshotError(f"{f}: missing (the snapshot's manifest lists it)")
        have = f.stat().st_size
        if have != size:
            raise SnapshotError(f"{f}: {have:,} bytes, the manifest says {size:,}: the file is truncated or damaged")
    for name, (_, digest) in entries.items():
        sha = hashlib.sha256()
        with open(d / name, "rb") as fh:
            while chunk := fh.read(1 << 22):
                sha.update(chunk)
        if sha.hexdigest() != digest:
            raise SnapshotError(
                f"{d / name}: sha256 differs from {MANIFEST}: the file was damaged or changed after it was saved; "
                f"resume from an earlier snapshot"
            )
    return True


def load_snapshot(path: str | os.PathLike, *, verify: bool = True) -> tuple[dict[str, Tensor], BertConfig, dict]:
    """(weights, model config, train state) of a snapshot, each file checked against the manifest first.

    `verify=False` skips the hashing (other ranks, once rank 0 has verified). Every problem is a SnapshotError
    (a ValueError) of one line naming the file: missing, truncated, a flipped bit, an unreadable header.
    """
    d = Path(path)
    for name in FILES:
        if not (d / name).is_file():
            raise SnapshotError(f"--resume {d}: not a bertkit snapshot ({name} is missing)")
    if verify:
        verify_snapshot(d)
    cfg = BertConfig.from_json_file(d / CONFIG)
    try:
        weights = load_file(d / WEIGHTS)
    except Exception as e:  # safetensors raises its own SafetensorError (not a subclass of anything useful)
        raise SnapshotError(f"{d / WEIGHTS}: damaged safetensors file ({_first_line(e)})") from None
    try:
        state = torch.load(d / STATE, weights_only=True, map_location="cpu")
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise SnapshotError(f"{d / STATE}: damaged PyTorch file ({_first_line(e)})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise SnapshotError(f"{d / STATE}: not a bertkit train state (no step)")
    return weights, cfg, state


def snapshot_extras(path: str | os.PathLike) -> tuple[str | None, bool | None, dict | None]:
    """(vocab.txt path, do_lower_case, run_config) a snapshot (or any bertkit directory) carries; None for each
    it lacks."""
    d = Path(path)
    vocab, lower = checkpoint_vocab(d), recorded_casing(d)  # data/vocab.py: the one reader of both
    run = _read_json(d / RUN_CONFIG) if (d / RUN_CONFIG).is_file() else None
    return vocab, lower, run


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{path}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(value, dict):
        raise SnapshotError(f"{path}: expected a JSON object")
    return value


# --- resuming with other flags -----------------------------------------------------------------------------------

# What a resumed run may change is declared on each config field, `metadata={"resume": RULE}` (and "size": True for
# the model-size flags, compared only when neither run took its sizes from --bert_config_file):
#   "refused"   it cannot change: the model's shape and the data stream it was reading (sizes, lengths, batch, seed)
#   "warned"    the run goes on with the command line's value, with a warning (rates, steps, moved data paths; the
#               loader still refuses data of another size)
#   "snapshot"  the snapshot's bert_config.json decides, whatever the command line says (dropout)
RESUME_RULES = ("refused", "warned", "snapshot")


def resume_rules(cfg) -> dict[str, tuple[str, bool]]:
    """{flag: (rule, is a model-size flag)} declared on the fields of `cfg`'s sections (a composed config,
    runtime/config.py, or its class)."""
    rules: dict[str, tuple[str, bool]] = {}
    for f in cfg.flags():
        if "resume" in f.metadata:
            assert f.metadata["resume"] in RESUME_RULES, (f.name, f.metadata["resume"])
            rules[f.name] = (f.metadata["resume"], bool(f.metadata.get("size")))
    return rules


def compare_flags(saved: Mapping, now: Mapping, rules: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Compare the flags a snapshot was written with (its run_config.json) with this run's, for `--resume`.

    Raises ValueError listing every flag the run cannot change (the model's sizes, sequence lengths, batch size,
    seed, optimizer, casing, number of processes: resuming with them changed would not continue that run). Returns
    one warning line per other changed flag, saying which value wins: this command line's (learning rate, warmup,
    iter_num, data paths, ...) or the snapshot's (dropout, from its bert_config.json).
    `rules`: `resume_rules` of the run's config. The size flags are compared only when neither run took its sizes
    from --bert_config_file.
    """
    world = ("gpu_num_per_node", "node_num")
    sized = bool(saved.get("bert_config_file") or now.get("bert_config_file"))
    refused, warned, kept = [], [], []
    for name, (rule, size) in rules.items():
        if (size and sized) or name not in saved or name not in now or saved[name] == now[name]:
            continue
        if now[name] is None:  # not given: the run derives it as the snapshot's run did (--warmup_batches, ...)
            continue
        if _same_number(saved[name], now[name]):
            continue
        line = f"--{name} {now[name]} (the snapshot's run: {saved[name]})"
        {"refused": refused, "warned": warned, "snapshot": kept}[rule].append(line)
    if all(k in saved and k in now for k in world):
        was, is_ = saved[world[0]] * saved[world[1]], now[world[0]] * now[world[1]]
        if was != is_:
            refused.append(f"{is_} processes, --gpu_num_per_node x --node_num (the snapshot's run: {was})")
    if refused:
        raise ValueError(
            "--resume: this run differs from the snapshot's in what a resumed run cannot change: "
            + "; ".join(refused)
            + ". Give the snapshot's values, or start a new run (--model_load_dir takes the weights only)"
        )
    return [f"warning: --resume with {line}: this command line's value is used from here on" for line in warned] + [
        f"warning: --resume with {line}: the snapshot's value is used (its bert_config.json)" for line in kept
    ]


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False
