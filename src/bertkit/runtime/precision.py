"""Mixed precision: the autocast context for fp32, bf16 and fp16, shared by training and inference.

fp32 is no context at all (exact); bf16 and fp16 are `torch.autocast` on the device's type. fp16 training also needs
loss scaling, which the training loop owns (train/loop.py); inference needs only the context.
"""

from __future__ import annotations

import contextlib

import torch


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in: none for "fp32", else torch.autocast with bfloat16 ("bf16") or float16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def no_autocast(precision: str, device: torch.device):
    """Autocast off inside an autocast context. fit opens one autocast context around a step's micro-steps
    (autocast keeps its bf16/fp16 copies of the weights until the outermost context exits, so with
    --num_accumulation_steps k the weights are cast once a step, not k times) and runs each backward in this, as
    it would run outside the context. Tested bit-equal to a context per micro-step, with fewer casts."""
    return contextlib.nullcontext() if precision == "fp32" else torch.autocast(device.type, enabled=False)


QUANTIZE = ("none", "int8")


def quantize(model: torch.nn.Module, mode: str, keep: frozenset[str] = frozenset()) -> torch.nn.Module:
    """The model for inference with `mode`: "none" returns it as it is (exact); "int8" returns a copy whose
    nn.Linear layers, but those named in `keep`, are torch's dynamic int8 quantization (weights int8 per tensor,
    activations quantized per batch at run time; CPU only). Embeddings, LayerNorm and the softmax stay fp32.
    `keep`: layers whose weight the forward reads as a tensor (a quantized layer has none). Raises ValueError for
    another mode or a model not on the CPU.
    Reference: torch.ao.quantization.quantize_dynamic, as in PyTorch's "dynamic quantization on BERT" tutorial."""
    if mode not in QUANTIZE:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {mode!r}")
    if mode == "none":
        return model
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("--quantize int8 runs on the CPU only: pass --device cpu")
    import warnings

    with warnings.catch_warnings():  # torch announces the move of this API to torchao; it works as documented
        warnings.simplefilter("ignore")
        names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in keep}
        return torch.ao.quantization.quantize_dynamic(model.eval(), names, dtype=torch.qint8)
