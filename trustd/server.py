"""`trustd serve`: the HTTPS listener, the admin Unix socket and the worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import structlog
import uvicorn
import uvloop
from starlette.types import ASGIApp, Receive, Scope, Send

from trustd import metrics, tracing
from trustd.api.deps import LOCAL_ADMIN_SCOPE_KEY
from trustd.app import create_app
from trustd.logs import configure_logging, hold_info
from trustd.services.container import Services, build_services
from trustd.services.issuance import ServingCredential
from trustd.services.rotation import BUNDLE_CHANNEL
from trustd.settings import Settings

log = structlog.get_logger("trustd.server")
# Net allocations of container objects between young-generation collections (default 700).
_GC_THRESHOLD = 10_000


class LocalAdmin:
    """Marks every request on the admin socket as the local administrator. The socket is
    0600 inside the 0700 data directory, so only the server's own user can connect (as with
    spire-server's admin socket).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, LOCAL_ADMIN_SCOPE_KEY: True}
        await self.app(scope, receive, send)


# Set in the task of each server but the main one: uvicorn's lifecycle lines ("Started
# server process", "Shutting down", ...) are said once per process, by the main listener,
# not again by the admin socket's and the metrics listener's servers.
_SECONDARY = contextvars.ContextVar("trustd_secondary_server", default=False)


class _OncePerProcess(logging.Filter):
    """Drops uvicorn's info lines logged by a secondary server; its warnings and errors
    still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _SECONDARY.get()


def _say_lifecycle_once() -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _OncePerProcess) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_OncePerProcess())


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, secondary: bool = False) -> None:
        super().__init__(config)
        self.secondary = secondary

    # Signals are handled once for both servers in `_serve_forever`.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # Each server runs in a task of its own (`asyncio.gather`), with its own copy of the
        # context: the flag marks this server's lines only.
        if self.secondary:
            _SECONDARY.set(True)
        await super().serve(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # An idle keep-alive connection has nothing left to send: drop it at once. Closed
        # politely, a TLS transport waits for the client's close_notify, which an idle
        # client never sends, and held the shutdown for its whole graceful timeout (10 s).
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            transport = getattr(connection, "transport", None)
            if transport is not None and (cycle is None or cycle.response_complete):
                transport.abort()
        await super().shutdown(sockets)


def remove_stale_key_files(settings: Settings) -> None:
    """Remove the serving key and certificate files that releases before in-memory keys
    left in `tls/` when a worker died without cleaning up (kill -9, OOM)."""
    for path in settings.tls_dir.glob("server-*.pem"):
        path.unlink(missing_ok=True)


def serving_context(serving: ServingCredential) -> ssl.SSLContext:
    """The TLS context of the main listener, holding the current serving certificate; the
    renewal loop loads each new one into this same live context."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.install(context)
    return context


@dataclass(frozen=True)
class Listeners:
    """The sockets bound before any worker starts, shared by every worker."""

    tcp: socket.socket
    uds: socket.socket
    # `metrics_listen`: GET /metrics alone, plain HTTP.
    metrics: socket.socket | None = None


