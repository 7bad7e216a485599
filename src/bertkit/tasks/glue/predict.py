"""Classifier prediction: the logits of every example, longest first, each batch cut to its longest example.

The one home of this loop: `bertkit classify` (evaluation and --do_predict) and the classifier that `bertkit serve`
and `serve.classify.TextClassifier` run both call `predict_logits`, so the server's numbers are the command's.
Reference: google-research/bert `run_classifier.py` @ eedf5716 (the logits of the pooled [CLS] output, whose
softmax is test_results.tsv).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bertkit.runtime import dist
from bertkit.runtime.precision import autocast, quantize
from bertkit.tasks.glue.data import Features
from bertkit.tasks.glue.results import softmax


@torch.no_grad()
def predict_logits(model: nn.Module, feats: Features, batch_size: int, env: dist.DistEnv,
                   precision: str = "fp32", progress: bool = False) -> np.ndarray:  # fmt: skip
    """Logits (N, num_labels) float32 of every example, on every rank.

    Examples are sorted by length, longest first, and each batch runs cut to its longest example (the logits do
    not depend on padding columns: tested against the padded run). Rank r runs batches r, r + W, ...; the rows
    are gathered by a sum over ranks of zero-initialised arrays. A SIGTERM/SIGINT stops every rank at the next
    batch (`dist.SharedBatches`; an evaluation inside training passes an env without the stop request).
    """
    n = len(feats)
    lengths = feats.input_mask.astype(bool).sum(1)
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros((n, model.classifier.out_features), np.float32)  # (N, C); zeros: a sum over ranks gathers rows
    model.eval()
    turns = dist.SharedBatches(n, batch_size, env, "predicting")  # the same count on every rank; a stop meets all
    with autocast(precision, env.device):  # one context: the weights cast once for all batches (same values)
        for i in tqdm(turns, desc="eval", unit="batch", disable=not (progress and sys.stderr.isatty()), leave=False):
            if i is None:  # this rank's share ended a turn early
                continue
            idx = order[i : i + batch_size]
            L = int(lengths[idx].max())
            ids, types, mask = (torch.from_numpy(a[idx, :L].astype(np.int64)).to(env.device)
                                for a in (feats.input_ids, feats.segment_ids, feats.input_mask))  # fmt: skip
            out[idx] = model(ids, types, mask).float().cpu().numpy()  # (B, C)
    if env.world_size > 1:
        out = dist.all_reduce_sum(torch.from_numpy(out).to(env.device), env).cpu().numpy()
    return out


def quantize_classifier(model: nn.Module, mode: str) -> nn.Module:
    """`runtime.precision.quantize` for a BertForSequenceClassification: on the fast path its last layer computes
    [CLS] alone by slicing its qkv weight, which a quantized layer does not have, so that one layer stays fp32."""
    last_qkv = f"bert.layers.{model.bert.cfg.num_hidden_layers - 1}.attn.qkv"
    return quantize(model, mode, keep=frozenset({last_qkv}))


def probabilities(logits: np.ndarray) -> np.ndarray:
    """(N, C) class probabilities of logits (N, C): test_results.tsv's float32 softmax."""
    return softmax(logits.astype(np.float32))
