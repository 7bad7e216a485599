"""One BERT pretraining step (forward + backward + AdamW step): bertkit against Hugging Face, side by side.

For each config (BERT-tiny L2/H128/A2, BERT-small L4/H512/A8, BERT-base L12/H768/A12; seq 128; batch 32, base 8;
15% of tokens masked, at most 20 per sequence) this runs, each in its own subprocess so peak memory is its own:

- hf:          transformers' BertForPreTraining (sdpa attention), its own loss (labels over every token),
               torch.optim.AdamW with its defaults;
- bertkit:     BertForPreTraining with the sparse MLM head, bertkit's loss, fused AdamW;
- bertkit_bf16: the same under torch.autocast(bfloat16) with fp32 master weights.

All three start from the same weights, see the same batches and use the same thread count. Each trains --steps
steps; sequences/s is measured over the steps after --warmup. Rounds alternate the implementations so that
machine noise hits them alike; the best round counts. One JSON line per config, with the ratios and the
fp32-vs-bf16 loss difference after the last step.

    python benchmarks/bench_model.py                   # all three configs
    python benchmarks/bench_model.py --configs tiny small --steps 50 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, batch=32),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, batch=32),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, batch=8),
}
IMPLS = ("hf", "bertkit", "bertkit_bf16")
SEQ, MAX_PRED, N_BATCHES = 128, 20, 4


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(impl: str, name: str, steps: int, warmup: int, threads: int, device: str) -> dict:
    import torch

    from bertkit.checkpoint.convert import to_hf
    from bertkit.model.bert import BertForPreTraining
    from bertkit.model.config import BertConfig
    from bertkit.tasks.pretrain.task import pretraining_loss, random_batch

    torch.set_num_threads(threads)
    spec = dict(CONFIGS[name])
    batch = spec.pop("batch")
    cfg = BertConfig(intermediate_size=4 * spec["hidden_size"], **spec)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batches = [random_batch(batch, SEQ, MAX_PRED, cfg.vocab_size, generator=g) for _ in range(N_BATCHES)]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    ours = BertForPreTraining(cfg)  # the shared initial weights: seed 0
    rss_before = rss_mib()

    if impl == "hf":
        import transformers

        hcfg = transformers.BertConfig(**cfg.to_dict())
        hcfg._attn_implementation = "sdpa"
        model = transformers.BertForPreTraining(hcfg)
        model.load_state_dict(to_hf(ours.state_dict(), cfg.num_hidden_layers), strict=True)
        del ours
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        for b in batches:  # HF's labels: the masked token ids at their positions, -100 elsewhere
            labels = torch.full_like(b["input_ids"], -100)
            pos = b["masked_lm_positions"][b["masked_lm_weights"] > 0]
            rows = torch.arange(batch, device=device)[:, None].expand_as(b["masked_lm_positions"])
            labels[rows[b["masked_lm_weights"] > 0], pos] = b["masked_lm_ids"][b["masked_lm_weights"] > 0]
            b["labels"] = labels

        def step(b):
            out = model(
                input_ids=b["input_ids"],
                attention_mask=b["input_mask"],
                token_type_ids=b["segment_ids"],
                labels=b["labels"],
                next_sentence_label=b["next_sentence_labels"],
            )
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            return out.loss
    else:
        model = ours.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
        dtype = torch.bfloat16 if impl == "bertkit_bf16" else None

        def step(b):
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                mlm, nsp = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
            loss, _, _ = pretraining_loss(
                mlm, nsp, b["masked_lm_ids"], b["masked_lm_weights"], b["next_sentence_labels"]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(2)  # the same dropout stream for every implementation
    for i in range(warmup):
        step(batches[i % N_BATCHES])
    sync()
    t0 = time.perf_counter()
    for i in range(warmup, steps):
        loss = step(batches[i % N_BATCHES])
    sync()
    elapsed = time.perf_counter() - t0
    return {
        "seq_per_s": (steps - warmup) * batch / elapsed,
        "peak_mib": rss_mib() - rss_before if device == "cpu" else torch.cuda.max_memory_allocated() / 2**20,
        "final_loss": float(loss),
    }


def run_worker(impl: str, name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--configs", name, "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="configs to run")
    p.add_argument("--steps", type=int, default=50, help="training steps per run (loss compared after the last)")
    p.add_argument("--warmup", type=int, default=5, help="steps not timed")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds; the best speed of each counts")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for all")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.configs[0], args.steps, args.warmup, args.threads, args.device)))
        return
    for name in args.configs:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for impl in IMPLS:
                r = run_worker(impl, name, args)
                if impl not in best or r["seq_per_s"] > best[impl]["seq_per_s"]:
                    best[impl] = r
        hf, fp32, bf16 = (best[i] for i in IMPLS)
        spec = CONFIGS[name]
        print(
            json.dumps(
                {
                    "bench": "train_step",
                    "config": f"{name} L{spec['num_hidden_layers']}/H{spec['hidden_size']}/A{spec['num_attention_heads']}",
                    "seq": SEQ,
                    "batch": spec["batch"],
                    "device": args.device,
                    "threads": args.threads,
                    "steps": args.steps,
                    "hf_seq_per_s": round(hf["seq_per_s"], 2),
                    "bertkit_seq_per_s": round(fp32["seq_per_s"], 2),
                    "bertkit_bf16_seq_per_s": round(bf16["seq_per_s"], 2),
                    "ratio_fp32": round(fp32["seq_per_s"] / hf["seq_per_s"], 3),
                    "ratio_bf16_vs_hf_fp32": round(bf16["seq_per_s"] / hf["seq_per_s"], 3),
                    "hf_peak_mib": round(hf["peak_mib"], 1),
                    "bertkit_peak_mib": round(fp32["peak_mib"], 1),
                    "bertkit_bf16_peak_mib": round(bf16["peak_mib"], 1),
                    "hf_final_loss": round(hf["final_loss"], 5),
                    "fp32_final_loss": round(fp32["final_loss"], 5),
                    "bf16_final_loss": round(bf16["final_loss"], 5),
                    "bf16_vs_fp32_loss_diff": round(bf16["final_loss"] - fp32["final_loss"], 5),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
