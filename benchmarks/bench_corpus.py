"""Pretraining on a real corpus: creation memory and speed against text size, time to first step against record-set
size, and 1 process against 2 "machines", one JSON line per result (issue 27).

- `create`: `bertkit create-pretraining-data --output_dir` (seq 128, dupe 5, shards) on WikiText-2 valid+test
  (../shared/data/text, 2.2 MB) repeated to each `--sizes` MiB, with each `--workers`; peak RSS of the main process
  and of the whole process tree (psutil, sampled every 0.2 s), MiB/s of text. A run past `--timeout_s` is stopped
  and reported with the chunks it finished (peak memory is per chunk, so it is already seen).
- `first_step`: a record set of `--record_gb` GiB (the parts of one small `--output_dir`, hard-linked over and
  over: the same bytes on disk, the loader sees N distinct parts) in shards and in TFRecord; seconds from launch to
  the first training step of a 2-layer BERT (`bertkit pretrain --iter_num 1`), and the bytes on disk per record.
- `machines`: the same text made by 1 process and by 2 processes with their own RANK/WORLD_SIZE (run at once);
  every part compared byte for byte.
- `splitters`: blingfire, syntok and pysbd on WikiText-2's paragraphs (its own sentence lines joined): MiB/s and
  the fraction of its sentences each gives back exactly.

    nice python benchmarks/bench_corpus.py create --sizes 10,100,1000 --workers 1,2
    python benchmarks/bench_corpus.py create --sizes 32 --workers 1 --chunk_size_mb 2,8,32
    python benchmarks/bench_corpus.py first_step --record_gb 1,4
    python benchmarks/bench_corpus.py machines
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wikitext2-valid-test.txt"
RESULTS = Path(__file__).resolve().parent / "results"


def emit(result: dict, out: Path) -> None:
    line = json.dumps(result)
    print(line, flush=True)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def repeated_text(path: Path, mib: float) -> Path:
    """WikiText-2 valid+test repeated to `mib` MiB (whole copies, then a prefix cut at a document)."""
    if path.is_file() and path.stat().st_size >= mib * 2**20:
        return path
    text = TEXT.read_text(encoding="utf-8").rstrip("\n") + "\n\n"
    need = int(mib * 2**20)
    with open(path, "w", encoding="utf-8") as fh:
        written = 0
        while written + len(text) <= need:
            fh.write(text)
            written += len(text)
        rest = text[: max(need - written, 0)]
        fh.write(rest[: rest.rfind("\n\n") + 2] if "\n\n" in rest else "")
    return path


def run_measured(argv: list[str], timeout_s: float, env: dict | None = None) -> dict:
    """Run `argv`, sampling RSS of it and its children: wall seconds, peak RSS (main, tree), return code."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p = psutil.Process(proc.pid)
    peak_main = peak_tree = 0
    timed_out = False
    while proc.poll() is None:
        try:
            main = p.memory_info().rss
            tree = main + sum(c.memory_info().rss for c in p.children(recursive=True))
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        except psutil.Error:
            pass
        if time.perf_counter() - start > timeout_s:
            proc.kill()
            timed_out = True
            break
        time.sleep(0.2)
    out = proc.communicate()[0]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its joined workers
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": time.perf_counter() - start, "cpu_s": cpu_s, "peak_rss_mb": peak_main / 2**20, "peak_tree_rss_mb":
            peak_tree / 2**20, "rc": proc.returncode, "timed_out": timed_out, "log_tail": out[-600:]}  # fmt: skip


def cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bertkit", *args]


