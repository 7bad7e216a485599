"""The Linear layer of `--quantize int8`: torch's dynamic int8 (oneDNN or fbgemm) with the outlier tokens' rows in fp32.

Dynamic quantization picks one activation scale per call from the input's largest |value|. In BERT-family models
one token of each sequence, [CLS], carries activations 5-8x larger than every other token's at the FFN of the early
layers (a fine-tuned MiniLM: max 28 at fc1's input where 99% of the tokens stay under 10.5; "massive
activations"), so one scale for all spends most of the 8 bits on a few rows. `Int8Linear` runs those rows, the
rows whose max |x| exceeds OUTLIER_RATIO x the median row's, through the fp32 product with the dequantized weight,
and the others in int8 with a scale that now fits them; rows are independent in a Linear, so nothing else changes.
This is LLM.int8()'s mixed decomposition (Dettmers et al. 2022) cut by rows instead of feature columns: here the
outliers are tokens.

Activations use all 8 bits where the CPU has AVX512-VNNI, whose int8 dot product accumulates in int32; elsewhere
fbgemm's int8 kernels sum pairs in int16 and can saturate, which is why torch quantizes activations to 7 bits
("reduce_range", pytorch/pytorch#34692): there we do too.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

OUTLIER_RATIO = 4.0  # a row whose max |x| exceeds this many times the median row's runs in fp32


def full_range_activations() -> bool:
    """Whether 8-bit activations are safe here: fbgemm's int8 kernels accumulate in int32 with AVX512-VNNI."""
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def engine_for(full_range: bool, engines: list[str] | None = None) -> str:
    """The quantized engine to pack the int8 weights for: oneDNN where activations take all 8 bits (AVX512-VNNI)
    and this torch has it, else fbgemm (what torch's default x86 engine runs dynamic int8 with; the only one with
    7-bit activations measured), else oneDNN or QNNPACK (ARM). Raises ValueError when this torch has none.

    A packed weight carries its engine's kernels (`torch.ops.quantized.linear_dynamic` runs the packed object's,
    whatever `torch.backends.quantized.engine` says later), so the engine matters while packing, and again when a
    quantized model is copied or unpickled (it is repacked for the global engine then). Measured
    (benchmarks/README.md, "int8 on a CPU"; 2 threads, a CPU with VNNI and AMX): oneDNN's product with the same
    weights and 8-bit activations is as exact (per-layer mean error equal to 4 digits) and faster end to end:
    SQuAD prediction 1.23x, SST-2 classification 1.39x fbgemm's."""
    engines = torch.backends.quantized.supported_engines if engines is None else engines  # (tests pass their own)
    for name in ("onednn", "fbgemm") if full_range else ("fbgemm", "onednn", "qnnpack"):
        if name in engines:
            return name
    if full_range:
        return engine_for(False, engines)
    raise ValueError(f"--quantize int8 needs a quantized engine; this torch has {engines}")


@contextlib.contextmanager
def packing_engine(name: str):
    """`torch.backends.quantized.engine` = name inside, the caller's engine restored after (even on an error)."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


class Int8Linear(DynamicLinear):
    """A dynamic int8 Linear (weights int8 as quantized, activations int8 per call) whose outlier rows run in fp32;
    see the module docstring. Built by `runtime.precision.quantize` (`quantize_dynamic`'s `from_float`).

    `reduce_range`: 7-bit activations (None: 8-bit where `full_range_activations()`). `outlier_ratio`: as
    OUTLIER_RATIO; `inf` turns the fp32 rows off (torch's plain dynamic Linear, kept for the tests).
    Without autograd the input's outlier rows are zeroed for the int8 product and put back before it returns (no
    copy of the input): one input tensor must not be given to two calls running at once in different threads
    (the model's own activations never are).
    """

    reduce_range: bool | None = None
    outlier_ratio: float = OUTLIER_RATIO

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., I) -> (..., O), float32."""
        flat = x.reshape(-1, x.shape[-1]).float()  # (N, I)
        reduce_range = not full_range_activations() if self.reduce_range is None else self.reduce_range
        packed = self._packed_params._packed_params
        rows = outlier_rows(flat, self.outlier_ratio)  # (R,)
        if rows.numel() == 0:
            y = torch.ops.quantized.linear_dynamic(flat, packed, reduce_range=reduce_range)
        else:
            outliers = flat.index_select(0, rows)  # (R, I)
            if (torch.is_grad_enabled() and flat.requires_grad) or (
                flat.is_inference() and not torch.is_inference_mode_enabled()
            ):  # autograd may need the input; an inference tensor may not be changed outside inference mode
                y = torch.ops.quantized.linear_dynamic(flat.index_fill(0, rows, 0.0), packed, reduce_range=reduce_range)
            else:  # the outlier rows zeroed in place for the int8 product, then put back: no copy of the input
                flat.index_fill_(0, rows, 0.0)
                try:
                    y = torch.ops.quantized.linear_dynamic(flat, packed, reduce_range=reduce_range)
                finally:
                    flat.index_copy_(0, rows, outliers)
            if getattr(self, "dequantized", None) is None:  # (O, I): the int8 weight, made once
                self.dequantized = self.weight().dequantize()
            with torch.autocast(flat.device.type, enabled=False):  # fp32 rows, also under bf16/fp16 autocast
                exact = F.linear(outliers, self.dequantized, self.bias())
            y.index_copy_(0, rows, exact.to(y.dtype))
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)

    def _get_name(self) -> str:
        return "Int8Linear"


def outlier_rows(flat: torch.Tensor, ratio: float) -> torch.Tensor:
    """The indices (R,) of the rows of flat (N, I) whose max |x| exceeds `ratio` x the median row's max |x|."""
    if flat.shape[0] == 0 or ratio == float("inf"):
        return torch.empty(0, dtype=torch.long, device=flat.device)
    peak = torch.maximum(flat.amax(1), flat.amin(1).neg_())  # (N,) max |x|: 1.6x abs().amax(1), no (N, I) copy
    return (peak > ratio * peak.median()).nonzero().squeeze(1)
