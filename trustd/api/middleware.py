"""ASGI middleware: request ids, body size limit, the last word on unexpected errors, access
log and latency metrics."""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trustd import metrics
from trustd.api.problems import PROBLEM_JSON, problem_type
from trustd.errors import PayloadTooLarge
from trustd.services.audit import request_id_var

access_log = structlog.get_logger("trustd.access")
error_log = structlog.get_logger("trustd.api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    """Gives each request an id (the caller's `X-Request-ID` if sane), binds it to logs and
    audit rows, enforces the body size limit and records latency.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _REQUEST_ID.match(supplied) else secrets.token_hex(8)
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
            access_log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")
            request_id_var.reset(token)

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