def create(args, work: Path, out: Path) -> None:
    for mib in (float(s) for s in args.sizes.split(",")):
        text = repeated_text(work / f"text-{mib:g}.txt", mib)
        for workers, chunk_mb in ((int(w), float(c)) for w in args.workers.split(",")
                                  for c in args.chunk_size_mb.split(",")):  # fmt: skip
            d = work / f"create-{mib:g}-{workers}-{chunk_mb:g}"
            shutil.rmtree(d, ignore_errors=True)
            r = run_measured(cmd("create-pretraining-data", f"--input_file={text}", f"--output_dir={d}",
                                 "--output_format=shards", "--dupe_factor=5", "--max_seq_length=128",
                                 f"--num_workers={workers}", f"--chunk_size_mb={chunk_mb}"),
                             args.timeout_s)  # fmt: skip
            done = sorted((d / "manifest").glob("chunk-*.json")) if d.exists() else []
            made = sum(json.loads(f.read_text())["text_bytes"] for f in done)
            if r["rc"] and workers > 1:  # a killed command's workers were never reaped: their CPU is not counted
                r["cpu_s"] = float("nan")
            emit({"bench": "corpus_create", "text_mib": mib, "workers": workers, "chunk_size_mb": chunk_mb,
                  "chunks_done": len(done), "text_mib_done": made / 2**20, "mib_per_s": made / 2**20 / r["wall_s"],
                  "mib_per_cpu_s": made / 2**20 / max(r["cpu_s"], 1e-9), "cpu_s": r["cpu_s"],
                  **{k: r[k] for k in ("wall_s", "peak_rss_mb", "peak_tree_rss_mb", "rc", "timed_out")},
                  "cpus": os.cpu_count()}, out)  # fmt: skip
            if not args.keep:
                shutil.rmtree(d, ignore_errors=True)


