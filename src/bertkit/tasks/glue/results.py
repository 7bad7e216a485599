"""What a GLUE run reports: each task's metrics (accuracy, F1, Matthews correlation, Pearson and Spearman
correlations), Google's test_results.tsv and GLUE's submission file.

References: Hugging Face transformers' `data/metrics` (which metric each task reports; scikit-learn's and scipy's
definitions, restated here in numpy) and google-research/bert `run_classifier.py` @ eedf5716 (test_results.tsv).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bertkit.tasks.glue.data import GlueTask

# --- metrics ---------------------------------------------------------------------------------------------------


def accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    return float((pred == label).mean())


def f1(pred: np.ndarray, label: np.ndarray) -> float:
    """F1 of class 1 (MRPC's paraphrase, QQP's duplicate): 2 TP / (2 TP + FP + FN); 0 when there is no positive."""
    tp = int(((pred == 1) & (label == 1)).sum())
    wrong = int((pred != label).sum())
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def matthews_corrcoef(pred: np.ndarray, label: np.ndarray) -> float:
    """Matthews correlation (CoLA's metric), scikit-learn's multiclass form; 0 when either side is constant."""
    k = int(max(pred.max(), label.max())) + 1
    c = np.bincount(label.astype(np.int64) * k + pred.astype(np.int64), minlength=k * k).reshape(k, k).astype(float)
    t, p, n = c.sum(1), c.sum(0), c.sum()
    cov_tp, cov_pp, cov_tt = np.trace(c) * n - t @ p, n * n - p @ p, n * n - t @ t
    return float(cov_tp / np.sqrt(cov_tt * cov_pp)) if cov_tt * cov_pp else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64) - x.mean(), y.astype(np.float64) - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom else float("nan")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy.stats.rankdata's 'average')."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def glue_metrics(task: GlueTask, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics from logits (N, num_labels) and labels (N,): argmax for classes, the score itself for
    regression. Metric names: accuracy, f1, matthews_corrcoef, pearson, spearman."""
    if task.is_regression:
        return {m: {"pearson": pearson, "spearman": spearman}[m](logits[:, 0], labels) for m in task.metrics}
    pred = logits.argmax(-1)
    funcs = {"accuracy": accuracy, "f1": f1, "matthews_corrcoef": matthews_corrcoef}
    return {m: funcs[m](pred, labels) for m in task.metrics}


# --- predictions: Google's test_results.tsv and GLUE's submission file ------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def write_predictions(task: GlueTask, guids: list[str], logits: np.ndarray, out_dir: str | Path) -> list[Path]:
    """OUT/test_results.tsv (Google's: each example's class probabilities as float32, tab-separated; the score for
        regression) and OUT/<TASK>.tsv, GLUE's submission file (`index<TAB>prediction`, GLUE's label strings, a score
        with 3 decimals for STS-B), one row per guid (the examples' GLUE indices) and logits row (N, num_labels) in
    the task's label order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if task.is_regression:
        rows, preds = [f"{s}" for s in logits[:, 0]], [f"{s:.3f}" for s in logits[:, 0]]
    else:
        # float32 probabilities printed by str(), as Google's (its softmax runs in float32): '0.98201376'
        rows = ["\t".join(str(p) for p in probs) for probs in softmax(logits.astype(np.float32))]
        preds = [task.labels[i] for i in logits.argmax(-1)]
    google, glue = out / "test_results.tsv", out / f"{task.name}.tsv"
    google.write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
    lines = ["index\tprediction"] + [f"{g}\t{p}" for g, p in zip(guids, preds, strict=True)]
    glue.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [google, glue]
