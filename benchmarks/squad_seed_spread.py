"""How much does the random state alone move SQuAD accuracy, bertkit against Hugging Face?

One run per call: --side ours|hf|hf_matched|hf_pad|hf_init, --seed S (torch: the QA head's init and every dropout
mask); the data order is fixed (--data_seed), and so are the hyper-parameters of bench_squad_accuracy.py (MiniLM,
seq 256, stride 128, batch 32, lr 1e-4, 10% warmup, AdamW eps 1e-6 / wd 0.01, clip 1.0, dropout 0.1), scored on the
first --dev_articles dev articles with the official metric.

- ours: bertkit's model from the Hugging Face folder (QA head new), trained by `train.fit` + `squad.squad_loss`.
- hf: `BertForQuestionAnswering.from_pretrained` after torch.manual_seed(S), trained by a plain loop.
- hf_matched: as hf, but starting from bertkit's QA head init and bertkit's RNG state for the same seed (and the
  [PAD] row trained, as bertkit and Google do): the same random draws as `ours`, so any gap is the implementation.

The one-change sides differ from `hf` (same seed) in exactly one thing, so that each of hf_matched's three changes
is measured on its own:

- hf_pad: only `padding_idx=None`: the [PAD] embedding row is trained, as bertkit and Google train it (transformers
  freezes it). Same head init and dropout masks as `hf`. It matters only while padding logits are in the span
  loss, as they were before squad_loss masked them (commit cb5ee09 and earlier): with padding out of the softmax
  the [PAD] row gets no gradient at all, and hf_pad trains exactly as hf.
- hf_init: only the QA head's init: bertkit's draw for this seed (Google's truncated normal), copied into the model
  `hf` builds; the RNG state afterwards, so every dropout mask, is `hf`'s own.

The third change, the RNG state alone, is what `hf` against `hf_matched` leaves once the two above are known.

    python benchmarks/squad_seed_spread.py --side ours --seed 1      # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench_squad_accuracy import DATA, HFQA, minilm_dir, train_hf


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["ours", "hf", "hf_matched", "hf_pad", "hf_init"], required=True)
    p.add_argument("--seed", type=int, required=True, help="torch seed: QA head init and dropout masks")
    p.add_argument("--data_seed", type=int, default=12345, help="order of the training windows (fixed)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dev_articles", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch
    from transformers import BertForQuestionAnswering as HFBert

    from bertkit.checkpoint import formats as checkpoint
    from bertkit.model.bert import BertForQuestionAnswering
    from bertkit.runtime import dist
    from bertkit.tasks.squad.data import load_squad, squad_tokenizer
    from bertkit.tasks.squad.evaluate import evaluate_v1
    from bertkit.tasks.squad.predict import RawResults, predict_answers, predict_logits
    from bertkit.tasks.squad.records import WindowFlags
    from bertkit.tasks.squad.task import SquadLoader, json_windows, squad_loss
    from bertkit.train.config import TrainConfig
    from bertkit.train.loop import Task, fit

    torch.set_num_threads(args.threads)
    d = minilm_dir()
    flags = WindowFlags(max_seq_length=256, doc_stride=128, max_query_length=64)
    tok = squad_tokenizer(d / "vocab.txt")
    _, feats, _ = json_windows(str(DATA / "train-v1.1-first44.json"), flags, tok, training=True)
    arrays = {"input_ids": feats.input_ids, "input_mask": feats.input_mask, "segment_ids": feats.segment_ids,
              "start_positions": feats.start_position, "end_positions": feats.end_position}  # fmt: skip
    loader = SquadLoader(arrays, 32, seed=args.data_seed)
    lr, warmup, steps = 1e-4, args.steps // 10, args.steps
    cfg = checkpoint.own_config(d, checkpoint.detect_format(d))
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.side == "ours":
        model = BertForQuestionAnswering(cfg)
        checkpoint.load_into(model, d)
        tc = TrainConfig.from_flags(learning_rate=lr, batch_size_per_device=32, iter_num=steps, warmup_batches=warmup,
                         optimizer="adamw", weight_decay_rate=0.01, max_grad_norm=1.0, loss_print_every_n_iter=10,
                         log_every_n_iter=10, model_save_every_n_iter=10**9, log_dir=str(tmp / "log"),
                         model_save_dir=str(tmp / "save"))  # fmt: skip
        history = []
        fit(model, cfg, Task(squad_loss, loader), tc, dist.DistEnv(), print_fn=lambda s: None, on_log=history.append)
        curve = [h["total_loss"] for h in history]
        qa = model
    else:
        bertkit_head = args.side in ("hf_matched", "hf_init")
        if bertkit_head:  # bertkit's construction for this seed: its QA head draw, and the RNG state after it
            twin = BertForQuestionAnswering(cfg)
            checkpoint.load_into(twin, d)
            state = torch.get_rng_state()
        if args.side == "hf_init":  # from here on HF's own draws, as in `hf`: its head (replaced) and dropout masks
            torch.manual_seed(args.seed)
        model = HFBert.from_pretrained(d)
        if bertkit_head:
            with torch.no_grad():
                model.qa_outputs.weight.copy_(twin.qa.weight)
                model.qa_outputs.bias.copy_(twin.qa.bias)
            del twin
        if args.side in ("hf_matched", "hf_pad"):  # the [PAD] row trained, as bertkit and Google do
            model.bert.embeddings.word_embeddings.padding_idx = None
        if args.side == "hf_matched":
            torch.set_rng_state(state)
        losses = train_hf(model, loader, steps, lr, warmup)
        curve = [sum(losses[i : i + 10]) / len(losses[i : i + 10]) for i in range(0, steps, 10)]
        qa = HFQA(model).module
    train_s = time.perf_counter() - t0

    dev = load_squad(DATA / "dev-v1.1.json")
    if args.dev_articles:
        dev["data"] = dev["data"][: args.dev_articles]
    dev_path = tmp / "dev.json"
    dev_path.write_text(json.dumps(dev), encoding="utf-8")
    examples, windows, _ = json_windows(str(dev_path), flags, tok, training=False)
    start, end = predict_logits(qa, windows.input_ids, windows.input_mask, windows.segment_ids, 64, dist.DistEnv())
    preds = predict_answers(examples, windows, RawResults(windows.unique_id, start, end), tok, 20, 30)
    m = evaluate_v1(dev, preds.predictions)
    print(json.dumps({"side": args.side, "seed": args.seed, "data_seed": args.data_seed, "steps": steps,
                      "dev_questions": len(preds.predictions), "exact_match": round(m["exact_match"], 2),
                      "f1": round(m["f1"], 2), "loss_curve": [round(x, 3) for x in curve],
                      "train_seconds": round(train_s)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
