"""The padding mask in the explicit attention of CPU training: filled in place on the scores (bertkit) against
masked_fill (the formula before: a copy of the (B, N, T, T) scores forward, another in backward) and an additive
(B, 1, 1, T) bias (one pass forward, nothing in backward, but a fully masked row's gradient is no longer zero and
fp16 overflows to -inf: not taken). In place gives masked_fill's bits (tests/test_model.py).

Two parts, the variants alternating and each first in turn, the median of per-repeat ratios reported (a busy
machine slows neighbouring repeats alike): "attention", forward + backward of the attention alone (batch 8, 12
heads, 320 positions, head size 32, rows of 320 down to 40 real keys, dropout 0.1); "step", one SQuAD training
step (forward + backward, MiniLM size, batch 8 real windows cut to their longest, the padded path).

    python benchmarks/bench_mask.py --threads 1 --repeats 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import bench_finetune as bf
import torch
import torch.nn.functional as F

import bertkit.model.bert as M
from bertkit.tasks.squad.task import squad_loss


def masked_fill_attention(q, k, v, attn_mask, dropout_p):
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    return F.dropout(scores.softmax(-1), dropout_p).to(v.dtype) @ v


def added_attention(q, k, v, attn_mask, dropout_p):
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if attn_mask is not None:
        bias = torch.zeros(attn_mask.shape, dtype=scores.dtype).masked_fill_(~attn_mask, torch.finfo(scores.dtype).min)
        scores = scores + bias
    return F.dropout(scores.softmax(-1), dropout_p).to(v.dtype) @ v


VARIANTS = [("masked_fill", masked_fill_attention), ("added", added_attention), ("in_place", M.explicit_attention)]


def compare(run, repeats: int) -> dict:
    """run(f, i) -> seconds; every variant once a repeat, each first in turn; median ratio to masked_fill."""
    times: dict[str, list[float]] = {name: [] for name, _ in VARIANTS}
    for i in range(repeats):
        for name, f in VARIANTS[i % 3 :] + VARIANTS[: i % 3]:
            times[name].append(run(f, i))
    base = times["masked_fill"]
    return {f"speedup_{n}": round(statistics.median(b / x for b, x in zip(base, t, strict=True)), 3)
            for n, t in times.items()}  # fmt: skip


def attention_part(repeats: int) -> dict:
    B, N, T, D = 8, 12, 320, 32
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(B, 1, 1, T, dtype=torch.bool)
    for i in range(1, B):
        mask[i, ..., T - 40 * i :] = False

    def run(f, _):
        qkv = torch.randn(B, T, 3, N, D, generator=g).permute(2, 0, 3, 1, 4)  # as the fused projection gives
        q, k, v = (t.requires_grad_() for t in qkv)
        t0 = time.perf_counter()
        f(q, k, v, mask, 0.1).sum().backward()
        return time.perf_counter() - t0

    return {"bench": "attention_mask", "part": "attention", "shape": [B, N, T, D], **compare(run, repeats)}


def step_part(repeats: int) -> dict:
    bs = bf.batches(bf.squad_arrays(bf.DATA), 8, repeats)
    model, _ = bf.models("squad", "minilm")
    model.bert.unpad = False
    original = M.explicit_attention

    def run(f, i):
        M.explicit_attention = f
        try:
            t0 = time.perf_counter()
            loss, _ = squad_loss(model, bf.tensors(bs[i], cut=True))
            loss.backward()
            model.zero_grad()
            return time.perf_counter() - t0
        finally:
            M.explicit_attention = original

    run(original, 0)  # warm
    return {"bench": "attention_mask", "part": "squad_step", **compare(run, repeats)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--only", choices=["attention", "step"], default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name, part in (("attention", attention_part), ("step", step_part)):
        if args.only in (None, name):
            print(json.dumps({**part(args.repeats), "threads": args.threads, "repeats": args.repeats}), flush=True)


if __name__ == "__main__":
    main()
