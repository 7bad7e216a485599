"""`bertkit serve`: a question-answering model over HTTP, on FastAPI + uvicorn (the `serve` extra).

    bertkit serve --model squad_out/last_snapshot --host 127.0.0.1 --port 8000
    curl -s localhost:8000/answer -d '{"question": "Who won?", "context": "The Broncos won the game."}'

Endpoints: `POST /answer` takes one {"question", "context", "top_k"?, "max_answer_length"?, "id"?} object and returns
{"id", "answers": [{"text", "score", "start", "end"}]}, or takes a JSON array of such objects (at most
--max_batch_questions) and returns an array of results in order; `GET /health` says the server is up and how many
questions and model batches it has answered; `/docs` is the OpenAPI page (`/openapi.json` its schema); `/` is a
small page to paste a context, ask, and see the answer highlighted in it.

One process holds the model, loaded once. Requests that arrive within --batch_wait_ms of each other are answered
in one model call: their windows are batched together (`QuestionAnswerer.answer`), on one worker thread, while the
event loop keeps reading the next requests. Limits, each checked before any model work: the body size
(--max_body_bytes, else 413), the question and context lengths and the questions per request (else 422 with a
JSON error naming the field: {"detail": [{"loc": ["body", "context"], "msg", "type"}]}), malformed JSON (400).
No input gives a 500, and none carries a traceback.

More processes (uvicorn --workers, or several servers behind a proxy) would each load their own copy of the model
(the RSS that bench_serve.py reports, per process) and batch only their own requests, so smaller batches; on a CPU
they would share the same cores that one process's torch threads already use. One process per GPU is the useful
case.

FastAPI and uvicorn are imported only when serving: `import bertkit` and `bertkit --help` never need them.
"""

# No `from __future__ import annotations`: FastAPI and pydantic read the annotations of the classes and
# functions defined inside create_app at run time, where their names are local.
import asyncio
import ctypes
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bertkit.serve.qa import Answer, QAModelFlags, Query, QuestionAnswerer

INSTALL_HINT = "bertkit serve needs FastAPI and uvicorn: pip install bertkit[serve]"

# The page at `/`: paste a context, ask, see the answer highlighted. `/?question=...&context=...` asks at once
# (what the headless-Chromium test loads).
PAGE = """<!doctype html><meta charset="utf-8"><title>bertkit question answering</title>
<style>body{font:16px sans-serif;max-width:50em;margin:2em auto}textarea,input{width:100%;box-sizing:border-box}
mark{background:#fd5}#shown{white-space:pre-wrap;margin-top:1em}</style>
<h1>Ask a question about a text</h1>
<textarea id="context" rows="10" placeholder="Paste the context here"></textarea>
<p><input id="question" placeholder="Your question"><p><button id="ask">Answer</button> <span id="answer"></span>
<div id="shown"></div>
<script>
const $ = (id) => document.getElementById(id);
async function ask() {
  const context = $("context").value, question = $("question").value;
  const r = await fetch("answer", {method: "POST", headers: {"Content-Type": "application/json"},
                                   body: JSON.stringify({question, context})});
  const body = await r.json(), a = r.ok ? body.answers[0] : null;
  $("answer").textContent = r.ok ? (a && a.text ? `${a.text} (score ${a.score.toFixed(3)})` : "(no answer)")
                                 : JSON.stringify(body.detail);
  const mark = document.createElement("mark");
  mark.textContent = a && a.text ? context.slice(a.start, a.end) : "";
  $("shown").replaceChildren(a && a.text ? context.slice(0, a.start) : context, mark, a && a.text ? context.slice(a.end) : "");
}
$("ask").onclick = ask;
const given = new URLSearchParams(location.search);
if (given.has("question") && given.has("context")) {
  $("question").value = given.get("question"); $("context").value = given.get("context"); ask();
}
</script>
"""


@dataclass
class ServeConfig(QAModelFlags):
    """Serve a fine-tuned SQuAD model over HTTP: POST /answer, GET /health, OpenAPI page at /docs."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port, printed at start)"})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body; larger ones get 413"})
    max_context_chars: int = field(default=20_000, metadata={"help": "longest context, in characters (else 422)"})
    max_question_chars: int = field(default=1_000, metadata={"help": "longest question, in characters (else 422)"})
    max_batch_questions: int = field(default=64, metadata={"help": "most questions in one request (else 422)"})
    batch_wait_ms: float = field(
        default=5.0, metadata={"help": "how long a model batch waits to collect concurrent requests"}
    )
    log_level: str = field(default="info", metadata={"help": "uvicorn's log level: debug, info, warning, error"})
    access_log: bool = field(default=True, metadata={"help": "log every request (uvicorn's access log)"})

    def __post_init__(self) -> None:
        self.check_model_flags()
        for name in ("max_body_bytes", "max_context_chars", "max_question_chars", "max_batch_questions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"--batch_wait_ms must not be negative, got {self.batch_wait_ms}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")


def _heap_trimmer():
    """glibc's malloc_trim, or a no-op where there is none. Batches of ever-different shapes leave freed heap memory
    that glibc keeps: without trimming, the server's RSS grew by 122 MiB in 30 s of bench_serve.py load (tiny
    model), with it by a few MiB (the memory is free, not leaked)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None


