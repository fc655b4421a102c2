"""OpenTelemetry tracing, off unless `TRUSTD_OTEL_ENDPOINT` names an OTLP/gRPC collector.

Off, neither the trace SDK nor the exporter is imported: a `traced` function costs one
flag test per call, and no span objects are made. On, spans go through a batch processor
to the OTLP exporter (the SDK's `OTEL_BSP_*` variables tune the batching), and the agent's
requests carry W3C Trace Context (`traceparent`, W3C Recommendation "Trace Context" §3) so
that the server's spans join the agent's traces.

The server span of each HTTP request is FastAPI's own (its built-in telemetry starts once a
tracer provider is set): it reads `traceparent` and names the span by route. trustd adds
the spans of its own work inside it (`traced`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Coroutine, Iterator, MutableMapping
from typing import Any, ParamSpec, TypeVar, cast

_P = ParamSpec("_P")
_R = TypeVar("_R")

_provider: Any = None
_tracer: Any = None


def enabled() -> bool:
    return _tracer is not None


def configure(endpoint: str | None, service_name: str) -> None:
    """Start exporting spans to `endpoint` (`http://host:4317` plaintext, `https://...`
    TLS) as `service_name`; None leaves tracing off."""
    global _provider, _tracer
    if not endpoint:
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from trustd import __version__

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": __version__})
    )
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("trustd")


def shutdown() -> None:
    """Export what is queued and stop (at process exit)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def traced(name: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a function (or coroutine function) to run in a span named `name`; off, the
    call goes straight through."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        if inspect.iscoroutinefunction(function):
            coroutine: Callable[_P, Coroutine[Any, Any, Any]] = function

            @functools.wraps(function)
            async def traced_coroutine(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                if _tracer is None:
                    return await coroutine(*args, **kwargs)
                with _tracer.start_as_current_span(name):
                    return await coroutine(*args, **kwargs)

            return cast(Callable[_P, _R], traced_coroutine)

        @functools.wraps(function)
        def traced_call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            if _tracer is None:
                return function(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return function(*args, **kwargs)

        return traced_call

    return decorate


@contextlib.contextmanager
def client_span(method: str, path: str, headers: MutableMapping[str, str]) -> Iterator[None]:
    """The span of one outgoing request; its context goes out in `headers` (W3C Trace
    Context `traceparent`), so the server's span is its child. A no-op when off."""
    if _tracer is None:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.propagate import inject as propagate

    with _tracer.start_as_current_span(
        f"{method} {path}",
        kind=trace.SpanKind.CLIENT,
        attributes={"http.request.method": method, "url.path": path},
    ):
        propagate(headers)
        yield
