"""`bertkit create-pretraining-data` wall time, and against Google's instance creation on the same text and machine.

Runs the whole command as a user does (`python -m bertkit create-pretraining-data`, a fresh process: start-up,
read and tokenize, make instances, write records) on ../shared/data/text/wikitext2-valid-test.txt (2.2 MB, 122
Wikipedia articles) with Google's default flags (seq 128, dupe_factor 10), or on a synthetic text of the same size
when the shared data is absent. One JSON line per worker count, with the time of each phase as the command reports
it, the process's wall and CPU seconds, and the CPU model.

With `--google_bert DIR` (a checkout of google-research/bert @ eedf571, never copied into bertkit) the same run
also times Google's `create_training_instances` in this process (its pure-Python FullTokenizer and instance
making; TensorFlow, absent here, is replaced by the three names that function uses: gfile.GFile, flags, logging;
writing is not timed) and checks that bertkit's one-worker records hold Google's instances, every feature of every
record (`google_identical`). `vs_google` = Google's seconds / bertkit's wall seconds, start-up included; `vs_google_cpu` the same
with CPU seconds (bertkit's tokenizer threads and worker processes counted), steadier on a loaded machine.

    python benchmarks/bench_create_data.py --google_bert ../bert
    python benchmarks/bench_create_data.py --workers 1,2,4 --output_format shards
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from bertkit.data.records import pretraining_features, read_arrays
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import default_vocab_path
from bertkit.tasks.pretrain.data import FORMATS

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wikitext2-valid-test.txt"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


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


def google_module(checkout: Path):
    """Google's create_pretraining_data module from a checkout, with a stand-in for the TensorFlow it imports."""
    if not (checkout / "create_pretraining_data.py").is_file():
        raise SystemExit(
            f"--google_bert {checkout}: no create_pretraining_data.py there (a google-research/bert checkout)"
        )

    class GFile:  # tf.gfile.GFile(path, "r"): lines end at "\n" alone, as TensorFlow reads
        def __init__(self, path: str, mode: str = "r") -> None:
            self.fh = open(path, encoding="utf-8", newline="\n")  # noqa: SIM115 - closed by __exit__

        def __enter__(self):
            return self.fh

        def __exit__(self, *exc) -> None:
            self.fh.close()

    class Flags:
        FLAGS = types.SimpleNamespace(do_whole_word_mask=False)

        def __getattr__(self, name: str):
            return lambda *a, **k: None  # DEFINE_string and friends, at import

    tf = types.ModuleType("tensorflow")
    tf.flags, tf.gfile = Flags(), types.SimpleNamespace(GFile=GFile)
    tf.logging = types.SimpleNamespace(info=lambda *a, **k: None)
    six = types.ModuleType("six")
    six.PY2, six.PY3 = False, True
    sys.modules.setdefault("tensorflow", tf)
    sys.modules.setdefault("six", six)
    sys.path.insert(0, str(checkout))
    import create_pretraining_data
    import tokenization

    return create_pretraining_data, tokenization


def google_instances(checkout: Path, text: Path, vocab: Path, dupe: int, seq: int, pred: int):
    """(instances, tokenizer, wall s, CPU s): Google's create_training_instances with its default flags otherwise."""
    G, tokenization = google_module(checkout)
    start, cpu = time.perf_counter(), time.process_time()
    tokenizer = tokenization.FullTokenizer(str(vocab), do_lower_case=True)
    instances = G.create_training_instances([str(text)], tokenizer, seq, dupe, 0.1, 0.15, pred, random.Random(12345))
    return instances, tokenizer, time.perf_counter() - start, time.process_time() - cpu


def same_as_google(records: Path, instances, tokenizer, seq: int, pred: int) -> bool:
    """Every feature of every record equals Google's write_instance_to_example_files of `instances`."""
    got = list(read_arrays(records, pretraining_features(seq, pred)))
    got = {k: np.concatenate([c[k] for c in got]) for k in got[0]}
    if len(got["input_ids"]) != len(instances):
        return False
    for i, inst in enumerate(instances):
        ids = tokenizer.convert_tokens_to_ids(inst.tokens)
        n, m = len(ids), len(inst.masked_lm_positions)
        row = {
            "input_ids": ids + [0] * (seq - n),
            "input_mask": [1] * n + [0] * (seq - n),
            "segment_ids": list(inst.segment_ids) + [0] * (seq - n),
            "masked_lm_positions": list(inst.masked_lm_positions) + [0] * (pred - m),
            "masked_lm_ids": tokenizer.convert_tokens_to_ids(inst.masked_lm_labels) + [0] * (pred - m),
            "masked_lm_weights": [1.0] * m + [0.0] * (pred - m),
            "next_sentence_labels": [int(inst.is_random_next)],
        }
        if any(not np.array_equal(got[k][i].reshape(-1), np.asarray(v)) for k, v in row.items()):
            return False
    return True


