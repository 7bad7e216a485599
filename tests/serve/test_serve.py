"""`bertkit serve`: answers equal the Python API's, limits give 413 / 422 / 400 (never a 500), concurrent requests
share model batches; in-process with an HTTP client and once as a real process on a free loopback port."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from bertkit.checkpoint.formats import save_pretrained
from bertkit.cli import main
from bertkit.model.bert import BertForQuestionAnswering
from bertkit.model.config import BertConfig
from bertkit.serve.qa import QuestionAnswerer

CONTEXT = "The Denver Broncos defeated the Carolina Panthers 24–10 to earn their third Super Bowl title."
QUESTIONS = ["Who won?", "Who lost?", "What was the score?", "Which title was it?", "Who played?", "What?"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from pathlib import Path

    vocab = Path(__file__).resolve().parents[2] / "src" / "bertkit" / "data" / "vocab-bert-base-uncased.txt"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=512)  # fmt: skip
    return save_pretrained(BertForQuestionAnswering(cfg), cfg, tmp_path_factory.mktemp("tiny") / "m", vocab)


@pytest.fixture(scope="module")
def qa(tiny_dir):
    return QuestionAnswerer.from_pretrained(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def client(qa, tiny_dir):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install bertkit[serve]")
    from fastapi.testclient import TestClient

    from bertkit.serve.http import ServeConfig, create_app

    cfg = ServeConfig(model=str(tiny_dir), max_body_bytes=4000, max_context_chars=1000, max_question_chars=50,
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
    assert str(tiny_dir) not in json.dumps(info) and set(info) == {"kind", "version", "model", "windows"}
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/answer", "/health"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["AnswerRequest"]
    assert request["properties"]["context"]["maxLength"] == 1000


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
           "--access_log", "False"]  # fmt: skip
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
