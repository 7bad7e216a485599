"""SQuAD speed: building windows (features) on one core, and answering dev windows, bertkit against Hugging Face.

1. Windows: `convert_examples_to_features` (Google's algorithm, max_seq_length 384, doc_stride 128) on
   train-v1.1-first44.json (11,877 questions) in a child process pinned to one core (and one Rust thread), timed
   from reading the json to the last window; the rate is extrapolated to the 87,599 questions of train-v1.1.
2. Prediction: a random BERT (MiniLM-sized L6/H384 by default, or base) on a seeded sample of dev-v1.1 windows,
   - hf:              transformers' BertForQuestionAnswering (sdpa), windows in file order, padded to 384;
   - bertkit_padded:  bertkit's model on the same padded batches (the model alone);
   - bertkit_sorted:  `squad_predict.predict_logits` on the padded path (`Bert.unpad = False`): windows sorted by
                      length, each batch cut to its longest window;
   - bertkit:         the same with prediction's default fast path (`bertkit.model.padding`: real tokens only, each window
                      attending over its own tokens).
   All start from the same weights (bertkit's, converted to HF names) and use the same threads and batch size;
   rounds alternate the implementations and the best round counts. The logits of real tokens are compared.

One JSON line per result:

    python benchmarks/bench_squad.py                       # ../shared/data; MiniLM-sized; 128 windows
    python benchmarks/bench_squad.py --model base --windows 128 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = {
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
TRAIN_V11_QUESTIONS = 87599


def bench_windows(data: Path) -> dict:
    """Runs in a child pinned to one core: read + build the training windows of train-v1.1-first44.json."""
    from bertkit.tasks.squad.data import convert_examples_to_features, read_squad_examples, squad_tokenizer

    tok = squad_tokenizer(data / "vocab" / "bert-base-uncased-vocab.txt")
    path = data / "squad" / "train-v1.1-first44.json"
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        examples, _ = read_squad_examples(path, is_training=True)
        features = convert_examples_to_features(examples, tok, 384, 128, 64, is_training=True)
        seconds = time.perf_counter() - t0
        best = seconds if best is None else min(best, seconds)
    return {
        "bench": "squad_windows",
        "file": path.name,
        "questions": len(examples),
        "windows": len(features),
        "cores": len(os.sched_getaffinity(0)),
        "seconds": round(best, 3),
        "questions_per_s": round(len(examples) / best),
        "windows_per_s": round(len(features) / best),
        "train_v1.1_seconds_extrapolated": round(TRAIN_V11_QUESTIONS * best / len(examples), 1),
    }


def bench_predict(args) -> list[dict]:
    import numpy as np
    import torch
    import transformers

    from bertkit.checkpoint.convert import to_hf
    from bertkit.model.bert import BertForQuestionAnswering
    from bertkit.model.config import BertConfig
    from bertkit.runtime import dist
    from bertkit.runtime.precision import autocast
    from bertkit.tasks.squad.data import convert_examples_to_features, read_squad_examples, squad_tokenizer
    from bertkit.tasks.squad.predict import predict_logits

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tok = squad_tokenizer(args.data / "vocab" / "bert-base-uncased-vocab.txt")
    examples, _ = read_squad_examples(args.data / "squad" / "dev-v1.1.json", is_training=False)
    f = convert_examples_to_features(examples, tok, 384, 128, 64)
    pick = np.sort(np.random.default_rng(0).choice(len(f), size=min(args.windows, len(f)), replace=False))
    ids, mask, types = f.input_ids[pick], f.input_mask[pick], f.segment_ids[pick]

    cfg = BertConfig(**MODELS[args.model], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    ours = BertForQuestionAnswering(cfg).to(device).eval()
    hcfg = transformers.BertConfig(**cfg.to_dict())
    hcfg._attn_implementation = "sdpa"
    hf = transformers.BertForQuestionAnswering(hcfg)
    hf.load_state_dict(to_hf(ours.state_dict(), cfg.num_hidden_layers), strict=True)
    hf.to(device).eval()
    env = dist.DistEnv(device=device)
    B = args.batch_size
    padded = [
        {k: torch.from_numpy(a[i : i + B].astype(np.int64)).to(device) for k, a in (("ids", ids), ("mask", mask), ("types", types))}
        for i in range(0, len(pick), B)
    ]  # fmt: skip

    @torch.no_grad()
    def run(impl: str, batches: int | None = None) -> np.ndarray:
        ours.bert.unpad = None if impl == "bertkit" else False  # None: unpadded without gradients (the default)
        if impl in ("bertkit", "bertkit_sorted"):
            n = len(ids) if batches is None else batches * B
            return predict_logits(ours, ids[:n], mask[:n], types[:n], B, env, args.precision)[0]
        out = []
        for b in padded[:batches]:
            with autocast(args.precision, device):
                if impl == "hf":
                    start = hf(input_ids=b["ids"], attention_mask=b["mask"], token_type_ids=b["types"]).start_logits
                else:
                    start, _ = ours(b["ids"], b["types"], b["mask"])
            out.append(start.float().cpu().numpy())
        return np.concatenate(out)

    impls = ("hf", "bertkit_padded", "bertkit_sorted", "bertkit")
    best = dict.fromkeys(impls, float("inf"))
    logits = {}
    for impl in impls:  # warm-up: kernels, allocator
        run(impl, batches=1)
    for _ in range(args.rounds):
        for impl in impls:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits[impl] = run(impl)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[impl] = min(best[impl], time.perf_counter() - t0)
    real = mask.astype(bool)
    lengths = real.sum(1)
    results = []
    for impl in impls:
        results.append({
            "bench": "squad_predict", "impl": impl, "model": args.model, "precision": args.precision,
            "device": str(device), "threads": args.threads, "windows": len(pick), "batch": B,
            "mean_window_tokens": round(float(lengths.mean()), 1), "seconds": round(best[impl], 3),
            "sequences_per_s": round(len(pick) / best[impl], 1), "speedup_vs_hf": round(best["hf"] / best[impl], 2),
            "max_abs_diff_vs_hf": float(np.abs(logits[impl][real] - logits["hf"][real]).max()),
        })  # fmt: skip
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (squad/, vocab/)")
    p.add_argument("--model", choices=list(MODELS), default="minilm", help="random model of this size")
    p.add_argument("--windows", type=int, default=128, help="dev-v1.1 windows sampled for prediction")
    p.add_argument("--batch_size", type=int, default=32, help="windows per prediction batch")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per implementation (the best counts)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="autocast dtype for every impl")
    p.add_argument("--skip", choices=["windows", "predict"], default=None, help="leave out one of the two benches")
    p.add_argument("--windows-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.windows_child:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(json.dumps(bench_windows(args.data)))
        return
    if args.skip != "windows":
        env = os.environ | {"RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, "--windows-child", "--data", str(args.data)]
        print(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip(), flush=True)
    if args.skip != "predict":
        for line in bench_predict(args):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