def _bind_tcp(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets whose
    # proto says TCP, and accept() copies the listener's. Without it Nagle holds back the
    # second write of a response (TLS record, chunk) until the client's delayed ACK, ~40 ms.
    tcp = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    tcp.listen(backlog)
    tcp.set_inheritable(True)
    return tcp


def bind_sockets(settings: Settings) -> Listeners:
    """Bind the HTTPS socket, the admin socket (0600) and, when configured, the metrics
    socket before any worker starts."""
    tcp = _bind_tcp(settings.host, settings.port, 2048)
    path = settings.admin_socket
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        uds.bind(str(path))
    finally:
        os.umask(old_umask)
    uds.listen(128)
    uds.set_inheritable(True)
    metrics = None
    if settings.metrics_listen is not None:
        host, _, port = settings.metrics_listen.rpartition(":")
        metrics = _bind_tcp(host.strip("[]"), int(port), 128)
    return Listeners(tcp, uds, metrics)


def metrics_app(services: Services) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The metrics listener: GET /metrics and nothing else (no API, no UI, no admin model:
    it is meant for an interface only scrapers reach)."""

    def scrape() -> bytes:
        services.verdicts.record_lag_metrics()
        return metrics.render()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            status, body, kind = 404, b"not found\n", "text/plain; charset=utf-8"
        else:
            status, body, kind = 200, await asyncio.to_thread(scrape), metrics.CONTENT_TYPE
        headers = [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else body
        await send({"type": "http.response.body", "body": body})

    return app


async def _serve_forever(
    services: Services,
    listeners: Listeners,
    tls: ssl.SSLContext | None,
) -> None:
    settings = services.settings
    app = create_app(settings, services)
    main_config = uvicorn.Config(
        app,
        # httptools (llhttp) parses requests in C; h11 is pure Python.
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
        # The context is built here (the key never goes to a file) and kept live by
        # `_keep_serving`.
        ssl_context_factory=(lambda _config, _default: tls) if tls else None,
        timeout_graceful_shutdown=10,
    )
    admin_config = uvicorn.Config(
        LocalAdmin(app), lifespan="off", log_config=None, access_log=False
    )
    main, admin = _Server(main_config), _Server(admin_config, secondary=True)
    servers = [main, admin]
    if listeners.metrics is not None:
        metrics_config = uvicorn.Config(
            metrics_app(services), lifespan="off", log_config=None, access_log=False
        )
        servers.append(_Server(metrics_config, secondary=True))

    def stop(*_: object) -> None:
        for server in servers:
            server.should_exit = True
        # Long-polls would otherwise hold the graceful shutdown for their full wait.
        services.agents.drain()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    main_config.load()
    _tune_gc()
    log.info(
        "worker_started",
        pid=os.getpid(),
        loop=f"{type(loop).__module__}.{type(loop).__qualname__}",
        http=main_config.http_protocol_class.__name__,
        gc_threshold=gc.get_threshold()[0],
        gc_frozen=gc.get_freeze_count(),
    )
    renewal = asyncio.create_task(_keep_serving(services, tls)) if tls else None
    try:
        serving = [main.serve([listeners.tcp]), admin.serve([listeners.uds])]
        if listeners.metrics is not None:
            serving.append(servers[2].serve([listeners.metrics]))
        await asyncio.gather(*serving)
    finally:
        if renewal:
            renewal.cancel()


def _tune_gc() -> None:
    """Keep the cyclic garbage collector from walking objects that are not garbage.

    Requests free what they allocate by reference counting. At the default threshold (700
    net allocations) the collector ran every few dozen requests under load and found only
    the objects of the requests in flight, promoting them until a full collection walked the
    whole heap, some 200,000 objects built at startup included: pauses of about 100 ms.
    """
    # What startup built lives as long as the worker: out of the collector's generations.
    gc.collect()
    gc.freeze()
    # Above what the requests in flight hold, so collections run when garbage accumulates.
    gc.set_threshold(_GC_THRESHOLD, *gc.get_threshold()[1:])


async def _keep_serving(services: Services, context: ssl.SSLContext) -> None:
    """Keep the serving certificate current in the live TLS context: re-issue it at half its
    life and as soon as a bundle change leaves its issuer no longer the active authority
    (`ServingCredential.stale`). New handshakes get the new certificate; open connections
    keep theirs.
    """
    serving = services.serving
    settings = services.settings
    interval = settings.bundle_reload_interval.total_seconds()
    if settings.workers > 1 and not settings.uses_redis:
        # The in-process bus does not reach the other workers: a change made through one
        # (`trustd ca activate` on the admin socket) is seen by the others only when they
        # poll. Poll the one-row bundle sequence every second, so every worker's serving
        # certificate follows an activation before the operator can revoke the old key.
        interval = min(interval, 1.0)
    # Registered before each check, so a change published while checking is not missed.
    changed: asyncio.Task[str] = asyncio.create_task(services.bus.wait(BUNDLE_CHANNEL))
    try:
        while True:
            await asyncio.wait({changed}, timeout=min(interval, serving.seconds_to_renewal()))
            if changed.done():
                changed = asyncio.create_task(services.bus.wait(BUNDLE_CHANNEL))
            try:
                await asyncio.to_thread(services.ca.reload_if_changed)
                if await asyncio.to_thread(serving.renew_if_stale):
                    # Loaded on the loop's thread, which is the one doing handshakes.
                    serving.install(context)
                    current = serving.current
                    assert current is not None
                    log.info(
                        "serving_certificate_renewed",
                        issuer_kid=current.issued.issuer_kid,
                        next_in_s=int(serving.seconds_to_renewal()),
                    )
            except Exception as exc:
                log.error("serving_certificate_renewal_failed", error=str(exc))
                await asyncio.sleep(min(interval, 5.0))
    finally:
        changed.cancel()


def _worker(settings: Settings, listeners: Listeners, level: str) -> None:
    configure_logging(level, settings.log_format)
    _say_lifecycle_once()
    # Per worker process: the SDK's export thread does not survive a fork.
    tracing.configure(settings.otel_endpoint, "trustd-server")
    services = build_services(settings)
    tls = None
    if settings.tls:
        services.ca.load()
        remove_stale_key_files(settings)
        services.serving.renew()
        tls = serving_context(services.serving)
    # uvloop's event loop and TLS transport are native code; asyncio's are Python, and
    # they run for every request.
    try:
        uvloop.run(_serve_forever(services, listeners, tls))
    finally:
        tracing.shutdown()


def run(
    settings: Settings,
    listeners: Listeners,
    level: str,
    ready: Callable[[], None],
) -> None:
    """Serve until SIGINT/SIGTERM, in this process or in `settings.workers` processes.

    `ready` (the banner) runs before any worker logs: the sockets are bound already, so a
    client that connects meanwhile waits in the listen backlog.
    """
    try:
        if settings.workers == 1:
            ready()
            _worker(settings, listeners, level)
        else:
            _supervise(settings, listeners, level, ready)
    finally:
        settings.admin_socket.unlink(missing_ok=True)


def _supervise(
    settings: Settings,
    listeners: Listeners,
    level: str,
    ready: Callable[[], None],
) -> None:
    # Metrics from every worker are summed through prometheus_client's multiprocess mode;
    # the directory must exist before the workers import prometheus_client.
    metrics_dir = tempfile.mkdtemp(prefix="trustd-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_worker, args=(settings, listeners, level), name=f"trustd-worker-{i}"
        )
        for i in range(settings.workers)
    ]
    ready()
    hold_info(False)
    for process in workers:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in workers:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for process in workers:
        process.join()
    shutil.rmtree(metrics_dir, ignore_errors=True)
