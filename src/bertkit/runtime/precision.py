"""Mixed precision: the autocast context for fp32, bf16 and fp16, shared by training and inference.

fp32 is no context at all (exact); bf16 and fp16 are `torch.autocast` on the device's type. fp16 training also needs
loss scaling, which the training loop owns (train/loop.py); inference needs only the context.
"""

from __future__ import annotations

import contextlib
from copy import deepcopy

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


def cast_linears(model: torch.nn.Module, precision: str, copy: bool = True) -> torch.nn.Module:
    """The model for inference under `autocast(precision, ...)`: itself for fp32; else the model (a copy, unless
    `copy` is False: pass False for a model made for the purpose, such as `quantize`'s, whose int8 weights a deep
    copy would repack for the global engine) with its nn.Linear weights and biases stored in autocast's dtype
    (bf16 or fp16), everything else as it was.

    autocast casts a float32 weight to its dtype at every call outside one context (a server's batches, `ask`'s
    questions); a weight already in that dtype it uses as it is. The cast is the same rounding, so the outputs are
    bit-equal (tested), and a bf16 QuestionAnswerer answering 2 windows at a time ran 1.29x faster on a CPU. Only
    for use inside that autocast context: outside it the Linear layers would get float32 inputs. Quantized layers
    (`quantize`, to run first) are not nn.Linear and stay as they are."""
    if precision == "fp32":
        return model
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if copy:
        model = deepcopy(model)
    for m in model.modules():
        if type(m) is torch.nn.Linear:
            m.to(dtype)
    return model


QUANTIZE = ("none", "int8")


def quantize(model: torch.nn.Module, mode: str, keep: frozenset[str] = frozenset()) -> torch.nn.Module:
    """The model for inference with `mode`: "none" returns it as it is (exact); "int8" returns a copy whose
    encoder Linear layers (attention qkv and proj, FFN fc1 and fc2 of every `layers.N`), but those named in `keep`,
    are `Int8Linear`: torch's dynamic int8 (oneDNN or fbgemm, CPU only). The heads (QA, classifier, pooler: a few rows or
    columns, no time to win), embeddings, LayerNorm and the softmax stay fp32.
    `keep`: layers whose weight the forward reads as a tensor (a quantized layer has none). Raises ValueError for
    another mode or a model not on the CPU.

    The policy, from measurements (benchmarks/README.md, "int8 on a CPU"; MiniLMs fine-tuned for SQuAD and SST-2):
    weights get one scale per output channel and the FFN's outlier rows (the [CLS] token's, 5-8x the others) run in
    fp32 (`Int8Linear`, FP32_OUTLIER_ROWS): on a SQuAD MiniLM at F1 62.7, per-tensor weights cost 3.2-4.1 F1 and
    per-channel alone 2.0, this 0.3. Where the CPU has AVX512-VNNI activations take all 8 bits
    (`int8.full_range_activations`) and the weights are packed for oneDNN (`int8.engine_for`: 1.2-1.4x fbgemm's
    speed here, to the same error); elsewhere fbgemm with 7-bit activations. Where the CPU has AMX, bf16 autocast
    (--precision bf16) was faster still and closer to fp32 (SQuAD 3.2x transformers' pipeline, int8 2.6x).
    Reference: torch.ao.quantization.quantize_dynamic with its per_channel dynamic qconfig, as in
    PyTorch's "dynamic quantization on BERT" tutorial."""
    if mode not in QUANTIZE:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {mode!r}")
    if mode == "none":
        return model
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("--quantize int8 runs on the CPU only: pass --device cpu")
    import warnings

    from bertkit.runtime import int8

    full_range = int8.full_range_activations()
    with warnings.catch_warnings(), int8.packing_engine(int8.engine_for(full_range)):
        warnings.simplefilter("ignore")  # torch announces the move of this API to torchao; it works as documented
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        spec = {n: per_channel_dynamic_qconfig for n in int8_layers(model) if n not in keep}
        model = quantize_dynamic(model.eval(), spec, dtype=torch.qint8, mapping={torch.nn.Linear: int8.Int8Linear})
    for name, m in model.named_modules():
        if isinstance(m, int8.Int8Linear):
            m.reduce_range = not full_range
            if not name.endswith(FP32_OUTLIER_ROWS):
                m.outlier_ratio = float("inf")  # no rows looked for: none are there
    return model


# The layers whose outlier rows (the [CLS] token's) run in fp32: the FFN's, where they are
# (at qkv and proj the largest token is at most 2x the 99th percentile's, at fc1 and fc2 up to 5x). Splitting the
# attention layers too left the answers of 300 SQuAD questions as close to fp32 (92.7% the same) and cost time.
FP32_OUTLIER_ROWS = ("mlp.fc1", "mlp.fc2")


def int8_layers(model: torch.nn.Module) -> list[str]:
    """The names of the Linear layers --quantize int8 quantizes: those of the encoder's layers ("layers.N." in the
    name), the heads not."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n]
