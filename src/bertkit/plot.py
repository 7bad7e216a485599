"""`bertkit plot LOG_DIR`: loss and throughput curves from a run's metrics.jsonl, as one PNG.

matplotlib is a dependency of bertkit (the demo draws its curves with it); an install without it is told how to add it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
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


def smooth(values: list[float], window: int) -> list[float]:
    """The running mean over the last `window` values (a noisy per-step loss made readable); same length."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def demo_figure(pretrain_log: Path, squad_log: Path, scores: dict[str, dict | None], vocab_size: int,
                frequency_loss: float, questions: int, out: Path) -> Path:  # fmt: skip
    """The demo's one figure, for a reader who has never trained a model: (1) pretraining's two losses against what
    guessing scores and to predicting hidden words by their frequency alone (`frequency_loss`), (2) SQuAD fine-tuning's loss, (3) the held-out questions' exact match and F1 of each model in
    `scores` ({label: {"exact_match", "f1"} or None}). Raises SystemExit without matplotlib (a base dependency)."""
    import math

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "the demo's figure needs matplotlib, a dependency of bertkit: pip install matplotlib"
        ) from None
    pre, squad = read_metrics(pretrain_log / "metrics.jsonl"), read_metrics(squad_log / "metrics.jsonl")
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.8))
    for key, label, guess, color in (
        ("mlm_loss", "masked words (MLM)", math.log(vocab_size), "tab:blue"),
        ("nsp_loss", "next sentence (NSP)", math.log(2), "tab:orange"),
    ):
        steps, values = series(pre, key)
        a.plot(steps, values, color=color, alpha=0.25)
        a.plot(steps, smooth(values, 10), color=color, label=f"{label}, mean of 10 steps")
        a.axhline(guess, color=color, ls=":", lw=1)
        a.annotate(f"guessing ({label.split(' (')[0]}): {guess:.2f}", (steps[-1], guess), ha="right", va="bottom",
                   fontsize=8, color=color)  # fmt: skip
    a.axhline(frequency_loss, color="tab:purple", ls="--", lw=1)
    a.annotate(f"predicting hidden words by frequency alone: {frequency_loss:.2f}", (steps[-1], frequency_loss),
               ha="right", va="top", fontsize=8, color="tab:purple")  # fmt: skip
    a.set(title="1. Pretraining: fill in hidden words, tell real next sentences",
          xlabel="training step", ylabel="loss (lower is better)")  # fmt: skip
    a.legend(fontsize=8, loc="center right")
    steps, values = series([r for r in squad if "total_loss" in r], "total_loss")
    b.plot(steps, values, color="tab:green", alpha=0.25)
    b.plot(steps, smooth(values, 10), color="tab:green", label="answer start/end loss, mean of 10 steps")
    b.set(title="2. SQuAD fine-tuning: point at the answer in the paragraph",
          xlabel="training step", ylabel="loss (lower is better)")  # fmt: skip
    b.legend(fontsize=8)
    labels = [k for k, v in scores.items() if v]
    for i, metric in enumerate(("exact_match", "f1")):
        xs = [j + (i - 0.5) * 0.38 for j in range(len(labels))]
        ys = [scores[k][metric] for k in labels]
        bars = c.bar(xs, ys, width=0.38, label="exact match" if metric == "exact_match" else "F1 (word overlap)")
        c.bar_label(bars, fmt="%.1f", fontsize=8)
    c.set_xticks(range(len(labels)), labels, fontsize=8)
    c.set(title=f"3. {questions} held-out questions it never trained on", ylabel="score, % (higher is better)")
    c.legend(fontsize=8)
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
