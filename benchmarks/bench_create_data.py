"""`bertkit create-pretraining-data` throughput: instances/s from raw text with 1 and 2 workers.

Runs the whole command (read and tokenize, make instances, write records) on ../shared/data/text/
wikitext2-valid-test.txt (2.2 MB, 122 Wikipedia articles) with Google's default flags (seq 128, dupe_factor 10),
or on a synthetic text of the same size when the shared data is absent. One JSON line per worker count, with
the time of each phase; `make_instances_per_s` is the instance-making phase alone, the part the workers share.

    python benchmarks/bench_create_data.py
    python benchmarks/bench_create_data.py --workers 1,2,4 --output_format shards
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from bertkit.pretraining_data import FORMATS, CreatePretrainingDataConfig, create_pretraining_data
from bertkit.tokenizer import WordPieceTokenizer

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wikitext2-valid-test.txt"


def synthetic_text(path: Path, size: int = 2_200_000) -> None:
    """Documents of 20-200 sentences of whole words from the vocabulary, about `size` bytes."""
    words = [w for w in WordPieceTokenizer().inv_vocab if w.isalpha()]
    rng, lines, n = random.Random(0), [], 0
    while n < size:
        for _ in range(rng.randint(20, 200)):
            lines.append(" ".join(rng.choices(words, k=rng.randint(5, 40))) + " .")
            n += len(lines[-1]) + 1
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    ap.add_argument("--dupe_factor", type=int, default=10, help="passes over the text (Google's default 10)")
    ap.add_argument("--max_seq_length", type=int, default=128, help="tokens per instance")
    ap.add_argument("--output_format", default="tfrecord", choices=FORMATS, help="record format written")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        text, data = TEXT, "wikitext2-valid-test"
        if not text.is_file():
            text, data = Path(tmp) / "synthetic.txt", "synthetic"
            synthetic_text(text)
        for k, workers in enumerate(int(w) for w in args.workers.split(",")):
            out = Path(tmp) / f"out-{k}"
            s = create_pretraining_data(
                CreatePretrainingDataConfig(
                    input_file=str(text),
                    output_file=str(out),
                    output_format=args.output_format,
                    dupe_factor=args.dupe_factor,
                    max_seq_length=args.max_seq_length,
                    num_workers=workers,
                )
            )
            row = {
                "bench": "create_pretraining_data",
                "data": data,
                "text_mb": round(text.stat().st_size / 1e6, 2),
                "workers": workers,
                "cpus": os.cpu_count(),
                "output_format": args.output_format,
                "dupe_factor": args.dupe_factor,
                "max_seq_length": args.max_seq_length,
                "instances": s["instances"],
                "seconds": round(s["seconds"], 2),
                "instances_per_s": round(s["instances"] / s["seconds"]),
                "read_s": round(s["read_s"], 2),
                "make_s": round(s["instances_s"], 2),
                "write_s": round(s["write_s"], 2),
                "make_instances_per_s": round(s["instances"] / s["instances_s"]),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":  # the workers are spawned processes, which import this module
    main()
