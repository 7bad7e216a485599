"""Fine-tuning steps, bertkit against Hugging Face: SQuAD (seq 384, real windows) and GLUE SST-2 (seq 128).

For each task and precision (fp32, bf16 autocast) the same random BERT (bertkit's weights, converted to HF names)
takes training steps on the same batches of real data, one batch per step drawn by a seeded generator:
- bertkit:    bertkit's model and loss (`squad.squad_loss` / `classify.classification_loss`) on the batch cut to
              its longest sequence, as bertkit's loaders give it; bertkit's optimizer (`optim.build_optimizer
              ("adamw")`: torch AdamW, fused on CPU);
- bertkit_unpad: the same with `--unpad True` (`bertkit.model.padding`: real tokens only, attention per sequence; in
              prediction and evaluation this is bertkit's default, `bertkit` there is the padded path);
- hf_dynamic: transformers' BertForQuestionAnswering / BertForSequenceClassification (sdpa) with its own loss on
              the same cut batch (DataCollatorWithPadding's dynamic padding); torch.optim.AdamW (HF Trainer's
              default "adamw_torch", foreach);
- hf_padded:  the same on the batch padded to max_seq_length (run_squad / run_glue's `pad_to_max_length`).
A step is zero_grad, forward + loss, backward, global-norm clipping to 1.0 and the optimizer step; dropout 0.1 as
in fine-tuning. Steps alternate the implementations (bertkit, hf_dynamic, hf_padded, bertkit, ...) so a busy
machine slows each alike; the median step counts. For SST-2, "eval" rows time the dev set's forward passes:
bertkit's `classify.predict_logits` (sorted by length, batches cut) against HF on batches cut to their longest
example in file order, and padded.

One JSON line per result, with the CPU model (/proc/cpuinfo) and the ratio to HF measured in the same run. On a
machine other processes keep busy, give `--threads 1`: OpenMP threads that wait for a descheduled sibling made a
MiniLM SST-2 step 12x slower with 2 threads than with 1 at load 7 on 2 cores (every implementation alike).

    python benchmarks/bench_finetune.py                        # MiniLM-sized (L6 H384), both tasks, fp32 + bf16
    python benchmarks/bench_finetune.py --model base --steps 6 --tasks squad --precisions bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from bertkit.checkpoint.convert import to_hf
from bertkit.model.bert import BertForQuestionAnswering, BertForSequenceClassification
from bertkit.model.config import BertConfig
from bertkit.runtime import dist
from bertkit.runtime.precision import autocast
from bertkit.tasks.glue.data import Features, convert_examples_to_features, get_task, read_examples
from bertkit.tasks.glue.task import classification_loss, predict_logits
from bertkit.tasks.squad.data import convert_examples_to_features as squad_features
from bertkit.tasks.squad.data import read_squad_examples, squad_tokenizer
from bertkit.tasks.squad.task import squad_loss
from bertkit.train.optim import build_optimizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = {
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
IMPLS = ("bertkit", "bertkit_unpad", "hf_dynamic", "hf_padded")  # bertkit: the padded reference path


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def squad_arrays(data: Path) -> dict[str, np.ndarray]:
    """Training windows of train-v1.1-University_of_Notre_Dame.json: (F, 384) inputs, (F,) answer positions."""
    tok = squad_tokenizer(data / "vocab" / "bert-base-uncased-vocab.txt")
    examples, _ = read_squad_examples(data / "squad" / "train-v1.1-University_of_Notre_Dame.json", is_training=True)
    f = squad_features(examples, tok, 384, 128, 64, is_training=True)
    return {
        "input_ids": f.input_ids,
        "input_mask": f.input_mask,
        "segment_ids": f.segment_ids,
        "start_positions": f.start_position,
        "end_positions": f.end_position,
    }


def sst2(data: Path, split: str) -> Features:
    task = get_task("sst2")
    tok = squad_tokenizer(data / "vocab" / "bert-base-uncased-vocab.txt")
    return convert_examples_to_features(read_examples(task, data / "glue" / "SST-2", split), task, 128, tok)


def batches(arrays: dict[str, np.ndarray], batch: int, steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n = len(arrays["input_ids"])
    picks = [rng.choice(n, batch, replace=False) for _ in range(steps)]
    return [{k: a[idx] for k, a in arrays.items()} for idx in picks]


def tensors(b: dict[str, np.ndarray], cut: bool) -> dict[str, torch.Tensor]:
    """int64 tensors; sequence features cut to the batch's longest sequence when `cut`."""
    L = int(b["input_mask"].astype(bool).sum(1).max()) if cut else b["input_ids"].shape[1]
    return {k: torch.from_numpy((a[:, :L] if a.ndim == 2 else a).astype(np.int64)) for k, a in b.items()}


def models(task: str, size: str):
    cfg = BertConfig(**MODELS[size])  # dropout 0.1, as fine-tuning runs
    torch.manual_seed(0)
    ours = BertForQuestionAnswering(cfg) if task == "squad" else BertForSequenceClassification(cfg, 2)
    hcfg = transformers.BertConfig(**cfg.to_dict(), num_labels=2)
    hcfg._attn_implementation = "sdpa"
    cls = transformers.BertForQuestionAnswering if task == "squad" else transformers.BertForSequenceClassification
    hf = cls(hcfg)
    hf.load_state_dict(to_hf(ours.state_dict(), cfg.num_hidden_layers), strict=True)
    return ours.train(), hf.train()


