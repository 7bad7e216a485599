"""Training metrics: metrics.jsonl (one JSON record per line, each step once) and TensorBoard events when installed.

Written by rank 0 of the training loop (loop.py); `log_final_eval` appends a command's closing evaluation.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from bertkit.runtime.atomic import atomic_output


class MetricsLog:
    """metrics.jsonl in log_dir, plus TensorBoard events when tensorboard is installed. Rank 0 only.

    On resume from step S the records after S (written by the interrupted run, and about to be written again) are
    dropped first, so that the file holds each step once; a fresh run (S = 0) starts the file anew.
    """

    def __init__(self, log_dir: str, enabled: bool, resume_step: int = 0):
        self.file = self.tb = None
        if not enabled:
            return
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        path = Path(log_dir) / "metrics.jsonl"
        if path.is_file():
            _rewrite(path, lambda line: _step_of(line) <= resume_step)
        self.file = open(path, "a", encoding="utf-8")
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir)

    def write(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def log_final_eval(log_dir: str, step: int, metrics: dict[str, float]) -> None:
    """End log_dir/metrics.jsonl with a run's closing evaluation, {"step": step, "eval_<key>": value, ...}, so that
    the file (and `bertkit plot`) holds the numbers of eval_results.txt / the printed metrics. An evaluation record
    already at `step` (--eval_every_n_iter dividing iter_num, or a run resumed from its last snapshot against other
    dev data) is replaced, so the step holds one evaluation. Rank 0 calls it, after `fit`; metrics.jsonl only (the
    TensorBoard events hold the loop's evaluations)."""

    def other(line: str) -> bool:  # not an evaluation record at `step`
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            record = json.loads(line)
            return not (record.get("step") == step and any(k.startswith("eval_") for k in record))
        return True

    record = {"step": step, **{f"eval_{k}": v for k, v in metrics.items()}}
    _rewrite(Path(log_dir) / "metrics.jsonl", other, json.dumps(record))


def _rewrite(path: Path, keep: Callable[[str], bool], last: str | None = None) -> None:
    """Rewrite a JSON-lines file atomically with the lines `keep` accepts (none if it is absent), then `last`."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    kept = [line for line in lines if keep(line)] + ([last] if last is not None else [])
    with atomic_output(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return float("inf")  # a torn last line of a killed run: dropped