class Batcher:
    """Collects the queries of concurrent requests for up to `wait_s` (or until `max_questions`) and answers them in
    one `QuestionAnswerer.answer` call on a single worker thread (the model runs one batch at a time)."""

    def __init__(self, qa: QuestionAnswerer, cfg: ServeConfig):
        self.qa, self.cfg = qa, cfg
        self.wait_s = cfg.batch_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertkit-model")
        self.questions = self.batches = self.requests = 0
        self.trim = _heap_trimmer()

    def _answer(self, queries: list[Query]) -> list[list[Answer]]:
        """On the worker thread: the model on one batch, then freed memory handed back to the system."""
        try:
            return self.qa.answer(queries)
        finally:
            self.trim()

    async def submit(self, queries: list[Query]) -> list[list[Answer]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((queries, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            if self.wait_s > 0:  # the collection window (requests also queue up while the model runs)
                await asyncio.sleep(self.wait_s)
            count = len(items[0][0])
            while count < self.cfg.max_batch_questions and not self.queue.empty():
                items.append(self.queue.get_nowait())
                count += len(items[-1][0])
            items = [(queries, future) for queries, future in items if not future.done()]  # clients that left
            queries = [q for qs, _ in items for q in qs]
            if not queries:
                continue
            try:
                answers = await loop.run_in_executor(self.worker, self._answer, queries)
            except Exception as e:  # reported to each waiting request; the server goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches, self.questions, self.requests = self.batches + 1, self.questions + len(queries), \
                self.requests + len(items)  # fmt: skip
            i = 0
            for qs, future in items:
                if not future.done():
                    future.set_result(answers[i : i + len(qs)])
                i += len(qs)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, by its Content-Length or, when streamed
    without one, as soon as the bytes read pass the limit; the body read is handed on to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large(send)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: the disconnect message, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        body = json.dumps({"detail": f"request body over {self.limit} bytes (--max_body_bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def _errors(exc) -> list[dict]:
    """Pydantic's errors without the offending input (a context can be megabytes) or internals."""
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def create_app(qa: QuestionAnswerer, cfg: ServeConfig, model_name: str = ""):
    """The FastAPI application around one loaded QuestionAnswerer, wrapped in the body-size limit."""
    from contextlib import asynccontextmanager
    from typing import Annotated

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

    class AnswerRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: Annotated[str | int | None, Field(description="echoed back with the answers")] = None
        question: Annotated[str, Field(min_length=1, max_length=cfg.max_question_chars)]
        context: Annotated[str, Field(min_length=1, max_length=cfg.max_context_chars)]
        top_k: Annotated[int, Field(ge=1, le=qa.n_best_size, description="answers, best first")] = 1
        max_answer_length: Annotated[int, Field(ge=1, le=qa.max_seq_length, description="in tokens")] = 30

    class AnswerOut(BaseModel):
        text: str
        score: Annotated[float, Field(description="P(start) x P(end) in the answer's window, as HF's pipeline")]
        start: Annotated[int, Field(description="first character of the answer in the context")]
        end: Annotated[int, Field(description="one past its last character")]

    class AnswerResponse(BaseModel):
        id: str | int | None = None
        answers: list[AnswerOut]

    one = TypeAdapter(AnswerRequest)
    many = TypeAdapter(Annotated[list[AnswerRequest], Field(min_length=1, max_length=cfg.max_batch_questions)])
    request_schema = {
        "anyOf": [
            {"$ref": "#/components/schemas/AnswerRequest"},
            {"type": "array", "items": {"$ref": "#/components/schemas/AnswerRequest"}, "minItems": 1,
             "maxItems": cfg.max_batch_questions},
        ]
    }  # fmt: skip

    @asynccontextmanager
    async def lifespan(app):
        app.state.batcher = Batcher(qa, cfg)
        task = asyncio.create_task(app.state.batcher.run())
        try:
            yield
        finally:
            task.cancel()
            app.state.batcher.worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="bertkit question answering",
        description="Answers questions about a context with a fine-tuned SQuAD model (Google's span rule).",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _errors(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # logged by uvicorn; the client gets no traceback
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE)

    @app.get("/health")
    async def health() -> dict:
        b = app.state.batcher
        return {"status": "ok", "model": model_name, "device": str(qa.env.device), "requests": b.requests,
                "questions": b.questions, "batches": b.batches}  # fmt: skip

    @app.post(
        "/answer",
        response_model=AnswerResponse | list[AnswerResponse],
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema}}}},
        responses={400: {"description": "malformed JSON"}, 413: {"description": "body over --max_body_bytes"}},
    )
    async def answer(request: Request):
        """One question ({"question", "context"}) or a list of them; the answers of each, best first."""
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            return JSONResponse({"detail": f"the body is not valid JSON: {e}"}, status_code=400)
        try:
            items = many.validate_python(body) if isinstance(body, list) else [one.validate_python(body)]
        except ValidationError as e:
            return JSONResponse({"detail": [{**err, "loc": ["body", *err["loc"]]} for err in _errors(e)]}, 422)
        queries = [Query(r.question, r.context, r.top_k, r.max_answer_length) for r in items]
        found = await app.state.batcher.submit(queries)
        out = [{"id": r.id, "answers": [a.to_dict() for a in answers]} for r, answers in zip(items, found, strict=True)]
        return out if isinstance(body, list) else out[0]

    # The request schema is referenced by the OpenAPI page; FastAPI lists only models it sees in signatures.
    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes)
            defs = one.json_schema(ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {})["AnswerRequest"] = defs
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return BodyLimit(app, cfg.max_body_bytes)


def run(cfg: ServeConfig) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    started = time.perf_counter()
    qa = cfg.load()
    print(f"loaded {cfg.model} on {qa.env.device} in {time.perf_counter() - started:.1f} s", flush=True)
    uvicorn.run(create_app(qa, cfg, cfg.model), host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                access_log=cfg.access_log)  # fmt: skip