def bench_steps(task: str, arrays, args, precision: str) -> list[dict]:
    ours, hf = models(task, args.model)
    opts = {
        "bertkit": build_optimizer("adamw", ours, 3e-5, 0.01),
        "hf": torch.optim.AdamW(hf.parameters(), lr=3e-5, weight_decay=0.01),
    }
    loss_fn = squad_loss if task == "squad" else classification_loss
    cpu = torch.device("cpu")

    def step(impl: str, b: dict[str, np.ndarray]) -> float:
        model, opt = (ours, opts["bertkit"]) if impl.startswith("bertkit") else (hf, opts["hf"])
        ours.bert.unpad = impl == "bertkit_unpad"  # --unpad True: real tokens only (bertkit.model.padding)
        t = tensors(b, cut=impl != "hf_padded")
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(precision, cpu):
            if impl.startswith("bertkit"):
                loss, _ = loss_fn(model, t)
            elif task == "squad":
                loss = model(input_ids=t["input_ids"], attention_mask=t["input_mask"], token_type_ids=t["segment_ids"],
                             start_positions=t["start_positions"], end_positions=t["end_positions"]).loss  # fmt: skip
            else:
                loss = model(input_ids=t["input_ids"], attention_mask=t["input_mask"], token_type_ids=t["segment_ids"],
                             labels=t["label_ids"]).loss  # fmt: skip
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        return time.perf_counter() - t0

    bs = batches(arrays, args.batch_size, args.warmup + args.steps)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for k, b in enumerate(bs):
        for impl in IMPLS:
            s = step(impl, b)
            if k >= args.warmup:
                times[impl].append(s)
    seq = 384 if task == "squad" else 128
    mean_len = float(np.mean([b["input_mask"].astype(bool).sum(1).mean() for b in bs]))
    mean_cut = float(np.mean([b["input_mask"].astype(bool).sum(1).max() for b in bs]))
    med = {impl: statistics.median(v) for impl, v in times.items()}
    return [
        {
            "bench": "finetune_step",
            "task": task,
            "impl": impl,
            "model": args.model,
            "precision": precision,
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "batch": args.batch_size,
            "max_seq_length": seq,
            "mean_tokens": round(mean_len, 1),
            "mean_batch_length": round(mean_cut, 1) if impl != "hf_padded" else seq,
            "steps": args.steps,
            "step_s": round(med[impl], 4),
            "sequences_per_s": round(args.batch_size / med[impl], 2),
            "speedup_vs_hf_dynamic": round(med["hf_dynamic"] / med[impl], 2),
            "speedup_vs_hf_padded": round(med["hf_padded"] / med[impl], 2),
        }
        for impl in IMPLS
    ]


@torch.no_grad()
def bench_eval(feats: Features, args, precision: str) -> list[dict]:
    """SST-2 dev forward passes: bertkit's predict_logits against HF, cut and padded."""
    ours, hf = models("sst2", args.model)
    ours.eval(), hf.eval()
    env, cpu, B = dist.DistEnv(device=torch.device("cpu")), torch.device("cpu"), args.eval_batch_size
    n = len(feats)

    def run(impl: str) -> np.ndarray:
        if impl.startswith("bertkit"):  # bertkit: the padded path; bertkit_unpad: prediction's default
            ours.bert.unpad = impl == "bertkit_unpad"
            return predict_logits(ours, feats, B, env, precision)
        out = []
        for i in range(0, n, B):
            b = {k: getattr(feats, k)[i : i + B] for k in ("input_ids", "input_mask", "segment_ids")}
            t = tensors(b, cut=impl == "hf_dynamic")
            with autocast(precision, cpu):
                out.append(hf(input_ids=t["input_ids"], attention_mask=t["input_mask"],
                              token_type_ids=t["segment_ids"]).logits.float().numpy())  # fmt: skip
        return np.concatenate(out)

    best, logits = dict.fromkeys(IMPLS, float("inf")), {}
    for _ in range(args.eval_rounds):
        for impl in IMPLS:
            t0 = time.perf_counter()
            logits[impl] = run(impl)
            best[impl] = min(best[impl], time.perf_counter() - t0)
    return [
        {
            "bench": "finetune_eval",
            "task": "sst2",
            "impl": impl,
            "model": args.model,
            "precision": precision,
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "batch": B,
            "examples": n,
            "seconds": round(best[impl], 3),
            "examples_per_s": round(n / best[impl], 1),
            "speedup_vs_hf_dynamic": round(best["hf_dynamic"] / best[impl], 2),
            "speedup_vs_hf_padded": round(best["hf_padded"] / best[impl], 2),
            "max_abs_logit_diff_vs_hf_padded": float(np.abs(logits[impl] - logits["hf_padded"]).max()),
        }
        for impl in IMPLS
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (squad/, glue/, vocab/)")
    p.add_argument("--model", choices=list(MODELS), default="minilm", help="random model of this size")
    p.add_argument("--tasks", default="squad,sst2", help="comma-separated: squad, sst2")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--batch_size", type=int, default=8, help="sequences per training step")
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--eval_batch_size", type=int, default=64, help="SST-2 dev batch")
    p.add_argument("--eval_rounds", type=int, default=2, help="timed rounds of the dev set (best counts)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tasks, precisions = args.tasks.split(","), args.precisions.split(",")
    if "squad" in tasks:
        arrays = squad_arrays(args.data)
        for precision in precisions:
            for row in bench_steps("squad", arrays, args, precision):
                print(json.dumps(row), flush=True)
    if "sst2" in tasks:
        train, dev = sst2(args.data, "train"), sst2(args.data, "dev")
        arrays = {k: getattr(train, k) for k in ("input_ids", "input_mask", "segment_ids", "label_ids")}
        for precision in precisions:
            for row in bench_steps("sst2", arrays, args, precision):
                print(json.dumps(row), flush=True)
            for row in bench_eval(dev, args, precision):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
