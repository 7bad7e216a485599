"""Accuracy runs that outlive a session: a plain training loop's state saved every N steps and resumed exactly.

An accuracy run (GLUE, SQuAD) takes up to an hour of one core, and the end of a session kills it. Given a work
folder, the plain Hugging Face loop saves its state every `every` optimizer steps -- model and optimizer state,
torch's RNG state (the dropout masks to come), the step and the losses so far -- to `WORK/loop_state.pt` (written
under a temporary name, then renamed, so a kill leaves the previous state whole), and the same command run again
continues from it: same weights, same AdamW moments, same next batch, same masks, so the result is the one an
uninterrupted run gives. bertkit's side gets the same from its own snapshots: `bertkit_resume_flags`. The JSON
line of a resumed run says where it resumed (`resumed_at_step`); its seconds then count the last part only.
"""

from __future__ import annotations

import os
from pathlib import Path


class LoopState:
    """Save and restore a plain loop. `work` None: nothing is saved (one uninterrupted run). `key`: what makes the
    run this run (its arguments); a saved state of another key is refused, not continued."""

    def __init__(self, work: Path | None, every: int = 20, key: dict | None = None):
        self.path = Path(work) / "loop_state.pt" if work else None
        self.every, self.key = every, dict(key or {})
        self.resumed_at = 0

    def start(self, model, opt) -> tuple[int, list[float]]:
        """(first step to run, losses of the steps already run); restores model, optimizer and RNG when saved."""
        import torch

        if self.path is None or not self.path.exists():
            return 0, []
        state = torch.load(self.path, weights_only=True)
        if state.get("key") != self.key:
            raise SystemExit(f"{self.path} holds the state of another run ({state.get('key')}), not of {self.key}: "
                             "give this run its own --work_dir")  # fmt: skip
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        print(f"resuming the plain loop from {self.path} at step {state['step']}", flush=True)
        self.resumed_at = state["step"]
        return state["step"], list(state["losses"])

    def step_done(self, done: int, model, opt, losses: list[float]) -> None:
        """Call after `done` optimizer steps: saves every `every` steps."""
        import torch

        if self.path is None or done % self.every:
            return
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        state = {"step": done, "losses": list(losses), "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "rng": torch.get_rng_state(), "key": self.key}  # fmt: skip
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def skip_batches(it, n: int):
    """Advance a loader iterator past the n batches a resumed loop has already trained on (the order is seeded)."""
    for _ in range(n):
        next(it)
    return it


def run_key(args, *drop: str) -> dict:
    """A run's identity for LoopState: its arguments but those that do not change the result."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in {"threads", "work_dir", "save_every", *drop}}


def resumed_at(save_dir: Path) -> int:
    """The step bertkit's `--resume latest` continues from in save_dir (0: none yet)."""
    from bertkit.checkpoint.snapshot import SNAPSHOT_NAME, latest_snapshot

    try:
        return int(SNAPSHOT_NAME.match(latest_snapshot(save_dir).name).group(1))
    except ValueError:  # no complete snapshot yet
        return 0


def bertkit_resume_flags(work: Path | None, every: int = 20) -> list[str]:
    """bertkit's own exact resume for a run with a work folder: snapshots every `every` steps, `--resume latest`
    (which starts from the beginning when there is none yet)."""
    if work is None:
        return []
    return ["--model_save_every_n_iter", str(every), "--keep_last_n", "1", "--resume", "latest"]