def _du(path: Path) -> int:
    """Bytes on disk under `path`, each hard-linked file counted once."""
    seen, total = set(), 0
    for p in path.rglob("*"):
        st = p.lstat()
        if p.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _logical(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def first_step(args, work: Path, out: Path) -> None:
    text = repeated_text(work / "text-8.txt", 8)
    for fmt, gibs in (("shards", args.record_gb), ("tfrecord", args.tfrecord_gb)):
        base = work / f"base-{fmt}"
        if not (base / "manifest.json").is_file():
            subprocess.run(cmd("create-pretraining-data", f"--input_file={text}", f"--output_dir={base}",
                               f"--output_format={fmt}", "--dupe_factor=5", "--chunk_size_mb=1",
                               "--num_workers=2"), check=True, capture_output=True)  # fmt: skip
        parts = sorted(p for p in base.iterdir() if p.name.startswith("part-"))
        part_bytes = (
            _logical(base)
            - _logical(base / "manifest")
            - sum(
                (base / n).stat().st_size
                for n in ("vocab.txt", "bertkit_data.json", "manifest.json")
                if (base / n).exists()
            )
        )
        records = sum(json.loads(f.read_text())["instances"] for f in (base / "manifest").glob("chunk-*.json"))
        for gib in (float(s) for s in gibs.split(",") if s):
            copies = max(1, round(gib * 2**30 / part_bytes))
            d = work / f"records-{fmt}-{gib:g}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            for name in ("vocab.txt", "bertkit_data.json"):
                shutil.copy(base / name, d / name)
            k = 0
            for _ in range(copies):
                for part in parts:  # hard links: N distinct part names over the same bytes
                    target = d / f"part-{k}"
                    if part.is_dir():
                        shutil.copytree(part, target, copy_function=os.link)
                    else:
                        os.link(part, target)
                    k += 1
            log = work / f"log-{fmt}-{gib:g}"
            shutil.rmtree(log, ignore_errors=True)
            r = run_measured(cmd("pretrain", f"--data_dir={d}", "--data_part_num=0", "--iter_num=1", "--seq_length=128", "--max_predictions_per_seq=20", "--num_hidden_layers=2",
                                 "--num_attention_heads=2", "--hidden_size_per_head=32", "--batch_size_per_device=8",
                                 f"--log_dir={log}", f"--model_save_dir={log}/snapshots", "--save_last_snapshot=False"),
                             args.timeout_s)  # fmt: skip
            emit({"bench": "corpus_first_step", "format": fmt, "record_gib": _logical(d) / 2**30,
                  "records": records * copies, "parts": k, "seconds_to_first_step": r["wall_s"],
                  "bytes_per_record": part_bytes / records, "cache_bytes_on_disk": _du(log) if log.exists() else 0,
                  "peak_rss_mb": r["peak_rss_mb"], "rc": r["rc"], "timed_out": r["timed_out"],
                  **({"log_tail": r["log_tail"]} if r["rc"] else {})}, out)  # fmt: skip
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(log, ignore_errors=True)


def machines(args, work: Path, out: Path) -> None:
    text = repeated_text(work / "text-4.txt", 4)
    flags = [f"--input_file={text}", "--output_format=tfrecord", "--dupe_factor=2", "--chunk_size_mb=0.5"]
    one, two = work / "one-process", work / "two-machines"
    for d in (one, two):
        shutil.rmtree(d, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(cmd("create-pretraining-data", *flags, f"--output_dir={one}"), check=True, capture_output=True)
    one_s = time.perf_counter() - start
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd("create-pretraining-data", *flags, f"--output_dir={two}"),
                              env=os.environ | {"RANK": str(r), "WORLD_SIZE": "2"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for r in (0, 1)]  # fmt: skip
    assert all(p.wait() == 0 for p in procs)
    two_s = time.perf_counter() - start
    names = sorted(p.name for p in one.iterdir() if p.name.startswith("part-"))
    same = names == sorted(p.name for p in two.iterdir() if p.name.startswith("part-")) and all(
        (one / n).read_bytes() == (two / n).read_bytes() for n in names
    )
    from bertkit.data.records import count_records

    records = sum(count_records(one / n, "tfrecord") for n in names)
    emit({"bench": "corpus_machines", "parts": len(names), "records": records, "identical": same,
          "one_process_s": one_s, "two_machines_s": two_s}, out)  # fmt: skip


def splitters(args, work: Path, out: Path) -> None:
    import blingfire
    import pysbd
    import syntok.segmenter as segmenter

    docs = [[s.strip() for s in d.split("\n") if s.strip()] for d in TEXT.read_text(encoding="utf-8").split("\n\n")]
    docs = [d for d in docs if d]
    sbd = pysbd.Segmenter(language="en", clean=False)
    split = {
        "blingfire": lambda p: [s for s in blingfire.text_to_sentences(p).split("\n") if s.strip()],
        "syntok": lambda p: [
            "".join(t.spacing + t.value for t in s).strip() for para in segmenter.process(p) for s in para
        ],
        "pysbd": lambda p: [s.strip() for s in sbd.segment(p) if s.strip()],
    }
    for name, fn in split.items():
        sample = docs if name != "pysbd" else docs[:30]  # pysbd: ~0.07 MiB/s, a sample
        paragraphs = [" ".join(d) for d in sample]
        start = time.perf_counter()
        got = [fn(p) for p in paragraphs]
        seconds = time.perf_counter() - start
        exact = sum(len(set(g) & set(d)) for g, d in zip(got, sample, strict=True)) / sum(map(len, sample))
        mib = sum(len(p.encode()) for p in paragraphs) / 2**20
        emit({"bench": "corpus_splitter", "splitter": name, "documents": len(sample), "mib_per_s": mib / seconds,
              "sentences_recovered_exactly": exact}, out)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["create", "first_step", "machines", "splitters"])
    ap.add_argument("--sizes", default="10,100,1000", help="create: MiB of text, comma-separated")
    ap.add_argument("--workers", default="1,2", help="create: worker counts, comma-separated")
    ap.add_argument("--chunk_size_mb", default="8", help="create: --chunk_size_mb values, comma-separated")
    ap.add_argument("--record_gb", default="1,4", help="first_step: GiB of shard records, comma-separated")
    ap.add_argument("--tfrecord_gb", default="1", help="first_step: GiB of TFRecord records (converted: slow)")
    ap.add_argument("--timeout_s", type=float, default=6 * 3600, help="stop a run after this many seconds")
    ap.add_argument("--work_dir", default=None, help="where texts and outputs go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="create: keep the outputs")
    ap.add_argument("--out", default=str(RESULTS / f"{time.strftime('%Y-%m-%d')}-bench_corpus.jsonl"))
    args = ap.parse_args()
    if not TEXT.is_file():
        sys.exit(f"bench_corpus needs {TEXT} (../shared/data beside the repository)")
    with tempfile.TemporaryDirectory(prefix="bench_corpus-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        {"create": create, "first_step": first_step, "machines": machines, "splitters": splitters}[args.what](
            args, work, Path(args.out)
        )


if __name__ == "__main__":
    main()
