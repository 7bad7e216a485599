"""Optimizers: Google's AdamWeightDecay by hand, its foreach fast path equal to the loop, LAMB, the schedule."""

from __future__ import annotations

import math

import pytest
import torch

from bertkit.model.bert import BertForPreTraining
from bertkit.train.optim import AdamWeightDecay, Lamb, build_optimizer, learning_rate, no_decay, param_groups


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


@pytest.mark.parametrize("use_nvlamb, trust", [(True, 5.0), (False, 1.0)])
def test_lamb_trust_ratio_by_hand(use_nvlamb, trust):
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    w.grad = torch.tensor([1.0, 0.0])
    Lamb([w], lr=0.1, weight_decay=0.0, use_nvlamb=use_nvlamb).step()
    # step 1, bias-corrected: m_hat = g, v_hat = g^2 -> update ~ [1, 0] (||u|| ~ 1), trust 5; but NVIDIA's LAMB
    # (use_nvlamb=False) leaves a tensor without weight decay unadapted: trust 1
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.1 * trust * (1 / (1 + 1e-6)), 4.0]), atol=1e-5)


def lamb_algorithm_2(params, grads, decays, lr, wd, b1=0.9, b2=0.999, eps=1e-6):
    """One step (t = 1) of You et al. 2019, Algorithm 2, from zero moments, written out per tensor; a tensor
    excluded from decay gets no weight decay and no layer adaptation (NVIDIA's and TF's exclusion)."""
    out = []
    for x, g, decays_x in zip(params, grads, decays, strict=True):
        m = (1 - b1) * g
        v = (1 - b2) * g * g
        r = (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)
        if decays_x:
            u = r + wd * x
            phi = x.norm()  # phi(z) = z
            out.append(x - lr * phi / u.norm() * u)
        else:
            out.append(x - lr * r)
    return out


def test_lamb_equals_algorithm_2_with_nvidias_exclusion(tiny_cfg):
    """One step of build_optimizer("lamb") on a tiny BERT against the algorithm as published, parameter by
    parameter: LayerNorm and bias take the plain Adam step, everything else the trust-scaled one. The weights are
    drawn afresh (LayerNorm not all ones, biases not 0), else the trust ratio of those tensors would be 1 anyway."""
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_cfg)
    g = torch.Generator().manual_seed(1)
    named = list(model.named_parameters())
    with torch.no_grad():
        for _, p in named:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            p.grad = torch.randn(p.shape, generator=g)
    before = [p.detach().clone() for _, p in named]
    want = lamb_algorithm_2(before, [p.grad for _, p in named], [not no_decay(n) for n, _ in named], 0.1, 0.01)
    build_optimizer("lamb", model, 0.1, 0.01).step()
    for (name, p), w in zip(named, want, strict=True):
        assert torch.allclose(p.detach(), w, rtol=1e-5, atol=1e-7), name
    # the exclusion is what the test sees: with the ratio on every tensor, LayerNorm and bias end elsewhere
    with torch.no_grad():
        for (_, p), b in zip(named, before, strict=True):
            p.copy_(b)
    Lamb(param_groups(model, 0.01), lr=0.1, use_nvlamb=True).step()
    moved = {
        n for (n, p), w in zip(named, want, strict=True) if not torch.allclose(p.detach(), w, rtol=1e-5, atol=1e-7)
    }
    assert moved == {n for n, _ in named if no_decay(n)}


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
