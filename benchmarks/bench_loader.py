"""Pretraining loader throughput from OFRecord, TFRecord and memory-mapped shards, on one core.

Builds a dataset of --samples pretraining records (seq 128, 20 predictions) in a temporary directory: Google's
golden TFRecord (118 real instances from `create_pretraining_data.py`) replicated, or synthetic records with
BERT-sized token ids when ../shared/data is absent. It is written as a 4-part OFRecord directory and one TFRecord
file, and converted to shards. For each source it times building the loader (parsing the records, or opening the
memory maps) and then drawing batches for --seconds. One JSON line per result; the target for shards is
100,000 samples/s. The files are fresh, so they read from the page cache.

    python benchmarks/bench_loader.py
    python benchmarks/bench_loader.py --samples 200000 --batch_size 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bertkit.data import records as R
from bertkit.data.loader import PretrainingLoader, convert_data

SEQ, MAX_PRED = 128, 20
GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "golden" / "google-cpd-sample_text-wwmFalse.tfrecord"


def base_records() -> tuple[list[dict], str]:
    if GOLDEN.is_file():
        return list(R.read_tfrecord(GOLDEN)), "golden"
    rng = np.random.default_rng(0)
    recs = []
    for _ in range(128):
        n_mask = 19
        recs.append(
            {
                "input_ids": rng.integers(999, 30522, SEQ),
                "input_mask": np.ones(SEQ, np.int64),
                "segment_ids": (np.arange(SEQ) >= rng.integers(1, SEQ)).astype(np.int64),
                "masked_lm_positions": np.r_[np.sort(rng.choice(np.arange(1, SEQ), n_mask, replace=False)), 0],
                "masked_lm_ids": np.r_[rng.integers(999, 30522, n_mask), 0],
                "masked_lm_weights": np.r_[np.ones(n_mask, np.float32), 0],
                "next_sentence_labels": rng.integers(0, 2, 1),
            }
        )
    return recs, "synthetic"


def replicate(recs: list[dict], n: int, part: int, parts: int):
    for i in range(part * n // parts, (part + 1) * n // parts):
        yield recs[i % len(recs)]


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=50_000, help="records in the benchmark dataset")
    ap.add_argument("--batch_size", type=int, default=32, help="samples per batch (the seed's batch_size_per_device)")
    ap.add_argument("--seconds", type=float, default=2.0, help="how long to draw batches from each loader")
    args = ap.parse_args()
    torch.set_num_threads(1)
    recs, kind = base_records()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "of").mkdir()
        start = time.perf_counter()
        for p in range(4):
            R.write_ofrecord(root / "of" / f"part-{p}", replicate(recs, args.samples, p, 4))
        R.write_tfrecord(root / "data.tfrecord", replicate(recs, args.samples, 0, 1))
        emit(
            bench="write_records",
            records=2 * args.samples,
            records_per_s=round(2 * args.samples / (time.perf_counter() - start)),
        )
        start = time.perf_counter()
        convert_data(root / "of", root / "shards", SEQ, MAX_PRED)
        emit(bench="convert_data", source="ofrecord", samples_per_s=round(args.samples / (time.perf_counter() - start)))

        for source, path in (
            ("shards", root / "shards"),
            ("ofrecord", root / "of"),
            ("tfrecord", root / "data.tfrecord"),
        ):
            start = time.perf_counter()
            loader = PretrainingLoader(path, args.batch_size, SEQ, MAX_PRED, seed=0)
            index_s = time.perf_counter() - start
            it = iter(loader)
            next(it)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                for _ in range(100):
                    next(it)
                n += 100 * args.batch_size
            speed = n / (time.perf_counter() - start)
            emit(
                bench="loader",
                source=source,
                data=kind,
                samples=args.samples,
                batch_size=args.batch_size,
                open_s=round(index_s, 3),
                open_samples_per_s=round(args.samples / index_s),
                samples_per_s=round(speed),
                target_samples_per_s=100_000 if source == "shards" else None,
                threads=torch.get_num_threads(),
            )


if __name__ == "__main__":
    main()
