"""`bertkit serve`: answers equal the Python API's, limits give 413 / 422 / 400 (never a 500), concurrent requests
share model batches; in-process with an HTTP client and as a real process on a free loopback port, where a client
that disconnects has its work dropped, slow senders are cut off and open connections are limited."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_fixtures import samples

from bertkit.cli import main

CONTEXT = "The Denver Broncos defeated the Carolina Panthers 24–10 to earn their third Super Bowl title."
QUESTIONS = ["Who won?", "Who lost?", "What was the score?", "Which title was it?", "Who played?", "What?"]


@pytest.fixture(scope="module")
def tiny_dir(tiny_qa_dir):
    return tiny_qa_dir  # conftest's tiny random QA model


@pytest.fixture(scope="module")
def qa(tiny_qa):
    return tiny_qa


@pytest.fixture(scope="module")
def client(qa, tiny_dir):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install bertkit[serve]")
    from fastapi.testclient import TestClient

    from bertkit.serve.http import ServeConfig, create_app

    cfg = ServeConfig.from_flags(model=str(tiny_dir), max_body_bytes=4000, max_context_chars=1000, max_question_chars=50,
                      max_batch_questions=8, batch_wait_ms=50)  # fmt: skip
    with TestClient(create_app(qa, cfg, "qa")) as c:
        yield c


def expected(qa, question, top_k=1):
    """The API's answers; in a batch with others, scores move in the last digits (another padding length)."""
    return [{**a.to_dict(), "score": pytest.approx(a.score, rel=1e-5)} for a in qa(question, CONTEXT, top_k=top_k)]


def test_one_question_and_many(client, qa):
    r = client.post("/answer", json={"question": "Who won?", "context": CONTEXT, "top_k": 2})
    assert r.status_code == 200 and r.json() == {"id": None, "answers": expected(qa, "Who won?", 2)}
    body = [{"id": i, "question": q, "context": CONTEXT} for i, q in enumerate(QUESTIONS[:3])]
    r = client.post("/answer", json=body)
    assert r.status_code == 200
    assert r.json() == [{"id": i, "answers": expected(qa, q)} for i, q in enumerate(QUESTIONS[:3])]


def scrape(client, name: str) -> float:
    """One unlabelled sample (or a histogram's _count) of GET /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_concurrent_requests_share_model_batches(client, qa):
    before = scrape(client, "bertkit_batch_rows_count")
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        replies = list(pool.map(lambda q: client.post("/answer", json={"question": q, "context": CONTEXT}), QUESTIONS))
    assert [r.json()["answers"] for r in replies] == [expected(qa, q) for q in QUESTIONS]
    batches = scrape(client, "bertkit_batch_rows_count") - before
    assert 1 <= batches < len(QUESTIONS)  # some requests were answered together


@pytest.mark.parametrize(
    "body, field",
    [
        ({"question": "Who?"}, "context"),
        ({"question": "Who?", "context": 5}, "context"),
        ({"question": "", "context": CONTEXT}, "question"),
        ({"question": "Who?" * 20, "context": CONTEXT}, "question"),  # over max_question_chars
        ({"question": "Who?", "context": "x " * 600}, "context"),  # over max_context_chars
        ({"question": "Who?", "context": CONTEXT, "top_k": 21}, "top_k"),
        ({"question": "Who?", "context": CONTEXT, "max_answer_length": 0}, "max_answer_length"),
        ({"question": "Who?", "context": CONTEXT, "colour": "red"}, "colour"),
        ([{"question": "Who?", "context": CONTEXT}, {"question": "Who?"}], 1),
    ],
)
def test_invalid_fields_are_named_in_a_422(client, body, field):
    r = client.post("/answer", json=body)
    assert r.status_code == 422
    assert field in r.json()["detail"][0]["loc"], r.json()


JSON = {"Content-Type": "application/json"}


def test_limits_and_malformed_bodies_are_4xx_without_tracebacks(client):
    many = [{"question": "Who?", "context": "c"}] * 9  # over max_batch_questions
    r = client.post("/answer", json=many)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]
    big = json.dumps({"question": "Who?", "context": "x" * 5000})
    assert client.post("/answer", content=big, headers=JSON).status_code == 413  # by Content-Length
    r = client.post(
        "/answer", content=(big[i : i + 1000].encode() for i in range(0, len(big), 1000)), headers=JSON
    )  # chunked
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
    for bad in (b"{not json", b"\xff\xfe", b""):
        r = client.post("/answer", content=bad, headers=JSON)
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    for body in (b"[]", b'"text"', b"5", b"null"):
        assert client.post("/answer", content=body, headers=JSON).status_code == 422
    assert client.get("/answer").status_code == 405
    r = client.post("/answer", json={"question": "Who?", "context": "   "})  # no words: no answers, not an error
    assert r.status_code == 200 and r.json()["answers"] == []


def test_health_info_and_openapi_page(client, tiny_dir):
    assert client.get("/health").json() == {"status": "ok"}  # nothing about the model's path
    info = client.get("/info").json()
    assert info["kind"] == "qa" and info["model"]["hidden_size"] == 32 and info["windows"]["max_seq_length"] == 384
    assert str(tiny_dir) not in json.dumps(info)
    assert set(info) == {"kind", "version", "model", "windows", "precision", "quantize"}
    assert (info["precision"], info["quantize"]) == ("fp32", "none")
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/answer", "/health"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["AnswerRequest"]
    assert request["properties"]["context"]["maxLength"] == 1000
    r = client.post("/predict", json={"text": "a classifier's request"})  # the other kind of model's route
    assert r.status_code == 404 and r.json() == {"detail": "this server serves a QA model: POST /answer"}


def test_without_the_extra_one_line_and_exit_2(tiny_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now raises ImportError
    assert main(["serve", "--model", str(tiny_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install bertkit[serve]" in err[0]


@pytest.fixture(scope="module")
def server_url(tiny_dir):
    """`python -m bertkit serve` as a real process on a free loopback port (--port 0: it prints the port)."""
    pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install bertkit[serve]")
    cmd = [sys.executable, "-m", "bertkit", "serve", "--model", str(tiny_dir), "--port", "0", "--device", "cpu",
           "--access_log", "False", "--max_batch_tokens", "300", "--read_timeout", "1", "--max_connections", "12",
           "--max_body_bytes", "1000000"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url, log = time.monotonic() + 120, None, []
        while url is None and time.monotonic() < deadline and (line := server.stdout.readline()):
            log.append(line)
            if m := re.search(r"running on (http://127\.0\.0\.1:\d+)", line):
                url = m[1]
        assert url, "".join(log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_real_server_process_on_a_free_loopback_port(server_url, qa):
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=server_url, timeout=30) as http:
        assert http.get("/health").json()["status"] == "ok"
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda q: http.post("/answer", json={"question": q, "context": CONTEXT}),
                                    QUESTIONS[:3]))  # fmt: skip
        assert [r.json()["answers"] for r in replies] == [expected(qa, q) for q in QUESTIONS[:3]]
        assert http.post("/answer", content=b"{oops", headers=JSON).status_code == 400


def test_the_page_highlights_the_answer(client, qa):
    page = client.get("/")
    assert page.status_code == 200 and 'id="context"' in page.text and 'fetch("answer"' in page.text


def test_the_page_in_headless_chromium(server_url, qa, tmp_path):
    """The page asks on load when given ?question=&context=, and Chromium's DOM then holds the answer in <mark>."""
    import shutil
    import urllib.parse

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    query = urllib.parse.urlencode({"question": "Who won?", "context": CONTEXT})
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                          "--virtual-time-budget=10000", "--dump-dom", f"{server_url}/?{query}"],
                         capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    a = qa("Who won?", CONTEXT)[0]
    assert f"<mark>{CONTEXT[a.start : a.end]}</mark>" in dom, dom[-2000:]


