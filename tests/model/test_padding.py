"""Unpadding (bertkit.model.padding) and the model's fast path: equal to the padded path at real tokens."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bertkit.model import padding
from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification
from bertkit.model.config import BertConfig

CFG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def batch(seed: int = 0, lengths=(11, 5, 8, 5, 1, 11)):  # two pairs of equal length: grouped
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    ids = torch.randint(0, 99, (B, T), generator=g)
    types = torch.randint(0, 2, (B, T), generator=g)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, types, mask


def test_pad_unpad_round_trip():
    _, _, mask = batch()
    u = padding.Unpadded.from_mask(mask)
    x = torch.randn(*mask.shape, 3, 2)
    flat = u.unpad(x)
    assert flat.shape == (int(mask.sum()), 3, 2)
    assert u.positions().tolist() == [t for row in mask for t in range(int(row.sum()))]
    back = u.pad(flat)
    m = mask.bool()[:, :, None, None]
    assert torch.equal(back, x * m)  # real rows restored, zeros at padding


def outputs(model, unpad: bool, ids, types, mask, **kw):
    """Outputs at real tokens and every parameter's gradient of their sum, with the fast path on or off."""
    model.bert.unpad = unpad
    model.zero_grad()
    out = model(ids, types, mask, **kw)
    out = list(out) if isinstance(out, tuple) else [out]
    out = [o.masked_fill(~mask.bool(), 0) if o.shape == mask.shape else o for o in out]  # QA logits (B, T)
    sum(o.sum() for o in out).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in out], grads


SORTED = (11, 11, 8, 5, 5, 1)  # equal lengths side by side: attention reads slices (`spans`)


@pytest.mark.parametrize("lengths", [(11, 5, 8, 5, 1, 11), SORTED])
@pytest.mark.parametrize("head", ["squad", "classify", "pretrain"])
def test_unpadded_equals_padded(head, lengths):
    """Logits and all gradients, fp32, dropout 0: relative 1e-5; with equal lengths apart (gathered groups) and side
    by side (slices)."""
    cfg = BertConfig(**CFG, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    ids, types, mask = batch(lengths=lengths)
    assert (padding.Unpadded.from_mask(mask).spans is not None) == (lengths == SORTED)
    kw = {}
    if head == "squad":
        model = BertForQuestionAnswering(cfg)
    elif head == "classify":
        model = BertForSequenceClassification(cfg, 3)
    else:
        model = BertForPreTraining(cfg)
        kw["masked_positions"] = torch.tensor([[n // 2, n - 1] for n in lengths])  # real tokens of each row
    out_p, g_p = outputs(model, False, ids, types, mask, **kw)
    out_u, g_u = outputs(model, True, ids, types, mask, **kw)
    for a, b in zip(out_p, out_u, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert g_p.keys() == g_u.keys()
    for n in g_p:
        torch.testing.assert_close(g_u[n], g_p[n], rtol=1e-5, atol=1e-6, msg=n)


def test_default_fast_path_only_without_gradients(monkeypatch):
    """unpad None (the default): prediction and evaluation unpad, training keeps the padded reference path."""
    calls = []
    real = padding.Unpadded.from_mask
    monkeypatch.setattr(padding.Unpadded, "from_mask", classmethod(lambda cls, m: calls.append(1) or real(m)))
    model = BertForQuestionAnswering(BertConfig(**CFG))
    ids, types, mask = batch()
    model(ids, types, mask)
    assert calls == []
    with torch.no_grad():
        model.eval()(ids, types, mask)
    assert calls == [1]


def test_unpadded_training_with_dropout_runs_and_learns():
    """Dropout on (masks drawn for real tokens only): finite loss, falling over a few steps."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**CFG), 2)
    model.bert.unpad = True
    ids, types, mask = batch(1)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(ids, types, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2


def test_a_mask_with_holes_takes_the_padded_path():
    """The fast path needs each row's tokens first; any other mask keeps the padded path (same outputs)."""
    ids, types, mask = batch()
    mask[0, 3] = 0  # a hole inside the first sequence
    assert padding.Unpadded.from_mask(mask) is None
    model = BertForQuestionAnswering(BertConfig(**CFG)).eval()
    with torch.no_grad():
        model.bert.unpad = True
        fast = model(ids, types, mask)
        model.bert.unpad = False
        plain = model(ids, types, mask)
    for a, b in zip(fast, plain, strict=True):
        assert torch.equal(a, b)


def test_groups_hold_each_length_once_and_restore_the_order():
    _, _, mask = batch()
    u = padding.Unpadded.from_mask(mask)
    assert [n for n, _ in u.groups] == [11, 5, 8, 1]
    rows = torch.cat([r for _, r in u.groups])
    x = torch.arange(int(mask.sum()))
    assert torch.equal(x[rows][u.restore], x)
    assert u.groups[1][1].tolist() == [*range(11, 16), *range(24, 29)]  # sequences 1 and 3 (length 5), in turn


def test_spans_equal_the_gathered_groups(monkeypatch):
    """Side-by-side lengths (a sorted prediction batch, a row of padding between) give slices; the outputs are
    bit-equal to the gathered groups' path (spans dropped)."""
    ids, types, mask = batch(lengths=(11, 11, 0, 8, 5, 5, 1))
    u = padding.Unpadded.from_mask(mask)
    assert u.spans == [(11, 0, 22), (8, 22, 8), (5, 30, 10), (1, 40, 1)]
    assert padding.Unpadded.from_mask(batch()[2]).spans is None  # lengths 5 apart
    model = BertForQuestionAnswering(BertConfig(**CFG)).eval()
    model.bert.unpad = True
    with torch.no_grad():
        fast = model(ids, types, mask)
        real = padding.Unpadded.from_mask
        monkeypatch.setattr(padding.Unpadded, "from_mask", classmethod(lambda cls, m: replace(real(m), spans=None)))
        gathered = model(ids, types, mask)
    for a, b in zip(fast, gathered, strict=True):
        assert torch.equal(a, b)


def test_rows_of_padding_only():
    """A row with no token is left out (zeros come back); a batch with no token at all takes the padded path."""
    ids, types, mask = batch()
    mask[2] = 0
    u = padding.Unpadded.from_mask(mask)
    assert 8 not in [n for n, _ in u.groups] and u.index.numel() == int(mask.sum())
    assert padding.Unpadded.from_mask(torch.zeros_like(mask)) is None
    model = BertForSequenceClassification(BertConfig(**CFG), 2).eval()
    with torch.no_grad():
        model.bert.unpad = True
        fast = model(ids, types, mask)
        model.bert.unpad = False
        plain = model(ids, types, mask)
    keep = [0, 1, 3, 4, 5]  # the empty row's [CLS] is padding: unspecified on either path
    torch.testing.assert_close(fast[keep], plain[keep], rtol=1e-5, atol=1e-6)


def test_compile_and_unpad_are_refused_together():
    from bertkit.train.config import TrainConfig

    with pytest.raises(ValueError, match="--compile and --unpad True"):
        TrainConfig.from_flags(compile=True, unpad=True)
