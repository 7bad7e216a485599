"""The pretraining task: masked-LM + next-sentence-prediction losses.

Reference: google-research/bert `run_pretraining.py` (get_masked_lm_output, get_next_sentence_output) and
OneFlow-Benchmark's BERT `pretrain.py`, which compute the same quantities:
    MLM = sum(weight * cross_entropy) / (sum(weight) + 1e-5) over the P masked slots (pad slots weigh 0),
    NSP = mean cross-entropy over the batch, total = MLM + NSP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pretraining_loss(
    mlm_logits: Tensor,
    nsp_logits: Tensor,
    masked_lm_ids: Tensor,
    masked_lm_weights: Tensor,
    next_sentence_labels: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """mlm_logits (B, P, V), nsp_logits (B, 2), ids/weights (B, P), labels (B,) -> (total, mlm, nsp)."""
    # Cross-entropy in fp32 whatever the autocast dtype: log-softmax over 30k logits loses digits in bf16.
    ce = F.cross_entropy(mlm_logits.float().flatten(0, 1), masked_lm_ids.long().flatten(), reduction="none")  # (B*P,)
    w = masked_lm_weights.float().flatten()
    mlm = (ce * w).sum() / (w.sum() + 1e-5)
    nsp = F.cross_entropy(nsp_logits.float(), next_sentence_labels.long().flatten())
    return mlm + nsp, mlm, nsp


def random_batch(
    batch_size: int,
    seq_length: int,
    max_predictions_per_seq: int,
    vocab_size: int,
    masked_lm_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """A synthetic pretraining batch shaped like the seed's records (for smoke runs and benchmarks).

    Every sequence is full length; round(masked_lm_prob * seq_length), at most max_predictions_per_seq,
    distinct positions (never position 0, the [CLS] slot) are masked; unused slots have weight 0.
    """
    g = generator
    B, T, P = batch_size, seq_length, max_predictions_per_seq
    n_mask = max(1, min(P, round(masked_lm_prob * T)))
    input_ids = torch.randint(5, vocab_size, (B, T), generator=g)
    segment_ids = (torch.arange(T)[None, :] >= torch.randint(1, T, (B, 1), generator=g)).long()
    positions = torch.zeros(B, P, dtype=torch.long)
    positions[:, :n_mask] = torch.stack([torch.randperm(T - 1, generator=g)[:n_mask] + 1 for _ in range(B)])
    positions[:, :n_mask] = positions[:, :n_mask].sort(dim=1).values
    weights = torch.zeros(B, P)
    weights[:, :n_mask] = 1.0
    return {
        "input_ids": input_ids,
        "input_mask": torch.ones(B, T, dtype=torch.long),
        "segment_ids": segment_ids,
        "masked_lm_positions": positions,
        "masked_lm_ids": torch.randint(5, vocab_size, (B, P), generator=g) * (weights > 0),
        "masked_lm_weights": weights,
        "next_sentence_labels": torch.randint(0, 2, (B,), generator=g),
    }
