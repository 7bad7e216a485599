"""GLUE evaluation: a model's logits over features (`predict.predict_logits`, the one prediction loop), the task's
metrics and loss, Google's eval_results.txt.

Reference: google-research/bert `run_classifier.py` @ eedf5716 (eval_results.txt: eval_accuracy, eval_loss,
global_step, loss; metric_fn's mean loss per example).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bertkit.model.config import BertConfig
from bertkit.runtime import dist
from bertkit.tasks.glue import data as glue
from bertkit.tasks.glue.predict import predict_logits
from bertkit.tasks.glue.results import glue_metrics


def check_ids(feats: glue.Features, bert_cfg: BertConfig, what: str) -> None:
    """Token ids within the model's vocabulary (a larger vocab.txt than the model's would index past it)."""
    top = int(feats.input_ids.max(initial=0))
    if top >= bert_cfg.vocab_size:
        raise ValueError(f"{what}: token id {top} is beyond the model's vocab_size {bert_cfg.vocab_size}: is "
                         "--vocab_file the model's vocabulary?")  # fmt: skip


def evaluate(model: nn.Module, task: glue.GlueTask, feats: glue.Features, batch_size: int, env: dist.DistEnv,
             precision: str = "fp32", progress: bool = False) -> tuple[dict[str, float], torch.Tensor]:  # fmt: skip
    """(the task's metrics on labelled features plus `loss`, the mean loss per example (Google's eval_loss); the loss
    of every example (N,) in file order). `batch_size` is per process."""
    logits = predict_logits(model, feats, batch_size, env, precision, progress)
    t = torch.from_numpy(logits)
    if task.is_regression:
        loss = F.mse_loss(t[:, 0], torch.from_numpy(feats.label_ids.astype(np.float32)), reduction="none")
    else:
        loss = F.cross_entropy(t, torch.from_numpy(feats.label_ids.astype(np.int64)), reduction="none")
    return {**glue_metrics(task, logits, feats.label_ids), "loss": float(loss.mean())}, loss


def mean_batch_loss(example_loss: torch.Tensor, batch_size: int) -> float:
    """The mean over batches of `batch_size` examples in file order (the last one short) of each batch's mean loss:
    the `loss` Google's Estimator writes beside eval_loss (equal to it when batch_size divides the examples)."""
    return float(torch.stack([b.mean() for b in example_loss.split(batch_size)]).mean())


def write_eval_results(path: Path, metrics: dict[str, float], step: int, batch_loss: float | None = None) -> list[str]:
    """Google's eval_results.txt: `key = value` lines, keys sorted (eval_accuracy, eval_loss, global_step, loss).
    Returns the lines (Google logs them too)."""
    result = {f"eval_{k}": v for k, v in metrics.items()} | {"global_step": step}
    if batch_loss is not None:
        result["loss"] = batch_loss
    lines = [f"{k} = {result[k]}" for k in sorted(result)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return lines
