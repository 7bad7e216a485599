"""`bertkit serve`: a SQuAD model (`POST /answer`) or a GLUE classifier (`POST /predict`) over HTTP, on FastAPI +
uvicorn (the `serve` extra); the model's kind is found from its checkpoint. docs/serving.md is the user's guide.

    bertkit serve --model squad_out/last_snapshot --api_key "$(openssl rand -hex 16)"
    curl -s localhost:8000/answer -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
         -d '{"question": "Who won?", "context": "The Broncos won the game."}'

Routes: `POST /answer` ({"question", "context", "top_k"?, "max_answer_length"?, "id"?} or a list of them: {"id",
"answers": [{"text", "score", "start", "end"}]} each); `POST /predict` ({"text", "text_pair"?}, a string, or a list:
{"label", "score", "scores"} each); `GET /health` ({"status": "ok"}, the one route open without the key); `GET
/info` (model kind, sizes, windows, labels, version); `GET /metrics` (Prometheus text); `/docs` and
`/openapi.json`; `/` a page to ask a QA model (without --api_key only: a browser cannot send the key).

Bounds, each with its flag: the body (--max_body_bytes 413, --read_timeout 408), the head (--read_timeout, then the
connection is closed), items per request and text lengths (422), strict JSON (400: depth, lone surrogates, numbers
out of range, NaN; 422: wrong types, never coerced), --max_concurrent_requests (429), --max_connections (503),
--request_timeout (503; the work is dropped), a client that disconnects (its work is dropped). Model work is cut
into --max_batch_tokens batches, fairly (serve/batcher.py). No input gives a 500; an internal error is one log
line with an id, which the client gets.

One process holds the model; more processes (uvicorn --workers, or several servers behind a proxy) would each load
their own copy and batch only their own requests; on a CPU they would share the cores one process's torch threads
already use. One process per GPU is the useful case. FastAPI and uvicorn are imported only when serving.
"""

# No `from __future__ import annotations`: pydantic reads the annotations of the classes defined in create_app.
import asyncio
import ipaddress
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from bertkit.data.vocab import TokenizerFlags
from bertkit.runtime.config import Composed, Section
from bertkit.serve.ask import INFERENCE_HELP, InferenceFlags, load_qa
from bertkit.serve.batcher import Batcher, Dropped
from bertkit.serve.guard import BadRequest, Guard, parse_json, slow_header_protocol
from bertkit.serve.metrics import CONTENT_TYPE, ServerMetrics
from bertkit.serve.page import PAGE
from bertkit.serve.schemas import request_models

INSTALL_HINT = "bertkit serve needs FastAPI and uvicorn: pip install bertkit[serve]"
log = logging.getLogger("bertkit.serve")


