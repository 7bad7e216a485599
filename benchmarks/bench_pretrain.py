"""The whole pretraining iteration (data + step + logging) against the model-only step, and what it achieves.

One JSON line per result:
- "overhead": `bertkit.train.loop.fit` on a shard directory (the real loader, logging every step) against the bare
  step on a fixed batch, same model and precision, in one run: the loop should lose < 3%.
- "mfu": BERT-base (batch 32, seq 128) model FLOPs utilisation, FLOPs as bertkit computes them (sparse last layer),
  forward + backward timed apart from the optimizer step, against this machine's fp32 and bf16 GEMM peaks measured
  in the same run (the best of square and BERT-shaped products).
- "compile": torch.compile (inductor) against eager on the same fixed batch, for each precision of --precisions, in
  two modes: "model" (`--compile`: the whole model one graph) and "layers" (each encoder layer compiled on its
  own, `nn.Module.compile`: the layers share one compiled graph, so compile time does not grow with depth): the
  compile time (the first compiled step less an eager step) apart from the steady step time, the speed-up, and
  the steps after which compiling has paid for itself; the loss of the first step compared.
- "unpad": a small BERT's training step (batch 32, seq 128, fp32) on real records, the padded path against
  `--unpad True` (`bertkit.model.padding`), steps alternating: records made by `create-pretraining-data` (Google's
  algorithm) from WikiText-2 in ../shared/data, else from the demo's Wikipedia sample; their mean length is reported.
- "bf16_curve": a tiny BERT trained 300 iterations in fp32 and in bf16 autocast on the same data: the mean loss
  of the last 20 iterations, and their relative difference (target < 1%); beside it the curve's own noise floor,
  fp32 again from the same init with other dropout masks.

    python benchmarks/bench_pretrain.py                        # all
    python benchmarks/bench_pretrain.py --only overhead --config small
(Hugging Face side-by-side throughput is benchmarks/bench_model.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bertkit.model.bert import BertForPreTraining
from bertkit.model.config import BertConfig
from bertkit.runtime.dist import DistEnv
from bertkit.runtime.precision import autocast
from bertkit.tasks.pretrain.task import SyntheticData, pretrain_step_loss, random_batch
from bertkit.train.config import TrainConfig
from bertkit.train.loop import Task, fit

CONFIGS = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, batch=32),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, batch=32),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, batch=8),
}
SEQ, MAX_PRED = 128, 20


def bert_cfg(name: str) -> tuple[BertConfig, int]:
    spec = dict(CONFIGS[name])
    batch = spec.pop("batch")
    return BertConfig(intermediate_size=4 * spec["hidden_size"], **spec), batch


def write_shards(d: Path, n: int, vocab: int) -> Path:
    """n synthetic samples as a shard directory (the loader's fastest format)."""
    from bertkit.data.loader import convert_data
    from bertkit.data.records import write_tfrecord

    b = random_batch(n, SEQ, MAX_PRED, vocab, generator=torch.Generator().manual_seed(0))
    recs = [{k: v[i].reshape(-1).numpy() for k, v in b.items()} for i in range(n)]
    write_tfrecord(d / "data.tfrecord", recs)
    convert_data([str(d / "data.tfrecord")], d / "shards", seq_length=SEQ, max_predictions_per_seq=MAX_PRED)
    return d / "shards"


def bare_steps(model, batch, precision: str, steps: int, warmup: int) -> float:
    """Sequences/s of forward + backward + optimizer step on one fixed batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            loss, _ = pretrain_step_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch["input_ids"].shape[0] / (time.perf_counter() - t0)


def overhead(name: str, precision: str, steps: int) -> dict:
    from bertkit.data.loader import PretrainingLoader

    cfg, batch = bert_cfg(name)
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp), 512, cfg.vocab_size)
        torch.manual_seed(0)
        model = BertForPreTraining(cfg)
        b = random_batch(batch, SEQ, MAX_PRED, cfg.vocab_size, generator=torch.Generator().manual_seed(1))
        bare = bare_steps(model, b, precision, steps, warmup=3)
        loader = PretrainingLoader(shards, batch, SEQ, MAX_PRED)
        tc = TrainConfig.from_flags(batch_size_per_device=batch, iter_num=steps + 3, warmup_batches=1, learning_rate=1e-5,
                         optimizer="adamw", precision=precision, log_every_n_iter=1, loss_print_every_n_iter=1,
                         model_save_every_n_iter=10**9, log_dir=str(Path(tmp) / "log"),
                         model_save_dir=str(Path(tmp) / "save"))  # fmt: skip
        t0 = None
        marks = []

        def note(s: str) -> None:  # time from the end of the 3 warm-up iterations, as the bare loop does
            marks.append((time.perf_counter(), s))

        summary = fit(model, cfg, Task(pretrain_step_loss, loader), tc, DistEnv(), print_fn=note)
        iters = [t for t, s in marks if s.startswith("iter ")]
        t0, t1 = iters[2], iters[-1]
        full = (len(iters) - 3) * batch / (t1 - t0)
        del summary
    return {"bench": "overhead", "config": name, "precision": precision, "bare_seq_per_s": round(bare, 2),
            "fit_seq_per_s": round(full, 2), "loop_overhead_pct": round(100 * (1 - full / bare), 2)}  # fmt: skip


GEMM_SHAPES = ((2048, 2048, 2048), (4096, 768, 3072), (4096, 3072, 768), (4096, 768, 768), (1024, 1024, 1024))


def gemm_peak(dtype: torch.dtype, reps: int = 3) -> tuple[float, str]:
    """This machine's GEMM peak for `dtype`: the best FLOP/s over square and BERT-base-shaped products (M, K, N)
    (batch 32 x seq 128 = 4096 tokens through H 768 <-> I 3072), each the best of `reps`. Returns (FLOP/s, shape)."""
    best, where = 0.0, ""
    for m, k, n in GEMM_SHAPES:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        a @ b
        rate = 2 * m * k * n / min(_timed(lambda: a @ b) for _ in range(reps))  # noqa: B023 (used at once)
        if rate > best:
            best, where = rate, f"{m}x{k}x{n}"
    return best, where


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def train_flops_per_seq(cfg: BertConfig) -> float:
    """Matmul FLOPs bertkit computes for one training sequence (backward = 2x forward): the encoder's GEMMs and
    attention over all T tokens in layers 1..L-1; in the last layer keys and values for all T tokens but queries,
    output projection and MLP only for the Q = 1 + P tokens the heads read ([CLS] and the masked positions); the
    sparse MLM head at P positions, the pooler and NSP. Elementwise work (GELU, LayerNorm, softmax, dropout) is
    not counted, as MFU conventionally does not."""
    H, L, F, V, T, P = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size, SEQ, MAX_PRED
    Q = 1 + P
    layer = T * 2 * (4 * H * H + 2 * H * F) + 2 * 2 * T * T * H  # qkv, proj, fc1, fc2; scores and weighted sum
    last = T * 2 * (2 * H * H) + Q * 2 * (2 * H * H + 2 * H * F) + 2 * 2 * Q * T * H
    head = P * 2 * (H * H + H * V) + 2 * H * H + 2 * H * 2  # MLM transform + tied decoder; pooler; NSP
    return 3 * ((L - 1) * layer + last + head)


def mfu(steps: int, precisions: list[str], batch: int = 32) -> list[dict]:
    """BERT-base, seq 128, batch 32: forward + backward timed apart from the optimizer step (fused AdamW), each
    the median of `steps` after 2 warm-up steps; MFU = computed FLOPs / time / the GEMM peak of the same run."""
    import statistics

    cfg, _ = bert_cfg("base")
    out = []
    peaks = {p: gemm_peak(torch.float32 if p == "fp32" else torch.bfloat16) for p in precisions}
    flops = train_flops_per_seq(cfg) * batch
    for precision in precisions:
        torch.manual_seed(0)
        model = BertForPreTraining(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        b = random_batch(batch, SEQ, MAX_PRED, cfg.vocab_size, generator=torch.Generator().manual_seed(1))
        fb, st = [], []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            with autocast(precision, torch.device("cpu")):
                loss, _ = pretrain_step_loss(model, b)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            if i >= 2:
                fb.append(t1 - t0)
                st.append(t2 - t1)
        f, o = statistics.median(fb), statistics.median(st)
        peak, shape = peaks[precision]
        out.append({"bench": "mfu", "config": "base", "precision": precision, "batch": batch, "seq": SEQ,
                    "threads": torch.get_num_threads(), "cpu": cpu_model(), "fwd_bwd_s": round(f, 3),
                    "optimizer_s": round(o, 3), "seq_per_s": round(batch / (f + o), 3),
                    "gflops_per_step": round(flops / 1e9, 1), "achieved_gflops_fwd_bwd": round(flops / f / 1e9, 1),
                    "gemm_peak_gflops": round(peak / 1e9, 1), "gemm_peak_shape": shape,
                    "mfu_fwd_bwd_pct": round(100 * flops / f / peak, 1),
                    "mfu_with_optimizer_pct": round(100 * flops / (f + o) / peak, 1)})  # fmt: skip
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def compile_gain(name: str, precision: str, steps: int, mode: str = "model") -> dict:
    """Eager vs compiled pretraining steps (forward + backward + fused AdamW) on one fixed batch; mode "model":
    torch.compile(model), "layers": each EncoderLayer compiled in place.

    Steps alternate eager and compiled after both are warm, so a busy machine slows each alike; medians count."""
    import statistics

    cfg, batch = bert_cfg(name)
    b = random_batch(batch, SEQ, MAX_PRED, cfg.vocab_size, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    eager = BertForPreTraining(cfg)
    compiled_raw = BertForPreTraining(cfg)
    compiled_raw.load_state_dict(eager.state_dict())
    if mode == "model":
        compiled = torch.compile(compiled_raw)
    else:
        for layer in compiled_raw.bert.layers:
            layer.compile()
        compiled = compiled_raw
    opts = {id(m): torch.optim.AdamW(r.parameters(), lr=1e-5, fused=True)
            for m, r in ((eager, eager), (compiled, compiled_raw))}  # fmt: skip

    def step(model) -> tuple[float, float]:
        t0 = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            loss, _ = pretrain_step_loss(model, b)
        opts[id(model)].zero_grad(set_to_none=True)
        loss.backward()
        opts[id(model)].step()
        return time.perf_counter() - t0, float(loss)

    torch.manual_seed(2)
    first_eager, loss_eager = step(eager)
    torch.manual_seed(2)
    first_compiled, loss_compiled = step(compiled)  # traces, compiles forward and backward, runs
    step(eager), step(compiled)  # warm both
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(steps):
        times["eager"].append(step(eager)[0])
        times["compiled"].append(step(compiled)[0])
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    compile_s = first_compiled - e
    return {"bench": "compile", "mode": mode, "config": name, "precision": precision, "batch": batch, "seq": SEQ,
            "threads": torch.get_num_threads(), "compile_s": round(compile_s, 1), "eager_step_s": round(e, 4),
            "compiled_step_s": round(c, 4), "speedup": round(e / c, 3),
            "break_even_steps": round(compile_s / (e - c)) if e > c else None,
            "first_step_loss_eager": round(loss_eager, 5), "first_step_loss_compiled": round(loss_compiled, 5)}  # fmt: skip


def unpad_gain(steps: int) -> dict:
    import statistics

    from bertkit.cli import invoke
    from bertkit.data.records import pretraining_features, read_arrays

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wikitext2-valid-test.txt"
    text = shared if shared.exists() else Path(__file__).resolve().parents[1] / "src/bertkit/data/demo/wiki_sample.txt"
    cfg, batch = bert_cfg("small")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data.tfrecord"
        invoke(["create-pretraining-data", "--input_file", str(text), "--output_file", str(out), "--max_seq_length",
                str(SEQ), "--max_predictions_per_seq", str(MAX_PRED), "--dupe_factor", "1"])  # fmt: skip
        arrays = next(read_arrays(out, pretraining_features(SEQ, MAX_PRED)))
    n = min(len(arrays["input_ids"]) // batch, steps + 2)
    lengths = arrays["input_mask"][: n * batch].sum(1)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(n):
        b = {k: torch.from_numpy(v[i * batch : (i + 1) * batch]) for k, v in arrays.items()}
        b = {k: v.float() if k == "masked_lm_weights" else v.long() for k, v in b.items()}
        b["next_sentence_labels"] = b["next_sentence_labels"].reshape(-1)
        for fast in (False, True):
            model.bert.unpad = fast
            t0 = time.perf_counter()
            loss, _ = pretrain_step_loss(model, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 2:
                times[fast].append(time.perf_counter() - t0)
    p, u = statistics.median(times[False]), statistics.median(times[True])
    return {"bench": "unpad", "config": "small", "batch": batch, "seq": SEQ, "data": text.name,
            "mean_tokens": round(float(lengths.mean()), 1), "full_share": round(float((lengths == SEQ).mean()), 3),
            "threads": torch.get_num_threads(), "padded_step_s": round(p, 3), "unpadded_step_s": round(u, 3),
            "speedup": round(p / u, 3)}  # fmt: skip


def bf16_curve(iters: int) -> dict:
    cfg, _ = bert_cfg("tiny")
    cfg = BertConfig(**dict(cfg.to_dict(), vocab_size=2000))
    means = {}
    with tempfile.TemporaryDirectory() as tmp:
        # (run, precision, dropout seed): the third run is fp32 from the same init with other dropout masks, the
        # curve's own noise floor
        for run, precision, dropout_seed in (("fp32", "fp32", None), ("bf16", "bf16", None),
                                             ("fp32_other_dropout", "fp32", 1)):  # fmt: skip
            torch.manual_seed(0)
            model = BertForPreTraining(cfg)
            if dropout_seed is not None:
                torch.manual_seed(dropout_seed)
            data = SyntheticData(16, SEQ, MAX_PRED, cfg.vocab_size, seed=5, num_batches=8)
            tc = TrainConfig.from_flags(batch_size_per_device=16, iter_num=iters, warmup_batches=30, learning_rate=1e-3,
                             precision=precision, log_every_n_iter=1, loss_print_every_n_iter=10**9,
                             model_save_every_n_iter=10**9, log_dir=str(Path(tmp) / run),
                             model_save_dir=str(Path(tmp) / "s"))  # fmt: skip
            history = []
            fit(
                model,
                cfg,
                Task(pretrain_step_loss, data),
                tc,
                DistEnv(),
                print_fn=lambda s: None,
                on_log=history.append,
            )
            losses = [r["total_loss"] for r in history]
            means[run] = (float(np.mean(losses[-20:])), losses[0])
    fp32 = means["fp32"][0]
    return {"bench": "bf16_curve", "iters": iters, "fp32_start": round(means["fp32"][1], 4),
            "fp32_last20_mean": round(fp32, 4), "bf16_last20_mean": round(means["bf16"][0], 4),
            "relative_diff_pct": round(100 * abs(means["bf16"][0] - fp32) / fp32, 3),
            "fp32_other_dropout_last20_mean": round(means["fp32_other_dropout"][0], 4),
            "noise_floor_pct": round(100 * abs(means["fp32_other_dropout"][0] - fp32) / fp32, 3)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["overhead", "mfu", "compile", "unpad", "bf16_curve"], help="run one part")
    p.add_argument("--config", default="small", choices=list(CONFIGS), help="config for the overhead and compile parts")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--iters", type=int, default=300, help="iterations of the bf16-vs-fp32 curve")
    p.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="for mfu and compile: comma-separated fp32, bf16 (bf16 needs a CPU "
        "with AVX512-BF16/AMX: a Zen 3 EPYC runs bf16 GEMMs at ~1/8 of fp32)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.only in (None, "overhead"):
        for precision in ("fp32", "bf16"):
            print(json.dumps(overhead(args.config, precision, args.steps)), flush=True)
    if args.only in (None, "mfu"):
        for r in mfu(max(3, args.steps // 4), args.precisions.split(",")):
            print(json.dumps(r), flush=True)
    if args.only in (None, "compile"):
        for precision in args.precisions.split(","):
            for mode in ("model", "layers"):
                print(json.dumps(compile_gain(args.config, precision, max(3, args.steps // 2), mode)), flush=True)
    if args.only in (None, "unpad"):
        print(json.dumps(unpad_gain(max(3, args.steps // 2))), flush=True)
    if args.only in (None, "bf16_curve"):
        print(json.dumps(bf16_curve(args.iters)), flush=True)


if __name__ == "__main__":
    main()
