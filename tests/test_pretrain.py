"""Pretraining losses: Google's weighted MLM mean and NSP cross-entropy, checked by hand."""

from __future__ import annotations

import math

import torch

from bertkit.pretrain import pretraining_loss, random_batch


def test_losses_by_hand():
    # Two sequences, two slots each; the second slot of sequence 1 is padding (weight 0).
    mlm_logits = torch.tensor(
        [[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [9.0, 9.0, 9.0]]]
    )  # (B=2, P=2, V=3)
    ids = torch.tensor([[0, 1], [2, 0]])
    weights = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    nsp_logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0])

    def ce(logits, target):
        return -logits[target] + math.log(sum(math.exp(v) for v in logits))

    want_mlm = (ce([2, 0, 0], 0) + ce([0, 1, 0], 1) + ce([0, 0, 3], 2)) / (3 + 1e-5)
    want_nsp = (ce([1, 0], 0) + ce([0, 2], 0)) / 2
    total, mlm, nsp = pretraining_loss(mlm_logits, nsp_logits, ids, weights, labels)
    assert abs(mlm.item() - want_mlm) < 1e-6
    assert abs(nsp.item() - want_nsp) < 1e-6
    assert abs(total.item() - (want_mlm + want_nsp)) < 1e-6


def test_bf16_logits_give_fp32_loss():
    b = random_batch(2, 16, 4, 50, generator=torch.Generator().manual_seed(0))
    logits = torch.randn(2, 4, 50)
    total32, *_ = pretraining_loss(
        logits, torch.zeros(2, 2), b["masked_lm_ids"], b["masked_lm_weights"], b["next_sentence_labels"]
    )
    total16, *_ = pretraining_loss(
        logits.bfloat16(), torch.zeros(2, 2), b["masked_lm_ids"], b["masked_lm_weights"], b["next_sentence_labels"]
    )
    assert total16.dtype == torch.float32
    assert abs(total16.item() - total32.item()) < 0.05


def test_random_batch_shape_and_masking():
    b = random_batch(4, 128, 20, 1000, generator=torch.Generator().manual_seed(0))
    assert b["input_ids"].shape == (4, 128) and b["masked_lm_positions"].shape == (4, 20)
    assert torch.all(b["masked_lm_weights"].sum(1) == 19)  # round(0.15 * 128) = 19 <= 20
    pos = b["masked_lm_positions"][:, :19]
    assert torch.all(pos > 0) and torch.all(pos[:, 1:] > pos[:, :-1])  # distinct, sorted, never [CLS]
    assert torch.all(b["masked_lm_ids"][:, 19:] == 0)