@dataclass(frozen=True)
class ServerFlags(Section):
    """The server's address, key, limits, timeouts and log."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port, printed at start)"})
    api_key: str | None = field(
        default=None,
        metadata={"help": "require 'Authorization: Bearer KEY' on every route but /health (default: $BERTKIT_API_KEY)"},
    )
    cors_allow_origin: str | None = field(
        default=None, metadata={"help": "comma-separated origins whose web pages may call the API (default: none)"}
    )
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body; larger ones get 413"})
    max_context_chars: int = field(
        default=20_000, metadata={"help": "longest context (QA) or text (classifier), in characters (else 422)"}
    )
    max_question_chars: int = field(default=1_000, metadata={"help": "longest question, in characters (else 422)"})
    max_batch_questions: int = field(default=64, metadata={"help": "most questions or texts in one request (else 422)"})
    max_batch_tokens: int | None = field(
        default=None,
        metadata={"help": "real tokens per model batch: large requests run in such batches, small ones go in between "
                          "(default: 512 on a CPU, where a small request then waits <= 2x its idle p99, measured; "
                          "16384 on a GPU, TEI's default)"},
    )  # fmt: skip
    max_concurrent_requests: int = field(
        default=64, metadata={"help": "model requests answered at once; more get 429 (retry later)"}
    )
    max_connections: int = field(default=256, metadata={"help": "open connections; more get 503"})
    request_timeout: float = field(
        default=60.0,
        metadata={"help": "seconds a request may take; then its work is dropped and it gets 503 (default: 60, "
                          "nginx's proxy_read_timeout: a proxied client has had its 504 by then)"},
    )  # fmt: skip
    read_timeout: float = field(
        default=10.0, metadata={"help": "seconds a client has to send a request's head, and its body (else 408)"}
    )
    batch_wait_ms: float = field(
        default=5.0, metadata={"help": "how long an idle model waits to collect concurrent requests into one batch"}
    )
    log_level: str = field(default="info", metadata={"help": "log level: debug, info, warning, error"})
    access_log: bool = field(default=True, metadata={"help": "one log line per request (with its id and time)"})

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_context_chars", "max_question_chars", "max_batch_questions",
                     "max_concurrent_requests", "max_connections", "request_timeout",
                     "read_timeout"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.max_batch_tokens is not None and self.max_batch_tokens <= 0:
            raise ValueError(f"--max_batch_tokens must be positive, got {self.max_batch_tokens}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"--batch_wait_ms must not be negative, got {self.batch_wait_ms}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and (
            len(self.api_key) < 8 or not self.api_key.isprintable() or " " in self.api_key
        ):
            raise ValueError("--api_key must be at least 8 printable characters without spaces")

    @property
    def origins(self) -> list[str]:
        return [o.strip() for o in (self.cors_allow_origin or "").split(",") if o.strip()]


@dataclass(frozen=True)
class ServeConfig(Composed):
    """Serve a fine-tuned SQuAD model (POST /answer) or classifier (POST /predict) over HTTP, with an API key."""

    inference: InferenceFlags
    tokenizer: TokenizerFlags
    server: ServerFlags

    HELP = INFERENCE_HELP | {"model": "fine-tuned SQuAD or `bertkit classify` checkpoint (its kind is detected)"}

    @classmethod
    def resolve(cls, values: dict) -> dict:
        return values | {"api_key": values["api_key"] or os.environ.get("BERTKIT_API_KEY") or None}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe(engine, kind: str) -> dict:
    """GET /info: the model's kind, sizes, windows, labels, precision and int8 choice, and bertkit's version; nothing
    about the filesystem."""
    from bertkit import __version__

    c = engine.model.bert.cfg
    info = {"kind": kind, "version": __version__,
            "model": {"num_hidden_layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
                      "num_attention_heads": c.num_attention_heads, "intermediate_size": c.intermediate_size,
                      "vocab_size": c.vocab_size, "max_position_embeddings": c.max_position_embeddings},
            "windows": {"max_seq_length": engine.max_seq_length},
            "precision": engine.precision, "quantize": engine.quantize}  # fmt: skip
    if kind == "qa":
        info["windows"] |= {"doc_stride": engine.doc_stride, "max_query_length": engine.max_query_length}
    else:
        info["labels"] = list(engine.labels)
    return info


def create_app(engine, cfg: ServeConfig, kind: str = "qa"):
    """The ASGI application around one loaded engine (a QuestionAnswerer, kind "qa", or a TextClassifier, kind
    "classify"): FastAPI routes inside `Guard` (and CORS when origins are allowed)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import ValidationError

    state = {"in_flight": 0}
    batcher_box: list[Batcher] = []
    metrics = ServerMetrics(lambda: batcher_box[0].queued_rows() if batcher_box else 0,
                            lambda: len(batcher_box[0].pending) if batcher_box else 0,
                            lambda: state["in_flight"])  # fmt: skip
    schemas = request_models(engine, cfg.server, kind)

    @asynccontextmanager
    async def lifespan(app):
        budget = cfg.server.max_batch_tokens or (512 if engine.env.device.type == "cpu" else 16384)
        batcher = Batcher(engine, budget, cfg.server.batch_wait_ms / 1000, metrics)
        batcher_box[:] = [batcher]
        task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            task.cancel()
            batcher.close()

    app = FastAPI(title=f"bertkit {'question answering' if kind == 'qa' else 'text classification'}",
                  description="bertkit serve: see docs/serving.md", lifespan=lifespan)  # fmt: skip

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # Starlette then re-raises: Guard logs it, in one line
        return JSONResponse({"detail": "internal error", "id": request.state.request_id}, 500)

    async def disconnected(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def work(request: Request, to_items, shape):
        """The body parsed and validated, its items through the batcher, the results shaped: or the 4xx/503."""
        if state["in_flight"] >= cfg.server.max_concurrent_requests:
            return JSONResponse({"detail": f"over --max_concurrent_requests {cfg.server.max_concurrent_requests}: retry "
                                 "later"}, 429, headers={"Retry-After": "1"})  # fmt: skip
        state["in_flight"] += 1
        try:
            try:
                body = parse_json(await request.body())
                validated = schemas.validate(body)
            except BadRequest as e:
                return JSONResponse({"detail": e.detail}, e.status)
            except ValidationError as e:
                return JSONResponse({"detail": schemas.errors(e)}, 422)
            deadline = time.monotonic() + cfg.server.request_timeout
            try:
                job = await batcher_box[0].prepare(to_items(validated), deadline)
            except ValueError as e:
                return JSONResponse({"detail": str(e).splitlines()[0]}, 422)
            watch = asyncio.ensure_future(disconnected(request.receive))
            result = asyncio.ensure_future(batcher_box[0].result(job))
            try:
                await asyncio.wait({watch, result}, timeout=max(deadline - time.monotonic(), 0),
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                watch.cancel()
            if not result.done():
                batcher_box[0].drop(job, "disconnect" if watch.done() and not watch.cancelled() else "timeout")
            try:
                found = await result
            except Dropped as e:
                if e.reason == "disconnect":
                    return Response(status_code=499)  # nobody reads it; the access log says the client left
                return JSONResponse({"detail": f"not answered within --request_timeout {cfg.server.request_timeout:g} s: "
                                     "the server is busy, retry later"}, 503, headers={"Retry-After": "1"})  # fmt: skip
            return shape(validated, found)
        finally:
            state["in_flight"] -= 1

    post = {"responses": {400: {"description": "malformed JSON"}, 401: {"description": "no or wrong API key"},
                          413: {"description": "body over --max_body_bytes"}, 415: {"description": "not JSON"},
                          429: {"description": "over --max_concurrent_requests"},
                          503: {"description": "over --request_timeout"}}}  # fmt: skip

    if kind == "qa":

        @app.post("/answer", openapi_extra=schemas.openapi_body, **post)
        async def answer(request: Request):
            """One question ({"question", "context"}) or a list of them; the answers of each, best first."""
            return await work(request, schemas.to_items, schemas.shape)

        if not cfg.server.api_key:

            @app.get("/", include_in_schema=False)
            async def page():
                return HTMLResponse(PAGE)

    else:

        @app.post("/predict", openapi_extra=schemas.openapi_body, **post)
        async def predict(request: Request):
            """One text ({"text", "text_pair"?} or a string) or a list of them; each one's label and scores."""
            return await work(request, schemas.to_items, schemas.shape)

    other, served = (
        ("/predict", "a QA model: POST /answer") if kind == "qa" else ("/answer", "a classifier: POST /predict")
    )

    @app.post(other, include_in_schema=False)
    async def the_other_route():  # a client of the other kind of model gets told, not a bare 404
        return JSONResponse({"detail": f"this server serves {served}"}, status_code=404)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    info = describe(engine, kind)

    @app.get("/info")
    async def get_info() -> dict:
        return info

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    schemas.install_openapi(app)
    routes = {"/answer", "/predict", "/health", "/info", "/metrics", "/"}
    guarded = Guard(app, cfg.server, metrics, routes)
    if cfg.server.origins:
        from starlette.middleware.cors import CORSMiddleware

        return CORSMiddleware(guarded, allow_origins=cfg.server.origins, allow_methods=["GET", "POST"],
                              allow_headers=["authorization", "content-type"])  # fmt: skip
    return guarded


def load_engine(cfg: ServeConfig):
    """(engine, kind): a TextClassifier for a checkpoint with a classifier head, else a QuestionAnswerer."""
    from bertkit.serve.classify import TextClassifier, is_classifier

    if is_classifier(cfg.inference.model_path()):
        m, t = cfg.inference, cfg.tokenizer
        return TextClassifier.from_pretrained(
            m.model, vocab_file=t.vocab_file, do_lower_case=t.do_lower_case, check_casing=t.check_casing,
            device=m.inference_device(), batch_size=m.batch_size, max_seq_length=m.max_seq_length,
            precision=m.precision, quantize=m.quantize,
        ), "classify"  # fmt: skip
    return load_qa(cfg), "qa"


def run(cfg: ServeConfig) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    log.setLevel(cfg.server.log_level.upper())
    if not log.handlers and not logging.getLogger().handlers:  # the command's own log; an embedding app keeps its own
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    if not is_loopback(cfg.server.host) and not cfg.server.api_key:
        log.warning("serving on %s without --api_key (or BERTKIT_API_KEY): anyone who can reach it can use it",
                    cfg.server.host)  # fmt: skip
    started = time.perf_counter()
    engine, kind = load_engine(cfg)
    how = "int8" if engine.quantize == "int8" else engine.precision
    print(f"loaded a {'QA model' if kind == 'qa' else 'classifier'} on {engine.env.device} ({how}) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
    uvicorn.run(create_app(engine, cfg, kind), host=cfg.server.host, port=cfg.server.port, log_level=cfg.server.log_level,
                access_log=False, limit_concurrency=cfg.server.max_connections,
                http=slow_header_protocol(cfg.server.read_timeout))  # fmt: skip
