"""What stands between the network and the app: the API key, JSON-only bodies, the body's size and read timeout,
a request id, one access-log line and the request metrics per request, and no traceback for anything unexpected.

`Guard` is an ASGI middleware around the FastAPI app (pure ASGI, so it sees every byte before the app does);
`parse_json` is the strict JSON reading the routes use; `SlowHeaderProtocol` is uvicorn's HTTP protocol with a
deadline on the request head (uvicorn closes idle keep-alive connections but waits forever for a half-sent head).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid

import numpy as np

from bertkit.serve.metrics import ServerMetrics

log = logging.getLogger("bertkit.serve")
MAX_DEPTH = 32  # JSON nesting the request schemas need: 3 (a list of objects); deeper is refused before parsing
MAX_INT = 2**53  # the largest integer every JSON reader keeps exactly (JavaScript's Number.MAX_SAFE_INTEGER)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class BadRequest(ValueError):
    """A request the server refuses: `status` and a one-line `detail`."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def nesting_depth(raw: bytes) -> int:
    """The deepest [ / { nesting of a JSON text, strings left out, without parsing it (numpy over the bytes; no
    recursion, so 100,000 brackets are counted, not a RecursionError)."""
    b = np.frombuffer(_STRING.sub(b'""', raw), np.uint8)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int32) - np.isin(b, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def parse_json(raw: bytes) -> object:
    """The JSON value of a request body, refused (BadRequest 400, one line) when it is not UTF-8 JSON, nests deeper
    than MAX_DEPTH, holds NaN or Infinity, a number beyond +-2^53 or 1e308, or a string with a lone surrogate
    (\\ud800: valid JSON, but no UTF-8 answer could carry it back)."""
    if nesting_depth(raw) > MAX_DEPTH:
        raise BadRequest(400, f"the JSON nests deeper than {MAX_DEPTH} levels")

    def constant(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(400, f"the body is not valid JSON: {str(e).splitlines()[0][:200]}") from None
    stack = [value]
    while stack:  # iterative: the depth is bounded, but no recursion is needed either
        x = stack.pop()
        if isinstance(x, dict):
            stack += list(x.keys()) + list(x.values())
        elif isinstance(x, list):
            stack += x
        elif isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(400, "a string holds a lone surrogate (\\ud800-\\udfff): not valid Unicode") from None
        elif isinstance(x, float) and not abs(x) < float("inf") or isinstance(x, int) and abs(x) > MAX_INT:
            raise BadRequest(400, f"a number is out of range (integers within +-2^53, floats within 1e308): {x:.3g}")
    return value


async def respond(send, status: int, body: dict, headers: tuple = ()) -> None:
    """A JSON response, sent from the middleware."""
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware; see the module docstring. `routes`: the paths counted under their own name in the metrics
    (others count as "other"); `open_paths`: those served without the API key (/health)."""

    def __init__(
        self, app, cfg, metrics: ServerMetrics, routes: set[str], open_paths: frozenset = frozenset({"/health"})
    ):
        self.app, self.cfg, self.metrics, self.routes, self.open_paths = app, cfg, metrics, routes, open_paths
        self.key = f"Bearer {cfg.api_key}".encode() if cfg.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid, began, status, size = uuid.uuid4().hex[:12], time.perf_counter(), [0], [0]
        scope.setdefault("state", {})["request_id"] = rid

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            elif message["type"] == "http.response.body":
                size[0] += len(message.get("body", b""))
            await send(message)

        try:
            refused = self.refuse(scope)
            if refused is not None:
                return await respond(sending, *refused)
            body = await self.read_body(scope, receive)
            if body is None:  # the client left while sending
                status[0] = 499
                return None
            await self.app(scope, self.replay(body, receive), sending)
        except BadRequest as e:
            await respond(sending, e.status, {"detail": e.detail}, ((b"connection", b"close"),))
        except Exception as e:  # one line with the id, which the client gets too; never a traceback per request
            log.error(
                "request %s: internal error: %s: %s",
                rid,
                type(e).__name__,
                str(e).splitlines()[0][:300] if str(e) else "",
            )
            if status[0] == 0:
                await respond(sending, 500, {"detail": "internal error", "id": rid})
        finally:
            self.account(scope, rid, status[0], size[0], time.perf_counter() - began)

    def refuse(self, scope) -> tuple[int, dict, tuple] | None:
        """(status, body, headers) for a request refused on its head alone: the key, the content type, the size."""
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"] not in self.open_paths:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                return 401, {"detail": "missing or wrong API key: send 'Authorization: Bearer KEY'"}, (
                    (b"www-authenticate", b"Bearer"),)  # fmt: skip
        if scope["method"] in ("POST", "PUT", "PATCH"):
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":  # a browser's cross-origin "simple" POST (text/plain) stops here
                return 415, {"detail": "the body must be JSON: send 'Content-Type: application/json'"}, ()
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.cfg.max_body_bytes):
            return 413, {"detail": f"request body over {self.cfg.max_body_bytes} bytes (--max_body_bytes)"}, (
                (b"connection", b"close"),)  # fmt: skip
        return None

    async def read_body(self, scope, receive) -> bytes | None:
        """The whole body, within --max_body_bytes (else 413) and --read_timeout seconds from the request's start
        (else 408: a slow sender is cut off); None when the client disconnects."""
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + self.cfg.read_timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                raise BadRequest(
                    408, f"the body did not arrive within --read_timeout {self.cfg.read_timeout:g} s"
                ) from None
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.cfg.max_body_bytes:
                raise BadRequest(413, f"request body over {self.cfg.max_body_bytes} bytes (--max_body_bytes)")
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    def replay(body: bytes, receive):
        """The app's receive: the body read, then the real one (which waits for the disconnect)."""
        sent = False

        async def replayed():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replayed

    def account(self, scope, rid: str, status: int, size: int, seconds: float) -> None:
        route = scope["path"] if scope["path"] in self.routes else "other"
        self.metrics.requests.inc(route, str(status))
        self.metrics.latency.observe(seconds, route)
        if self.cfg.access_log:
            client = scope.get("client") or ("-", 0)
            log.info('%s:%s "%s %s" %d %dB %.1fms id=%s', client[0], client[1], scope["method"], scope["path"][:200],
                     status, size, seconds * 1000, rid)  # fmt: skip


def slow_header_protocol(timeout: float):
    """uvicorn's h11 protocol class with a deadline on each request's head: a connection that has not sent a whole
    request head `timeout` seconds after it opened (or after its last response) is closed."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class SlowHeaderProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            cycle = self.cycle
            self.loop.call_later(timeout, self._expire, cycle)

        def _expire(self, cycle) -> None:
            # No new request since arming (the same cycle, finished or none): its head never came whole.
            if self.cycle is cycle and (cycle is None or cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return SlowHeaderProtocol
