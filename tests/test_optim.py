"""Optimizers: Google's AdamWeightDecay by hand, its foreach fast path equal to the loop, LAMB, the schedule."""

from __future__ import annotations

import math

import pytest
import torch

from bertkit.model import BertForPreTraining
from bertkit.optim import AdamWeightDecay, Lamb, build_optimizer, learning_rate, no_decay, param_groups


def test_adam_weight_decay_by_hand():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = AdamWeightDecay([w], lr=0.1, weight_decay=0.5, foreach=False)
    g = torch.tensor([0.5, 0.25])
    w.grad = g.clone()
    opt.step()
    # No bias correction: m = 0.1 g, v = 0.001 g^2, update = m / (sqrt(v) + 1e-6) + 0.5 w
    m, v = 0.1 * g, 0.001 * g * g
    want = torch.tensor([1.0, -2.0]) - 0.1 * (m / (v.sqrt() + 1e-6) + 0.5 * torch.tensor([1.0, -2.0]))
    assert torch.allclose(w.detach(), want, atol=1e-7)


def test_foreach_equals_loop(tiny_cfg):
    torch.manual_seed(0)
    a, b = BertForPreTraining(tiny_cfg), BertForPreTraining(tiny_cfg)
    b.load_state_dict(a.state_dict())
    opt_a = AdamWeightDecay(param_groups(a, 0.01), lr=1e-2, foreach=True)
    opt_b = AdamWeightDecay(param_groups(b, 0.01), lr=1e-2, foreach=False)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            pa.grad = torch.randn(pa.shape, generator=g)
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0), name


def test_decay_excludes_layernorm_and_bias(tiny_cfg):
    model = BertForPreTraining(tiny_cfg)
    names = {n for n, _ in model.named_parameters() if no_decay(n)}
    assert "bert.layers.0.attn_norm.weight" in names and "bert.emb.norm.weight" in names
    assert "mlm.bias" in names and "bert.layers.1.mlp.fc1.bias" in names
    assert "bert.layers.0.attn.qkv.weight" not in names and "bert.emb.word.weight" not in names
    decay, skip = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and skip["weight_decay"] == 0.0
    assert len(decay["params"]) + len(skip["params"]) == len(list(model.parameters()))


def test_lamb_trust_ratio_by_hand():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    w.grad = torch.tensor([1.0, 0.0])
    Lamb([w], lr=0.1, weight_decay=0.0).step()
    # step 1, bias-corrected: m_hat = g, v_hat = g^2 -> update ~ [1, 0] (||u|| ~ 1), trust = 5
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.1 * 5 * (1 / (1 + 1e-6)), 4.0]), atol=1e-5)


@pytest.mark.parametrize("name, lr", [("adamw", 1e-2), ("adam_weight_decay", 1e-2), ("lamb", 0.1)])
def test_every_optimizer_reduces_a_loss(name, lr, tiny_cfg):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_cfg)
    opt = build_optimizer(name, model, lr, 0.01)
    ids = torch.randint(0, 99, (4, 8))
    losses = []
    for _ in range(10):
        mlm, nsp = model(ids)
        loss = torch.nn.functional.cross_entropy(mlm.flatten(0, 1), ids.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_unknown_optimizer(tiny_cfg):
    with pytest.raises(ValueError, match="--optimizer"):
        build_optimizer("sgd", BertForPreTraining(tiny_cfg), 1e-3, 0.0)


def test_schedule_warmup_then_linear_decay():
    assert learning_rate(0, 1.0, 10, 100) == 0.0
    assert learning_rate(5, 1.0, 10, 100) == 0.5
    assert math.isclose(learning_rate(10, 1.0, 10, 100), 0.9)
    assert math.isclose(learning_rate(50, 1.0, 10, 100), 0.5)
    assert learning_rate(100, 1.0, 10, 100) == 0.0
    assert learning_rate(3, 2.0, 0, 4) == 0.5
