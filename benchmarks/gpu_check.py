"""What must hold on a GPU, in one short run (under 4 minutes on one GPU; no ../shared, only packaged data).

One JSON line per check, then a summary line; exit status 1 when a check fails.

1. cuda_vs_cpu    a tiny BERT's pretraining outputs on CUDA (TF32 off) equal the CPU's (< 1e-4)
2. pretrain_bf16  50 steps of `fit` under bf16 autocast: finite losses, the loss falls
3. pretrain_fp16  50 steps under fp16 autocast with GradScaler: finite losses, the scale is used
4. speed_base     BERT-base, seq 128: sequences/s of a bf16 training step and its MFU against a measured bf16 GEMM
                  peak, and Hugging Face's BertForPreTraining (when transformers is installed) on the same GPU
5. ddp_2gpu       `bertkit pretrain --gpu_num_per_node 2` for 6 steps on records made from the demo text (2+ GPUs)
6. squad_predict  `bertkit squad-predict` of the packaged held-out SQuAD article with a random tiny model on CUDA
7. unpad          the unpadded fast path (`bertkit.model.padding`) on CUDA: a tiny SQuAD model's logits and gradients
                  equal the padded path's (TF32 off, dropout 0; < 1e-4), and the time of one step of each

    python benchmarks/gpu_check.py            # on a GPU machine (benchmarks/gpu_check.sh installs what is missing)
    python benchmarks/gpu_check.py --cpu      # the same checks, tiny, on the CPU: does the script itself run?
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bertkit.model.bert import BertForPreTraining
from bertkit.model.config import BertConfig
from bertkit.runtime.dist import DistEnv
from bertkit.runtime.precision import autocast
from bertkit.tasks.pretrain.task import SyntheticData, masked_count, pretrain_step_loss, pretraining_loss, random_batch
from bertkit.train.config import TrainConfig
from bertkit.train.loop import Task, fit

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "bertkit" / "data" / "demo"
TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
            max_position_embeddings=128)  # fmt: skip


def cuda_vs_cpu(dev: torch.device) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY)).eval()
    b = random_batch(8, 64, 10, TINY["vocab_size"], generator=torch.Generator().manual_seed(1))
    b["input_mask"][:, 50:] = 0
    args = lambda d: (b["input_ids"].to(d), b["segment_ids"].to(d), b["input_mask"].to(d),  # noqa: E731
                      b["masked_lm_positions"].to(d))  # fmt: skip
    with torch.no_grad():
        cpu = model(*args("cpu"))
        gpu = model.to(dev)(*args(dev))
    diff = max((c - g.cpu()).abs().max().item() for c, g in zip(cpu, gpu, strict=True))
    return {"max_abs_diff": diff, "ok": diff < 1e-4}


def unpad(dev: torch.device) -> dict:
    from bertkit.model.bert import BertForQuestionAnswering

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cfg = BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForQuestionAnswering(cfg).to(dev).train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY["vocab_size"], (16, 128), generator=g).to(dev)
    lengths = torch.randint(20, 129, (16,), generator=g)
    mask = (torch.arange(128)[None] < lengths[:, None]).long().to(dev)
    types = torch.zeros_like(ids)
    out, secs = {}, {}
    for fast in (False, True):
        model.bert.unpad = fast
        model.zero_grad()
        sync(dev)
        t0 = time.perf_counter()
        start, end = model(ids, types, mask)
        keep = mask.bool()
        (start[keep].sum() + end[keep].sum()).backward()
        sync(dev)
        secs[fast] = time.perf_counter() - t0
        out[fast] = [start[keep].detach(), end[keep].detach()] + [p.grad.detach().clone() for p in model.parameters()]
    diff = max((a - b).abs().max().item() for a, b in zip(out[False], out[True], strict=True))
    return {"max_abs_diff": diff, "padded_step_s": round(secs[False], 4), "unpadded_step_s": round(secs[True], 4),
            "ok": diff < 1e-4}  # fmt: skip


def pretrain_run(dev: torch.device, precision: str, steps: int) -> dict:
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY)).to(dev)
    data = SyntheticData(16, 64, 10, TINY["vocab_size"], seed=3, num_batches=4)
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig.from_flags(learning_rate=1e-3, batch_size_per_device=16, iter_num=steps, warmup_batches=5,
                         loss_print_every_n_iter=10, model_save_dir=f"{tmp}/save", log_dir=f"{tmp}/log",
                         precision=precision, optimizer="adamw")  # fmt: skip
        records = []
        fit(model, BertConfig(**TINY), Task(pretrain_step_loss, data, masked_count), tc, DistEnv(device=dev),
            print_fn=lambda s: None, on_log=records.append)  # fmt: skip
    losses = [r["total_loss"] for r in records]
    finite = all(math.isfinite(x) for x in losses)
    out = {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1], "finite": finite,
           "ok": finite and losses[-1] < losses[0]}  # fmt: skip
    if "loss_scale" in records[-1]:
        out |= {"loss_scale": records[-1]["loss_scale"], "skipped_steps": records[-1]["skipped_steps"]}
    return out


def step_speed(model, batch, precision: str, dev: torch.device, steps: int, hf: bool = False) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.type == "cuda")
    for i in range(steps + 3):
        if i == 3:
            sync(dev)
            t0 = time.perf_counter()
        with autocast(precision, dev):
            if hf:
                loss = model(input_ids=batch["input_ids"], token_type_ids=batch["segment_ids"],
                             attention_mask=batch["input_mask"], labels=batch["labels"],
                             next_sentence_label=batch["next_sentence_labels"]).loss  # fmt: skip
            else:
                mlm, nsp = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                                 batch["masked_lm_positions"])  # fmt: skip
                loss = pretraining_loss(mlm, nsp, batch["masked_lm_ids"], batch["masked_lm_weights"],
                                        batch["next_sentence_labels"])[0]  # fmt: skip
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(dev)
    return batch["input_ids"].shape[0] * steps / (time.perf_counter() - t0)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def speed_base(dev: torch.device, small: bool) -> dict:
    spec = dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
    batch_size, steps = 64, 10
    if small:
        spec, batch_size, steps = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
                                       intermediate_size=512), 8, 2  # fmt: skip
    cfg = BertConfig(**spec)
    T, P = 128, 20
    b = random_batch(batch_size, T, P, cfg.vocab_size, generator=torch.Generator().manual_seed(1))
    labels = torch.full((batch_size, T), -100)
    labels.scatter_(1, b["masked_lm_positions"], b["masked_lm_ids"])
    b["labels"] = labels
    b = {k: v.to(dev) for k, v in b.items()}
    torch.manual_seed(0)
    ours = BertForPreTraining(cfg).to(dev)
    seq_s = step_speed(ours, b, "bf16", dev, steps)
    n = 8192 if not small else 256
    x, y = torch.randn(n, n, device=dev, dtype=torch.bfloat16), torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    x @ y
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(5):
        x @ y
    sync(dev)
    peak = 5 * 2 * n**3 / (time.perf_counter() - t0)
    H, L, F, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    flops = 3 * (L * 2 * (4 * H * H + 2 * H * F) * T + L * 4 * T * T * H + P * 2 * (H * H + H * V) + 2 * H * H)
    out = {"config": "base" if not small else "tiny", "batch": batch_size, "seq": T, "bf16_seq_per_s": round(seq_s, 1),
           "bf16_gemm_peak_tflops": round(peak / 1e12, 1), "mfu_pct": round(100 * seq_s * flops / peak, 1)}  # fmt: skip
    try:
        import transformers

        from bertkit.checkpoint.convert import to_hf

        hf_cfg = transformers.BertConfig(**{k: getattr(cfg, k) for k in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size")}, attn_implementation="sdpa")  # fmt: skip
        hf = transformers.BertForPreTraining(hf_cfg).to(dev)
        hf.load_state_dict(to_hf(ours.state_dict(), cfg.num_hidden_layers), strict=False)
        hf_s = step_speed(hf, b, "bf16", dev, steps, hf=True)
        out |= {"hf_bf16_seq_per_s": round(hf_s, 1), "ratio": round(seq_s / hf_s, 2)}
    except ImportError:
        out["hf"] = "transformers not installed: no side-by-side figure"
    out["ok"] = seq_s > 0
    return out


def bertkit(*argv: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertkit", *argv], capture_output=True, text=True, timeout=timeout)


def ddp_2gpu(dev: torch.device, small: bool) -> dict:
    if dev.type == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s)", "ok": True}
    with tempfile.TemporaryDirectory() as tmp:
        made = bertkit("create-pretraining-data", f"--input_file={DEMO / 'wiki_sample.txt'}",
                       f"--output_file={tmp}/data/part-0", "--output_format=ofrecord", "--max_seq_length=64",
                       "--max_predictions_per_seq=10", "--dupe_factor=1")  # fmt: skip
        if made.returncode:
            return {"error": made.stderr[-500:], "ok": False}
        run = bertkit("pretrain", "--gpu_num_per_node=2", f"--data_dir={tmp}/data", "--data_part_num=1",
                      "--seq_length=64", "--max_predictions_per_seq=10", "--num_hidden_layers=2",
                      "--num_attention_heads=2", "--hidden_size_per_head=32", "--batch_size_per_device=8",
                      "--iter_num=6", "--warmup_batches=1", "--loss_print_every_n_iter=3", f"--log_dir={tmp}/log",
                      f"--model_save_dir={tmp}/save", f"--device={dev.type}", "--precision=bf16")  # fmt: skip
        lines = [x for x in run.stdout.splitlines() if x.startswith("iter ")]
        return {
            "returncode": run.returncode,
            "lines": lines,
            "ok": run.returncode == 0 and len(lines) == 2,
            **({"stderr": run.stderr[-800:]} if run.returncode else {}),
        }


def squad_predict(dev: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bert_config.json"
        BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=256).to_json_file(cfg)
        t0 = time.perf_counter()
        run = bertkit("squad", "--do_train=False", "--do_predict", f"--predict_file={DEMO / 'squad_dev.json'}",
                      f"--bert_config_file={cfg}", f"--output_dir={tmp}/out", f"--device={dev.type}",
                      f"--log_dir={tmp}/log", "--max_seq_length=256")  # fmt: skip
        seconds = time.perf_counter() - t0
        scores = [x for x in run.stdout.splitlines() if x.startswith("{")]
        return {"returncode": run.returncode, "scores": scores[-1:] and json.loads(scores[-1]),
                "seconds": round(seconds, 1), "ok": run.returncode == 0 and bool(scores),
                **({"stderr": run.stderr[-800:]} if run.returncode else {})}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="run the checks tiny on the CPU (to test this script)")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA GPU visible; use --cpu to test the script"}))
        return 1
    dev = torch.device("cpu" if args.cpu else "cuda", 0 if not args.cpu else None)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if not args.cpu else "cpu",
           "gpus": torch.cuda.device_count(), "python": sys.version.split()[0]}  # fmt: skip
    print(json.dumps({"check": "environment", **env}), flush=True)
    checks = {
        "cuda_vs_cpu": lambda: cuda_vs_cpu(dev),
        "pretrain_bf16": lambda: pretrain_run(dev, "bf16", 50 if not args.cpu else 10),
        "pretrain_fp16": lambda: pretrain_run(dev, "fp16", 50 if not args.cpu else 10),
        "speed_base": lambda: speed_base(dev, args.cpu),
        "ddp_2gpu": lambda: ddp_2gpu(dev, args.cpu),
        "squad_predict": lambda: squad_predict(dev),
        "unpad": lambda: unpad(dev),
    }
    failed = []
    for name, check in checks.items():
        t0 = time.perf_counter()
        try:
            result = check()
        except Exception as e:  # a broken check is reported, and the others still run
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"check": name, **result}), flush=True)
        if not result["ok"]:
            failed.append(name)
    print(json.dumps({"summary": "all passed" if not failed else f"failed: {', '.join(failed)}"}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
