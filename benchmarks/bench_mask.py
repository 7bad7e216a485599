"""The padding mask in the explicit attention of CPU training: added (bertkit) against masked_fill (the formula
before), one SQuAD training step (forward + backward, MiniLM size, batch 8 real windows cut to their longest, the
padded path), steps alternating between the two on the same batches. One JSON line; the two give the same bits
(tests/test_model.py::test_explicit_attention_mask_added_equals_masked_fill).

    python benchmarks/bench_mask.py --threads 1 --batches 6
"""

from __future__ import annotations

import argparse
import json
import time

import bench_finetune as bf
import torch
import torch.nn.functional as F

import bertkit.model as M
from bertkit.squad import squad_loss


def masked_fill_attention(q, k, v, attn_mask, dropout_p):
    """The formula before: masked_fill (a copy and a fill forward, another copy and fill in backward)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    return F.dropout(scores.softmax(-1), dropout_p).to(v.dtype) @ v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bs = bf.batches(bf.squad_arrays(bf.DATA), 8, args.batches)
    ours, _ = bf.models("squad", "minilm")
    ours.bert.unpad = False
    added = M.explicit_attention

    def step(b) -> float:
        t0 = time.perf_counter()
        loss, _ = squad_loss(ours, bf.tensors(b, cut=True))
        loss.backward()
        ours.zero_grad()
        return time.perf_counter() - t0

    step(bs[0])  # warm
    times = {"masked_fill": [], "added": []}
    try:
        for b in bs:
            for name, f in (("masked_fill", masked_fill_attention), ("added", added)):
                M.explicit_attention = f
                times[name].append(step(b))
    finally:
        M.explicit_attention = added
    print(json.dumps({"bench": "attention_mask", "threads": args.threads, "batches": args.batches,
                      **{f"{k}_s": round(sum(v), 2) for k, v in times.items()},
                      "speedup": round(sum(times["masked_fill"]) / sum(times["added"]), 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
