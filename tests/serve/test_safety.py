"""`bertkit serve` never gives a 500 for an input (strict JSON, strict types; a hypothesis fuzz of the schema), an
internal error is one log line with an id, the API key guards every route but /health, only JSON bodies are
taken (a cross-origin text/plain POST is refused), CORS only for the origins given; /metrics and the access log."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_fixtures import CONTEXT, JSON, samples

from bertkit.serve.http import ServeConfig

GOOD = {"question": "Who won?", "context": CONTEXT}
KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def client(make_client, tiny_qa):
    with make_client(tiny_qa, max_body_bytes=100_000, max_batch_questions=8) as c:
        yield c


def post(client, raw: bytes | str, headers=JSON):
    return client.post("/answer", content=raw.encode() if isinstance(raw, str) else raw, headers=headers)


@pytest.mark.parametrize(
    "raw, status, says",
    [
        ("[" * 40_000 + "]" * 40_000, 400, "nests deeper"),  # a RecursionError in json.loads
        ('{"question": ' + "[" * 5000 + "]" * 5000 + ', "context": "c"}', 400, "nests deeper"),
        ('{"question": "Who?", "context": "c", "id": "\\ud800"}', 400, "lone surrogate"),  # was a 500 after the work
        ('{"question": "\\udfff", "context": "c"}', 400, "lone surrogate"),
        ('{"question": "Who?", "context": "c", "id": 10000000000000000000000000000000000000000}', 400, "out of range"),
        ('{"question": "Who?", "context": "c", "id": 1e400}', 400, "out of range"),
        ('{"question": "Who?", "context": "c", "top_k": NaN}', 400, "not a JSON number"),
        ('{"question": "Who?", "context": "c", "top_k": "3"}', 422, "top_k"),  # was coerced to 3
        ('{"question": "Who?", "context": "c", "top_k": true}', 422, "top_k"),  # was coerced to 1
        ('{"question": "Who?", "context": "c", "top_k": 3.0}', 422, "top_k"),
        ('{"question": "Who?", "context": "c", "id": true}', 422, "id"),
        ('{"question": "Who?", "context": "c", "id": [1]}', 422, "id"),
        ('{"question": 5, "context": "c"}', 422, "question"),
    ],
)
def test_bad_input_is_a_4xx_with_a_one_line_reason(client, raw, status, says):
    r = post(client, raw)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    assert says in text and "\n" not in text


def test_numbers_in_range_are_taken_as_given(client, tiny_qa):
    r = post(client, json.dumps({**GOOD, "id": 2**53, "top_k": 2}))
    assert r.status_code == 200 and r.json()["id"] == 2**53 and len(r.json()["answers"]) == 2


# A value of any JSON type, nested a few levels, with every character (lone surrogates included) and big numbers.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
request_like = st.fixed_dictionaries(
    {"question": json_values | st.text(min_size=1, max_size=40), "context": json_values | st.just(CONTEXT)},
    optional={"top_k": json_values | st.integers(-3, 30), "max_answer_length": json_values, "id": json_values,
              "extra": json_values},
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=request_like | st.lists(request_like, max_size=3) | json_values)
def test_fuzzed_requests_never_get_a_5xx(client, body):
    r = post(client, json.dumps(body))  # ensure_ascii: lone surrogates travel as \\udxxx escapes
    assert r.status_code in (200, 400, 422), r.text


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzzed_bytes_never_get_a_5xx(client, raw):
    assert post(client, raw).status_code in (400, 422)


def test_an_internal_error_is_one_log_line_and_an_id(client, tiny_qa, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("boom\nsecond line of the message")

    monkeypatch.setattr(tiny_qa, "finish", broken)
    with caplog.at_level(logging.INFO, logger="bertkit.serve"):
        r = post(client, json.dumps(GOOD))
    assert r.status_code == 500 and r.json()["detail"] == "internal error"
    rid = r.json()["id"]
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and rid in errors[0].getMessage() and "boom" in errors[0].getMessage()
    assert errors[0].exc_info is None and "\n" not in errors[0].getMessage()  # no traceback
    assert r.headers["x-request-id"] == rid
    monkeypatch.undo()
    assert post(client, json.dumps(GOOD)).status_code == 200  # the server goes on


# --- safe by default ---------------------------------------------------------------------------------------------


def test_the_api_key_guards_every_route_but_health(make_client, tiny_qa):
    with make_client(tiny_qa, api_key=KEY) as c:
        assert c.get("/health").json() == {"status": "ok"}
        for path in ("/info", "/metrics", "/docs", "/openapi.json", "/"):
            assert c.get(path).status_code == 401, path
        assert c.post("/answer", json=GOOD).status_code == 401
        wrong = {"Authorization": "Bearer not-the-key"}
        assert c.post("/answer", json=GOOD, headers=wrong).status_code == 401
        r = c.post("/answer", json=GOOD, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["answers"]
        assert c.get("/info", headers={"Authorization": f"Bearer {KEY}"}).json()["kind"] == "qa"


def test_the_key_comes_from_the_environment_too(monkeypatch, tiny_qa_dir):
    monkeypatch.setenv("BERTKIT_API_KEY", KEY)
    assert ServeConfig.from_flags(model=str(tiny_qa_dir)).server.api_key == KEY
    with pytest.raises(ValueError, match="--api_key"):
        ServeConfig.from_flags(model=str(tiny_qa_dir), api_key="short")


def test_only_json_bodies_and_no_cors_by_default(client):
    evil = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    r = post(client, json.dumps(GOOD), headers=evil)  # what a web page can send cross-origin without a preflight
    assert r.status_code == 415 and "access-control-allow-origin" not in r.headers
    assert (
        post(client, json.dumps(GOOD), headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    )
    r = post(client, json.dumps(GOOD), headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/answer", headers=preflight).headers


def test_cors_for_the_allowed_origin_only(make_client, tiny_qa):
    with make_client(tiny_qa, cors_allow_origin="https://app.example", api_key=KEY) as c:
        ok = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
        r = c.options("/answer", headers=ok)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.options("/answer", headers={**ok, "Origin": "https://evil.example"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"
        r = c.post("/answer", json=GOOD, headers={"Origin": "https://app.example", "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"


def test_a_warning_for_a_public_address_without_a_key(tiny_qa_dir, monkeypatch, caplog):
    pytest.importorskip("uvicorn")
    import uvicorn

    from bertkit.serve import http

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    for host, key, warned in (("0.0.0.0", None, True), ("0.0.0.0", KEY, False), ("127.0.0.1", None, False)):
        caplog.clear()
        monkeypatch.delenv("BERTKIT_API_KEY", raising=False)
        with caplog.at_level(logging.WARNING, logger="bertkit.serve"):
            http.run(ServeConfig.from_flags(model=str(tiny_qa_dir), host=host, api_key=key, device="cpu"))
        assert any("without --api_key" in r.getMessage() for r in caplog.records) == warned, (host, key)


# --- observable --------------------------------------------------------------------------------------------------


def test_metrics_are_prometheus_text_and_count_what_happened(client):
    before = samples(client.get("/metrics").text)
    post(client, json.dumps(GOOD))
    post(client, b"{oops")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = samples(r.text)

    def grew(key):
        return after.get(key, 0) - before.get(key, 0)

    assert grew('bertkit_requests_total{route="/answer",status="200"}') == 1
    assert grew('bertkit_requests_total{route="/answer",status="400"}') == 1
    assert grew("bertkit_batch_rows_count") >= 1 and grew("bertkit_tokens_total") > 0
    assert grew('bertkit_request_duration_seconds_count{route="/answer"}') == 2
    for name in ("bertkit_queue_rows", "bertkit_queue_requests", "bertkit_requests_in_flight"):
        assert after[name] == 0
    for name in ("bertkit_requests_total", "bertkit_batch_tokens", "bertkit_request_duration_seconds"):
        assert f"# TYPE {name} " in r.text
    buckets = [v for k, v in after.items() if k.startswith("bertkit_batch_tokens_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == after["bertkit_batch_tokens_count"]  # cumulative, +Inf last


def test_one_access_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="bertkit.serve"):
        r = post(client, json.dumps(GOOD))
        client.get("/health")
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 2
    assert '"POST /answer" 200' in lines[0] and f"id={r.headers['x-request-id']}" in lines[0]
    assert '"GET /health" 200' in lines[1]
