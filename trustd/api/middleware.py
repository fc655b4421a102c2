"""ASGI middleware: request ids, body size limit, the last word on unexpected errors, access
log and latency metrics."""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi.routing import APIRoute
from fastapi.telemetry._api import _route_selected
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trustd import metrics
from trustd.api.problems import PROBLEM_JSON, problem_type
from trustd.errors import PayloadTooLarge
from trustd.logs import AccessLog
from trustd.services.audit import request_id_var

access_log = structlog.get_logger("trustd.access")
error_log = structlog.get_logger("trustd.api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Requests the `default` access log leaves out: each agent holds a sync long-poll open all
# the time, probes and scrapers call every few seconds, and a line for each would bury
# the requests a person made (still counted in the latency metrics).
QUIET_PATHS = frozenset({"/v1/agents/sync", "/healthz", "/readyz", "/health", "/metrics"})


class RequestIds:
    """16 hex digits: a random per-process prefix and a counter. os.urandom (behind
    `secrets`) is a system call per request; request ids only need to be unique, not
    unguessable (they are echoed to the caller and name log lines and audit rows)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFF:08x}"


_request_ids = RequestIds()


class RequestContext:
    """Gives each request an id (the caller's `X-Request-ID` if sane), binds it to logs and
    audit rows, enforces the body size limit and records latency.
    """

    def __init__(self, app: ASGIApp, max_body: int, access_log: AccessLog = "all") -> None:
        self.app = app
        self.max_body = max_body
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _REQUEST_ID.match(supplied) else _request_ids.next()
        token = request_id_var.set(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        started_response = False
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            too_large = True
        elif length is None and scope["method"] in _BODY_METHODS:
            too_large, receive = await self._buffer(receive)
        else:
            too_large = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            if too_large:
                await _too_large(self.max_body, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # An exception no handler mapped ends here, logged once. It is not re-raised:
            # Starlette's ServerErrorMiddleware and the server would each log it again.
            # Once the response has started there is nothing left to answer with; the
            # server then closes the connection and logs it (the only log line).
            if started_response:
                raise
            error_log.exception("unhandled_error", error=type(exc).__name__)
            await _internal_error(send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(scope["method"], path, str(status)).observe(elapsed)
            if self._logs(scope["path"], status):
                # The path only: query strings may carry secrets (ACME tokens, `?token=`).
                access_log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")
            request_id_var.reset(token)

    def _logs(self, path: str, status: int) -> bool:
        if self.access_log == "default":
            # A quiet path that fails is news: a rejected agent sync, a failing probe.
            return path not in QUIET_PATHS or status >= 400
        return self.access_log == "all"

    async def _buffer(self, receive: Receive) -> tuple[bool, Receive]:
        """Read a body sent without Content-Length (chunked) up to the limit, then replay it."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False, _replay([message])
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return True, receive
            if not message.get("more_body", False):
                break
        return False, _replay([{"type": "http.request", "body": b"".join(chunks)}], receive)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


async def _too_large(limit: int, send: Send) -> None:
    await send_problem(
        send,
        413,
        PayloadTooLarge.title,
        f"request bodies are limited to {limit} bytes",
        problem_type(PayloadTooLarge.__name__),
    )


async def _internal_error(send: Send) -> None:
    # The client learns nothing about internals (trustd.api.problems does the same).
    await send_problem(send, 500, "Internal error", "the server could not complete this")


async def send_problem(
    send: Send, status: int, title: str, detail: str, type_: str = "about:blank", **extra: Any
) -> None:
    """Answer with an RFC 9457 problem document from ASGI middleware (below the app's
    exception handlers)."""
    body = json.dumps(
        {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- JSON nesting -------------------------------------------------------------------------

# A JSON string (possibly unterminated: it then runs to the end, as the parser would read
# it). Possessive, so a body of many quotes is scanned in linear time; unrolled (runs of
# plain characters, then one escape at a time), which the regex engine scans ten times
# faster than one alternation per character.
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\Z)', re.DOTALL)
# Every byte but the four brackets, for `bytes.translate` to delete.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")
# Bodies that are not JSON text: scanning them would only find brackets by chance.
_NOT_JSON = frozenset(
    {
        "application/gzip",
        "application/x-gzip",
        "application/octet-stream",
        "application/ocsp-request",
        "application/pkcs10",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    }
)
# The OPA-compatible API answers with OPA's error body (`code`, `message`) as well.
_OPA_PREFIXES = ("/v1/data", "/v1/query", "/v1/batch", "/v1/policies", "/v1/compile")


def json_depth_exceeds(text: bytes, limit: int) -> bool:
    """Whether JSON `text` nests arrays and objects deeper than `limit`. Brackets inside
    strings do not count; text that is not JSON is judged as the JSON parser would read it
    up to its first error, so whatever passes cannot exhaust a recursive parser."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False  # cannot nest deeper than it has brackets: the common case, O(n) in C
    # Strings out, then everything but brackets (both in C): the loop below walks the
    # brackets only, not every token of a large body (a batch of a thousand inputs).
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        else:
            depth = max(depth - 1, 0)
    return False


class JsonDepthLimit:
    """Refuses a request whose JSON body or query parameter nests deeper than `max_depth`
    (400), before any handler parses it.

    Python's JSON parser, pydantic and every recursive walk over a document recurse once per
    level: 100,000 nested `[` end in RecursionError, a 500. RFC 8259 §9 lets a parser limit
    nesting depth; trustd does it once, here, for every route and every later handler.
    """

    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if query and any(
            json_depth_exceeds(value.encode(), self.max_depth)
            for _, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        ):
            await self._refuse(scope, send, "a query parameter")
            return
        if scope["method"] in _BODY_METHODS and _may_be_json(scope):
            body, receive = await read_body(receive)
            if json_depth_exceeds(body, self.max_depth):
                await self._refuse(scope, send, "the request body")
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, where: str) -> None:
        detail = f"{where} nests JSON deeper than {self.max_depth} levels"
        extra: dict[str, Any] = {}
        if str(scope["path"]).startswith(_OPA_PREFIXES):
            # OPA REST API "Errors": a body OPA cannot decode is invalid_parameter.
            extra = {"code": "invalid_parameter", "message": detail}
        await send_problem(
            send, 400, "Invalid request", detail, problem_type("InvalidRequest"), **extra
        )


def _may_be_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return media not in _NOT_JSON
    return True


def answered_by(scope: Scope, route: APIRoute) -> None:
    """Mark a request a lean path answers (below the router) as `route`'s: its path template
    labels the latency metric, and with tracing on the server span FastAPI opened is named
    after it, as its router names it (fastapi 0.165's hook, pinned in
    deploy/constraints.txt)."""
    scope["route"] = route
    if "fastapi.telemetry" in scope:
        _route_selected(scope=scope, path=route.path_format)


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body (its size is already bounded by `RequestContext`), and a receive that
    replays it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), _replay([message])
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    return body, _replay([{"type": "http.request", "body": body}], receive)
