"""Optimizers and the learning-rate schedule of BERT pretraining.

References: google-research/bert `optimization.py` (AdamWeightDecayOptimizer: Adam *without* bias correction,
decoupled weight decay, no decay on LayerNorm and bias; linear warmup, then linear decay to 0 at the last
step) and OneFlow-Benchmark's run_pretraining.py, which configures the same (epsilon 1e-6, global-norm clip
1.0, decay excluding "bias" and "LayerNorm"). LAMB is NVIDIA's (apex `FusedLAMB`, `use_nvlamb=False`): You et al.
2019 Algorithm 2 (layer-wise trust ratio ||w|| / ||update||, Adam's bias correction) with no trust ratio on the
parameters excluded from weight decay, as TF LAMB's `exclude_from_layer_adaptation` does.
"""

from __future__ import annotations

import torch
from torch import nn

OPTIMIZERS = ("adam_weight_decay", "adamw", "lamb")  # the default first


def no_decay(name: str) -> bool:
    """Google excludes LayerNorm and bias from weight decay; in bertkit names those are '*norm*' and '*bias'."""
    return name.endswith("bias") or "norm." in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, skip = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (skip if no_decay(name) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


class AdamWeightDecay(torch.optim.Optimizer):
    """Google BERT's optimizer: m/(sqrt(v)+eps) + wd*w, no bias correction. `foreach` batches the math
    over all tensors of a group (the fast path; the per-tensor loop is the reference and is tested equal)."""

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        foreach: bool = True,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
            grads = [p.grad for p in params]
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            b1, b2 = group["betas"]
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            if group["foreach"]:
                torch._foreach_lerp_(m, grads, 1 - b1)  # m = b1*m + (1-b1)*g
                torch._foreach_mul_(v, b2)
                torch._foreach_addcmul_(v, grads, grads, 1 - b2)  # v = b2*v + (1-b2)*g^2
                denom = torch._foreach_sqrt(v)
                torch._foreach_add_(denom, eps)
                update = torch._foreach_div(m, denom)
                if wd:
                    torch._foreach_add_(update, params, alpha=wd)
                torch._foreach_add_(params, update, alpha=-lr)
            else:
                for p, g, m_, v_ in zip(params, grads, m, v, strict=True):
                    m_.mul_(b1).add_(g, alpha=1 - b1)
                    v_.mul_(b2).addcmul_(g, g, value=1 - b2)
                    update = m_ / (v_.sqrt() + eps)
                    if wd:
                        update = update + wd * p
                    p.add_(update, alpha=-lr)


class Lamb(torch.optim.Optimizer):
    """LAMB as NVIDIA's (apex FusedLAMB, bias_correction=True, adam_w_mode=True, use_nvlamb=False): per tensor,
    update = m_hat / (sqrt(v_hat) + eps) + wd * w, then w -= lr * trust * update with trust = ||w|| / ||update||
    (1 where either norm is 0). Groups with weight_decay 0 (LayerNorm and bias, `param_groups`) take the plain
    bias-corrected Adam step, trust 1; `use_nvlamb=True` applies the ratio to them too (You et al. as written).

    Gradient clipping: apex FusedLAMB clips by the global norm over all parameters (max_grad_norm 1.0) before
    the moments are updated. Here `train.fit` does the same outside the optimizer (clip_grad_norm_ over every
    parameter, --max_grad_norm 1.0, before opt.step), so Lamb itself does not clip.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        use_nvlamb: bool = False,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, use_nvlamb=use_nvlamb))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            adapt = group.get("use_nvlamb", False) or group["weight_decay"] != 0  # apex: none without decay
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"], st["exp_avg"], st["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                st["exp_avg"].lerp_(p.grad, 1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m_hat = st["exp_avg"] / (1 - b1 ** st["step"])
                v_hat = st["exp_avg_sq"] / (1 - b2 ** st["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                if adapt:
                    w_norm, u_norm = p.norm(), update.norm()
                    # trust ratio 1 where either norm is 0 (fresh zero-initialised tensors, zero gradients)
                    trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                    update.mul_(trust)
                p.add_(update, alpha=-group["lr"])


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "adam_weight_decay":
        return AdamWeightDecay(groups, lr=lr)
    if name == "adamw":
        dev = next(model.parameters()).device.type
        return torch.optim.AdamW(groups, lr=lr, eps=1e-6, fused=dev in ("cpu", "cuda"))
    if name == "lamb":
        return Lamb(groups, lr=lr)
    raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def learning_rate(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Google's schedule for the update with 0-based index `step`: linear warmup from 0 over `warmup` steps,
    otherwise linear decay base_lr * (1 - step/total), reaching 0 at `total`."""
    if warmup > 0 and step < warmup:
        return base_lr * step / warmup
    return base_lr * max(0.0, 1.0 - step / total)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
