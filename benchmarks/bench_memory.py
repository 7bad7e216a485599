"""Per-rank memory of the pretraining loader: records parsed in every rank (the old path) against the shard cache.

Each rank of a run opens the same data. Parsed, every process holds its own copy of the whole data set (~1.8 KB per
sample at seq 128). Cached (`PretrainingLoader(..., cache_dir=...)`), the records are converted once into shards
that every process memory-maps: the pages are the kernel's page cache, shared between processes, so a rank's
private memory does not grow with the data.

The data: the WikiText-2 text in ../shared/data/text made into OFRecord by `bertkit create-pretraining-data`
(seq 128, 20 predictions, dupe 10: ~54k instances), once, into --work; or --data DIR (any --data_dir).

For each mode (parsed, cached) and process count (1, 2) the script starts that many worker processes (as the ranks
of a run: rank r of W), each of which opens the loader and draws one whole epoch of its batches (so every sample
page it reads is touched), then holds still while this process reads every worker's `/proc/PID/smaps_rollup` and
`/proc/PID/status` together (PSS depends on who else maps a page at that moment). The cache is emptied before
each cached run, so one worker builds it and the others wait. One JSON line per worker; MiB throughout:

- rss_anon: RssAnon, the process's anonymous (private, unreclaimable) memory; `data_*` fields are the growth over
  the same process just before it opened the data (torch and bertkit imported), i.e. what the data costs it.
- uss: Private_Clean + Private_Dirty (pages only this process maps; a file page mapped by one process alone is
  counted here too, although the kernel may drop it at any time and read it back).
- pss, pss_anon, pss_file: proportional set size (each page divided by the number of processes mapping it).
- peak_rss: VmHWM, the most resident memory the process ever had (the parse's transient included).

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --data ./dataset --procs 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wikitext2-valid-test.txt"
SEQ, MAX_PRED, BATCH = 128, 20, 32


def memory(pid: int | str = "self") -> dict[str, float]:
    """MiB figures of one process from /proc (Linux)."""
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        rollup[key] = int(value.split()[0]) / 1024
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            status[key] = int(value.split()[0]) / 1024
    return {
        "rss_anon": status["RssAnon"],
        "uss": rollup["Private_Clean"] + rollup["Private_Dirty"],
        "pss": rollup["Pss"],
        "pss_anon": rollup["Pss_Anon"],
        "pss_file": rollup["Pss_File"],
        "rss": rollup["Rss"],
        "peak_rss": status["VmHWM"],
    }


def worker(args: argparse.Namespace) -> None:
    """One rank: open the data, draw an epoch, report, wait for the parent's line on stdin."""
    import torch

    from bertkit.data.loader import PretrainingLoader

    torch.set_num_threads(1)
    before = memory()
    start = time.perf_counter()
    cache = Path(args.work) / "cache" if args.mode == "cached" else None
    loader = PretrainingLoader(
        args.data, BATCH, SEQ, MAX_PRED, rank=args.rank, world_size=args.world, seed=1, cache_dir=cache,
        vocab_size=30522, type_vocab_size=2,
    )  # fmt: skip
    open_s = time.perf_counter() - start
    n = loader.num_samples // (BATCH * args.world)
    it = iter(loader)
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    draw_s = time.perf_counter() - start
    print(json.dumps({"before": before, "samples": loader.num_samples, "open_s": open_s,
                      "batches": n, "batches_per_s": n / draw_s}), flush=True)  # fmt: skip
    sys.stdin.readline()  # hold the memory until the parent has measured every rank


def make_data(work: Path) -> Path:
    out = work / "wikitext2-of"
    if (out / "part-0").is_file():
        return out
    if not TEXT.is_file():
        sys.exit(f"no data: {TEXT} is absent; pass --data DIR (an OFRecord or TFRecord --data_dir)")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bertkit", "create-pretraining-data", "--input_file", str(TEXT),
           "--output_file", str(out / "part-0"), "--output_format", "ofrecord", "--max_seq_length", str(SEQ),
           "--max_predictions_per_seq", str(MAX_PRED), "--dupe_factor", "10"]  # fmt: skip
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    return out


def run(args: argparse.Namespace, mode: str, procs: int) -> None:
    shutil.rmtree(Path(args.work) / "cache", ignore_errors=True)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--mode",
                mode,
                "--rank",
                str(r),
                "--world",
                str(procs),
                "--data",
                str(args.data),
                "--work",
                str(args.work),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(procs)
    ]
    reports = [json.loads(w.stdout.readline()) for w in workers]  # every rank has opened and drawn
    after = [memory(w.pid) for w in workers]  # measured while all are alive
    for w in workers:
        w.stdin.write("\n")
        w.stdin.flush()
    for w in workers:
        if w.wait() != 0:
            sys.exit(f"worker {w.pid} failed")
    for rank, (rep, mem) in enumerate(zip(reports, after, strict=True)):
        row = {"mode": mode, "procs": procs, "rank": rank, "samples": rep["samples"]}
        row |= {k: round(v, 1) for k, v in mem.items()}
        row |= {f"data_{k}": round(mem[k] - rep["before"][k], 1) for k in ("rss_anon", "uss", "pss")}
        row |= {"open_s": round(rep["open_s"], 2), "batches_per_s": round(rep["batches_per_s"])}
        print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="a --data_dir to read (default: WikiText-2 records made in --work)")
    p.add_argument("--work", default="/tmp/bertkit-bench-memory", help="folder for the records and the cache")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    p.add_argument("--modes", nargs="+", default=["parsed", "cached"], choices=["parsed", "cached"])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    os.makedirs(args.work, exist_ok=True)
    args.data = args.data or make_data(Path(args.work))
    for mode in args.modes:
        for procs in args.procs:
            run(args, mode, procs)


if __name__ == "__main__":
    main()