def run_bertkit(text: Path, out: Path, args, workers: int, entry: str) -> dict:
    """The command in a fresh process: its summary line's phases, wall and CPU seconds (children's rusage).

    entry "cli": `python -m bertkit create-pretraining-data ...`, as a user runs it; "module": the same run()
    called from `python -c` after importing bertkit.tasks.pretrain.data alone (what the command's start-up costs
    once the CLI imports only the module of the command it runs)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    flags = {
        "input_file": str(text),
        "output_file": str(out),
        "output_format": args.output_format,
        "dupe_factor": args.dupe_factor,
        "max_seq_length": args.max_seq_length,
        "max_predictions_per_seq": args.max_predictions,
        "num_workers": workers,
    }
    if entry == "cli":
        cmd = [sys.executable, "-m", "bertkit", "create-pretraining-data"]
        cmd += [x for k, v in flags.items() for x in (f"--{k}", str(v))]
    else:
        code = "from bertkit.tasks.pretrain.data import CreatePretrainingDataConfig as C, run\n"
        code += f"if __name__ == '__main__':\n    run(C(**{flags!r}))"
        cmd = [sys.executable, "-c", code]
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # "...; 5.0 s, 1.23 MiB/s": the command streams chunks (read, make and write overlap), one time in all
    phases = next(p for p in line.split("; ") if p.endswith("MiB/s"))
    parts: dict[str, str] = {}
    instances = int(line.split(" -> ")[1].split(" ")[0].replace(",", ""))
    return {"instances": instances, "wall_s": wall, "cpu_s": cpu, "in_command_s": float(phases.split(" ")[0])} | {
        f"{k}_s": float(v) for k, v in parts.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    ap.add_argument("--dupe_factor", type=int, default=10, help="passes over the text (Google's default 10)")
    ap.add_argument("--max_seq_length", type=int, default=128, help="tokens per instance")
    ap.add_argument("--max_predictions", type=int, default=20, help="--max_predictions_per_seq")
    ap.add_argument("--output_format", default="tfrecord", choices=FORMATS, help="record format written")
    ap.add_argument("--entries", default="cli,module", help="how bertkit starts: cli, module (see run_bertkit)")
    ap.add_argument("--google_bert", type=Path, help="a google-research/bert checkout: time Google's instance creation")
    args = ap.parse_args()
    seq, pred = args.max_seq_length, args.max_predictions
    with tempfile.TemporaryDirectory() as tmp:
        text, data = TEXT, "wikitext2-valid-test"
        if not text.is_file():
            text, data = Path(tmp) / "synthetic.txt", "synthetic"
            synthetic_text(text)
        google_s = google = None
        if args.google_bert:
            google, google_tok, google_s, google_cpu = google_instances(
                args.google_bert, text, Path(default_vocab_path()), args.dupe_factor, seq, pred
            )
        runs = [(w, e) for w in map(int, args.workers.split(",")) for e in args.entries.split(",")]
        for k, (workers, entry) in enumerate(runs):
            out = Path(tmp) / f"out-{k}"
            s = run_bertkit(text, out, args, workers, entry)
            row = {
                "bench": "create_pretraining_data",
                "entry": entry,
                "cpu": cpu_model(),
                "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "data": data,
                "text_mb": round(text.stat().st_size / 1e6, 2),
                "workers": workers,
                "output_format": args.output_format,
                "dupe_factor": args.dupe_factor,
                "max_seq_length": seq,
                "instances": s["instances"],
                "wall_s": round(s["wall_s"], 2),
                "cpu_s": round(s["cpu_s"], 2),
                "start_up_s": round(s["wall_s"] - s["in_command_s"], 2),
                "read_s": s["read_s"],
                "make_s": s["instances_s"],
                "write_s": s["write_s"],
                "instances_per_s": round(s["instances"] / s["wall_s"]),
            }
            if google is not None:
                row["google_instance_creation_s"] = round(google_s, 2)
                row["google_instance_creation_cpu_s"] = round(google_cpu, 2)
                row["vs_google"] = round(google_s / s["wall_s"], 2)
                row["vs_google_cpu"] = round(google_cpu / s["cpu_s"], 2)  # fairer on a shared, loaded machine
                if workers == 1 and args.output_format == "tfrecord":
                    row["google_identical"] = same_as_google(out, google, google_tok, seq, pred)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