@pytest.fixture(scope="module")
def server_port(server_url) -> int:
    return int(server_url.rsplit(":", 1)[1])


# --- the real server: disconnects, slow senders, open connections -----------------------------------------------


def http(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return everything the server sends until it closes or `timeout` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


def request(path: str, body: bytes | None = None) -> bytes:
    head = f"{'POST' if body is not None else 'GET'} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is None:
        return (head + "\r\n").encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def metrics(port: int) -> dict[str, float]:
    return samples(http(port, request("/metrics")).split(b"\r\n\r\n", 1)[1].decode())


def test_a_client_that_disconnects_has_its_work_dropped(server_port):
    context = " ".join(["The Denver Broncos defeated the Carolina Panthers to earn the title."] * 200)  # 13,800 chars
    body = json.dumps([{"question": f"Who won game {i}?", "context": context} for i in range(64)]).encode()  # 900 KB
    before = metrics(server_port)
    with socket.create_connection(("127.0.0.1", server_port)) as s:
        s.sendall(request("/answer", body))
        time.sleep(0.3)  # tokenized and running
    time.sleep(1.0)
    after = metrics(server_port)
    dropped = after.get('bertkit_requests_dropped_total{reason="disconnect"}', 0)
    dropped -= before.get('bertkit_requests_dropped_total{reason="disconnect"}', 0)
    rows = after["bertkit_batch_rows_sum"] - before.get("bertkit_batch_rows_sum", 0)
    assert dropped == 1 and rows < 64 * 10, (
        dropped,
        rows,
    )  # 64 x 11 windows  # stopped between batches, not run to the end
    assert after["bertkit_queue_rows"] == 0 and after["bertkit_requests_in_flight"] == 0
    reply = http(server_port, request("/answer", json.dumps({"question": "Who won?", "context": CONTEXT}).encode()))
    assert reply.startswith(b"HTTP/1.1 200")


def test_slow_senders_are_cut_off(server_port):
    began = time.monotonic()
    head = b"POST /answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as s:  # a body that never completes
        s.sendall(head)
        got = b""
        for _ in range(5):  # one byte a second, as the fault-injection run did
            got += _recv_or_empty(s, 1.0)
            if got:
                break
            s.sendall(b" ")
        while chunk := _recv_or_empty(s, 2.0):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")  # the body is lost when our last byte turned the close into a reset
    assert head.startswith(b"HTTP/1.1 408") and (not body or b"read_timeout" in body)
    assert time.monotonic() - began < 4
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as s:  # half a request head
        s.sendall(b"POST /answer HTTP/1.1\r\nHost: x\r\n")
        t = time.monotonic()
        assert s.recv(100) == b"" and time.monotonic() - t < 3  # closed after --read_timeout 1


def _recv_or_empty(s: socket.socket, seconds: float) -> bytes:
    s.settimeout(seconds)
    try:
        return s.recv(65536)
    except (TimeoutError, ConnectionResetError):  # a reset: the server closed with our last byte unread
        return b""


def test_open_connections_are_limited(server_port):
    idle = [socket.create_connection(("127.0.0.1", server_port)) for _ in range(12)]
    try:
        reply = http(server_port, request("/health"))
        assert reply.startswith(b"HTTP/1.1 503")
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    assert http(server_port, request("/health")).startswith(b"HTTP/1.1 200")
