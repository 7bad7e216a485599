"""`bertkit plot LOG_DIR`: loss and throughput curves from a run's metrics.jsonl, as one PNG.

matplotlib is a dependency of bertkit (the demo draws its curves with it); an install without it is told how to add it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PlotConfig:
    """Draw the loss curves, learning rate and throughput of a training run from LOG_DIR/metrics.jsonl."""

    log_dir: str = field(
        default="", metadata={"help": "a training run's --log_dir (holds metrics.jsonl)", "positional": True}
    )
    output: str | None = field(default=None, metadata={"help": "PNG to write (default: LOG_DIR/curves.png)"})

    def __post_init__(self) -> None:
        if not self.log_dir:
            raise ValueError("LOG_DIR is required")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{path.parent}: no metrics.jsonl here (is it a --log_dir of bertkit pretrain?)")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
    if not records:
        raise ValueError(f"{path}: empty, nothing to plot")
    return records


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if key in r and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def panel_keys(records: list[dict]) -> tuple[list[str], list[str]]:
    """The training-loss keys (`*_loss` of the training records, in their order) and the evaluation keys (`eval_*`,
    sorted) to draw. SQuAD v2.0's counts (`eval_total`, `eval_HasAns_total`) and thresholds (`eval_best_f1_thresh`)
    are left out: they are not scores and would flatten the panel."""
    train = [r for r in records if not any(k.startswith("eval_") for k in r)]
    loss_keys = list(dict.fromkeys(k for r in train for k in r if k.endswith("_loss")))
    eval_keys = sorted(
        {k for r in records for k in r if k.startswith("eval_") and not k.endswith(("_total", "_thresh"))}
    )
    return loss_keys, eval_keys


def run(cfg: PlotConfig) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "bertkit plot needs matplotlib, a dependency of bertkit that is missing here: pip install matplotlib"
        ) from None
    log_dir = Path(cfg.log_dir)
    records = read_metrics(log_dir / "metrics.jsonl")
    out = Path(cfg.output) if cfg.output else log_dir / "curves.png"
    loss_keys, eval_keys = panel_keys(records)
    panels = ["loss", "lr", "speed"] + (["eval"] if eval_keys else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    ax = dict(zip(panels, axes, strict=True))
    for k in loss_keys:
        ax["loss"].plot(*series(records, k), label=k)
    ax["loss"].set(title="training loss", xlabel="iteration", ylabel="loss")
    ax["loss"].legend()
    ax["lr"].plot(*series(records, "lr"))
    ax["lr"].set(title="learning rate", xlabel="iteration")
    ax["speed"].plot(*series(records, "sentences_per_sec"), marker=".")
    ax["speed"].set(title="throughput", xlabel="iteration", ylabel="sentences/sec")
    for k in eval_keys:
        ax["eval"].plot(*series(records, k), marker="o", label=k)
    if eval_keys:
        ax["eval"].set(title="evaluation", xlabel="iteration")
        ax["eval"].legend()
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")
    return out
