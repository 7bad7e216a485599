"""Data-pipeline throughput. Today: tokenization of SQuAD v1.1 dev contexts, bertkit against Hugging Face.

Tokenizers timed on the 2,067 contexts of ../shared/data/squad/dev-v1.1.json (2.2M characters), uncased vocabulary,
ids without [CLS]/[SEP]:

- bertkit_batch:   WordPieceTokenizer.encode_batch (one Rust call, on all cores)
- bertkit_single:  WordPieceTokenizer.encode, one call per text
- hf_fast_batch:   transformers' BertTokenizerFast called on the whole list (Rust, on all cores)
- hf_fast_single:  BertTokenizerFast called once per text
- hf_slow_single:  transformers' slow, pure-Python BertTokenizer (`BertTokenizerLegacy` in transformers 5)

Each is run --rounds times, the implementations alternating so that machine noise hits them alike; the best
round counts. One JSON line per result on stdout (texts/s, characters/s, the ratio to bertkit_batch, and whether
its ids equal bertkit's), or one line saying why nothing was measured.

    python benchmarks/bench_data.py
    python benchmarks/bench_data.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SQUAD_DEV = SHARED / "squad" / "dev-v1.1.json"


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def squad_contexts() -> list[str]:
    articles = json.loads(SQUAD_DEV.read_text(encoding="utf-8"))["data"]
    return [p["context"] for a in articles for p in a["paragraphs"]]


def tokenizers_under_test() -> dict[str, Callable[[list[str]], list[list[int]]]]:
    """name -> a function from texts to ids, each on bert-base-uncased as shipped with bertkit."""
    from importlib import resources

    from transformers import BertTokenizerFast
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    from bertkit.data.tokenizer import DEFAULT_VOCAB, WordPieceTokenizer

    ours = WordPieceTokenizer()
    fast = BertTokenizerFast(vocab=dict(ours.vocab), do_lower_case=True)
    with resources.as_file(resources.files("bertkit") / DEFAULT_VOCAB) as vocab_file:
        slow = BertTokenizerLegacy(vocab_file=str(vocab_file), do_lower_case=True)
    return {
        "bertkit_batch": ours.encode_batch,
        "bertkit_single": lambda texts: [ours.encode(t) for t in texts],
        "hf_fast_batch": lambda texts: fast(texts, add_special_tokens=False)["input_ids"],
        "hf_fast_single": lambda texts: [fast(t, add_special_tokens=False)["input_ids"] for t in texts],
        "hf_slow_single": lambda texts: [slow(t, add_special_tokens=False)["input_ids"] for t in texts],
    }


def bench_tokenizers(rounds: int) -> None:
    """Texts/s of each tokenizer on SQuAD dev contexts: one JSON line each."""
    if not SQUAD_DEV.is_file():
        emit(bench="tokenizer", skipped=f"SQuAD dev not found at {SQUAD_DEV} (needs ../shared/data)")
        return
    texts = squad_contexts()
    chars = sum(map(len, texts))
    impls = tokenizers_under_test()
    reference = impls["bertkit_batch"](texts)  # also warms every cache before timing
    best = dict.fromkeys(impls, float("inf"))
    same = {}
    for _ in range(rounds):
        for name, run in impls.items():
            start = time.perf_counter()
            ids = run(texts)
            best[name] = min(best[name], time.perf_counter() - start)
            same[name] = ids == reference
    for name, seconds in best.items():
        emit(
            bench="tokenizer",
            impl=name,
            texts=len(texts),
            texts_per_s=round(len(texts) / seconds, 1),
            chars_per_s=round(chars / seconds),
            speed_vs_bertkit_batch=round(best["bertkit_batch"] / seconds, 3),
            ids_equal_bertkit=same[name],
            cpus=os.cpu_count(),
            rounds=rounds,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per implementation; the best counts")
    args = parser.parse_args()
    bench_tokenizers(args.rounds)


if __name__ == "__main__":
    main()
