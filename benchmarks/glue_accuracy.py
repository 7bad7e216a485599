"""GLUE dev accuracy: fine-tune the pretrained all-MiniLM-L6-v2 (classifier head new), bertkit against Hugging Face.

One run per call, printing one JSON line: --task rte|mrpc|cola|sst-2, --side ours|hf|hf_matched, --seed S (torch: the
head's init and every dropout mask; numpy: the order of the training examples, the same on every side). The
hyper-parameters are Google's run_classifier defaults on both sides (seq 128, batch 32, lr 5e-5, 3 epochs, 10%
warmup then linear decay, clip 1.0, dropout 0.1) with AdamW (eps 1e-6, weight decay 0.01 except LayerNorm/bias),
the optimizer a plain Hugging Face loop uses; the full dev set is scored with the task's metrics (`bertkit.tasks.glue.data`).

- ours: the real `bertkit classify` command (--optimizer adamw).
- hf: `BertForSequenceClassification.from_pretrained` after torch.manual_seed(S), trained by a plain loop on the same
  batches (same order, each cut to its longest example).
- hf_matched: as hf, but from bertkit's head init and bertkit's RNG state for the same seed, and with the [PAD] row
  trained (as bertkit and Google do): the same random draws as `ours`, so any difference is the implementation.
- hf_trunc: `hf` with one change, its classifier draw made Google's truncated normal (bertkit's distribution) by
  re-drawing the entries beyond 2 std (`bench_squad_accuracy.truncate_like_google`); the dropout masks and every
  other entry are hf's for the seed: hf against hf_trunc at one seed measures the init distribution alone.

    python benchmarks/glue_accuracy.py --task rte --side ours --seed 1 --threads 1
    python benchmarks/glue_accuracy.py --task sst-2 --side hf --seed 1 --max_train 16000 --epochs 1

With --work_dir DIR a run can be killed and run again with the same arguments: it continues from its last state
(every --save_every steps; `resumable.py`, in DIR/TASK-SIDE-seedS) and gives the uninterrupted run's result; that
folder is removed when the run has finished.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench_squad_accuracy import minilm_dir, truncate_like_google
from resumable import LoopState, bertkit_resume_flags, resumed_at, run_key, skip_batches

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def hf_loop(model, loader, steps: int, lr: float, warmup: int, state: LoopState | None = None) -> list[float]:
    """The plain loop: AdamW (eps 1e-6, weight decay 0.01 but not on LayerNorm/bias), Google's warmup + linear
    decay, clip 1.0, mean cross-entropy (MSE for one output). Returns the per-step losses. `state` saves the loop
    every few steps and continues a killed run from there."""
    import torch
    import torch.nn.functional as F

    from bertkit.train.optim import learning_rate

    decay, skip = [], []
    for n, p in model.named_parameters():
        (skip if n.endswith("bias") or "LayerNorm" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": skip, "weight_decay": 0.0}],
                            lr=lr, eps=1e-6)  # fmt: skip
    model.train()
    state = state or LoopState(None)
    first, losses = state.start(model, opt)
    it = skip_batches(iter(loader), first)
    for step in range(first, steps):
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, lr, warmup, steps)
        b = next(it)
        logits = model(input_ids=b["input_ids"], token_type_ids=b["segment_ids"], attention_mask=b["input_mask"]).logits
        if logits.shape[1] == 1:
            loss = F.mse_loss(logits.float()[:, 0], b["label_ids"].float())
        else:
            loss = F.cross_entropy(logits.float(), b["label_ids"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        state.step_done(step + 1, model, opt, losses)
    return losses


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="rte, mrpc, cola, sst-2 (a folder of ../shared/data/glue)")
    p.add_argument("--side", choices=["ours", "hf", "hf_matched", "hf_trunc"], required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--max_train", type=int, default=0, help="train on the first N rows of train.tsv (0: all)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (0: Google's int(N / 32 x epochs))")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work_dir", default=None, help="keep the run's state here and continue from it when run again")
    p.add_argument("--save_every", type=int, default=20, help="with --work_dir: save the state every N steps")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from transformers import BertForSequenceClassification as HFBert

    from bertkit import cli
    from bertkit.checkpoint import formats as checkpoint
    from bertkit.data.tokenizer import WordPieceTokenizer
    from bertkit.model.bert import BertForSequenceClassification
    from bertkit.runtime import dist
    from bertkit.tasks.glue import data as glue
    from bertkit.tasks.glue.task import ClassifyLoader, predict_logits

    torch.set_num_threads(args.threads)
    task, model_dir = glue.get_task(args.task), minilm_dir()
    src = GLUE / task.name
    run_name = f"{task.name}-{args.side}-seed{args.seed}"  # a folder of its own inside --work_dir
    work = Path(args.work_dir) / run_name if args.work_dir else Path(tempfile.mkdtemp(prefix=f"glue-{run_name}-"))
    data = work / "data"  # the first --max_train rows of train.tsv, and dev.tsv
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "dev.tsv", data / "dev.tsv")
    lines = (src / "train.tsv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
    header = 0 if task.columns[0].width else 1
    keep = lines[: header + args.max_train] if args.max_train else lines
    (data / "train.tsv").write_text("".join(keep), encoding="utf-8")
    n_train = len(keep) - header
    steps = args.steps or max(1, int(n_train / 32 * args.epochs))
    warmup = int(steps * 0.1)
    t0 = time.perf_counter()
    if args.side == "ours":
        resumed = resumed_at(work / "snaps") if args.work_dir else 0
        out = cli.invoke(["classify", "--task_name", task.name, "--do_train", "--do_eval", "--data_dir", str(data),
                          "--init_checkpoint", str(model_dir), "--train_batch_size", "32", "--learning_rate",
                          str(args.lr), "--iter_num", str(steps), "--warmup_batches", str(warmup), "--optimizer",
                          "adamw", "--seed", str(args.seed), "--output_dir", str(work / "out"), "--model_save_dir",
                          str(work / "snaps"), "--log_dir", str(work / "log"), "--loss_print_every_n_iter", "50",
                          "--eval_batch_size", "64", "--device", "cpu",
                          *bertkit_resume_flags(args.work_dir and work, args.save_every)])  # fmt: skip
        metrics = {**out["eval"], "last_train_loss": out["train"]["last"]["total_loss"]}
    else:
        tok = WordPieceTokenizer(model_dir / "vocab.txt")
        train = glue.convert_examples_to_features(glue.read_examples(task, data, "train"), task, 128, tok)
        dev = glue.convert_examples_to_features(glue.read_examples(task, data, "dev"), task, 128, tok)
        arrays = {k: v for k, v in train.arrays().items() if k != "is_real_example"}
        loader = ClassifyLoader(arrays, 32, seed=args.seed)  # bertkit's order for --seed
        torch.manual_seed(args.seed)
        if args.side == "hf_matched":  # bertkit's construction for this seed: its head draw, the RNG state after it
            cfg = checkpoint.own_config(model_dir, "hf")
            twin = BertForSequenceClassification(cfg, task.num_labels)
            checkpoint.load_into(twin, model_dir)
            state = torch.get_rng_state()
        model = HFBert.from_pretrained(model_dir, num_labels=task.num_labels, attn_implementation="eager")
        if args.side == "hf_matched":
            with torch.no_grad():
                model.classifier.weight.copy_(twin.classifier.weight)
                model.classifier.bias.copy_(twin.classifier.bias)
            model.bert.embeddings.word_embeddings.padding_idx = None  # the [PAD] row trained, as bertkit's
            torch.set_rng_state(state)
        if args.side == "hf_trunc":
            truncate_like_google(model.classifier.weight, model.config.initializer_range, args.seed)
        state = LoopState(args.work_dir and work, args.save_every, run_key(args))
        losses = hf_loop(model, loader, steps, args.lr, warmup, state)
        resumed = state.resumed_at

        class Wrapped(torch.nn.Module):  # bertkit's calling convention: (ids, types, mask) -> logits
            def __init__(self, hf):
                super().__init__()
                self.hf, self.classifier = hf, hf.classifier

            def forward(self, ids, types, mask):
                return self.hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits

        logits = predict_logits(Wrapped(model), dev, 64, dist.DistEnv())
        t, y = torch.from_numpy(logits), torch.from_numpy(dev.label_ids)
        loss = F.mse_loss(t[:, 0], y.float()) if task.is_regression else F.cross_entropy(t, y.long())
        metrics = {**glue.glue_metrics(task, logits, dev.label_ids), "loss": float(loss), "last_train_loss": losses[-1]}
    seconds = time.perf_counter() - t0
    print(json.dumps({"task": task.name, "side": args.side, "seed": args.seed, "train_examples": n_train,
                      "steps": steps, **{k: round(float(v), 8) for k, v in metrics.items()},
                      "seconds": round(seconds), **({"resumed_at_step": resumed} if resumed else {})}),
          flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
