"""`trustd serve`: the HTTPS listener, the admin Unix socket and the worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog
import uvicorn
import uvloop
from cryptography.hazmat.primitives import serialization
from starlette.types import ASGIApp, Receive, Scope, Send

from pki.ca import certificate_pem
from trustd.api.deps import LOCAL_ADMIN_SCOPE_KEY
from trustd.app import create_app
from trustd.logs import configure_logging
from trustd.services.container import Services, build_services
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


class _Server(uvicorn.Server):
    # Signals are handled once for both servers in `_serve_forever`.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class TlsFiles:
    certfile: Path
    keyfile: Path
    password: str


def issue_serving_files(services: Services, directory: Path) -> tuple[TlsFiles, float]:
    """Issue a serving certificate and write it (chain) and its key (encrypted with a random
    password held only in memory) to `directory`. Returns the files and the renewal delay.
    """
    s = services.settings
    names = ["localhost", *s.server_names]
    ips = ["127.0.0.1", "::1"]
    host = s.host
    try:
        ipaddress.ip_address(host)
        if host not in ips and host not in ("0.0.0.0", "::"):  # noqa: S104
            ips.append(host)
    except ValueError:
        names.append(host)
    issued, key = services.issuer.issue_serving_certificate(sorted(set(names)), ips)
    password = secrets.token_urlsafe(24)
    directory.mkdir(parents=True, exist_ok=True)
    certfile = directory / f"server-{os.getpid()}.pem"
    keyfile = directory / f"server-{os.getpid()}-key.pem"
    certfile.write_text(
        certificate_pem(issued.certificate)
        + "".join(certificate_pem(c) for c in issued.intermediates)
    )
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password.encode()),
            )
        )
    cert = issued.certificate
    life = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    return TlsFiles(certfile, keyfile, password), life / 2


def bind_sockets(settings: Settings) -> tuple[socket.socket, socket.socket]:
    """Bind the HTTPS socket and the admin socket (0600) before any worker starts."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets whose
    # proto says TCP, and accept() copies the listener's. Without it Nagle holds back the
    # second write of a response (TLS record, chunk) until the client's delayed ACK, ~40 ms.
    tcp = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((settings.host, settings.port))
    tcp.listen(2048)
    tcp.set_inheritable(True)
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
    return tcp, uds


async def _serve_forever(
    services: Services,
    tcp: socket.socket,
    uds: socket.socket,
    tls: TlsFiles | None,
    renew_in: float,
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
        ssl_certfile=str(tls.certfile) if tls else None,
        ssl_keyfile=str(tls.keyfile) if tls else None,
        ssl_keyfile_password=tls.password if tls else None,
        timeout_graceful_shutdown=10,
    )
    admin_config = uvicorn.Config(
        LocalAdmin(app), lifespan="off", log_config=None, access_log=False
    )
    main, admin = _Server(main_config), _Server(admin_config)

    def stop(*_: object) -> None:
        main.should_exit = admin.should_exit = True
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
    renewal = asyncio.create_task(_renew_serving(services, main, tls, renew_in)) if tls else None
    try:
        await asyncio.gather(main.serve([tcp]), admin.serve([uds]))
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


async def _renew_serving(
    services: Services, server: uvicorn.Server, tls: TlsFiles | None, delay: float
) -> None:
    """Re-issue the serving certificate at half its life and load it into the live TLS
    context: new handshakes get the new certificate, open connections are untouched.
    """
    while True:
        await asyncio.sleep(delay)
        try:
            files, delay = await asyncio.to_thread(
                issue_serving_files, services, services.settings.tls_dir
            )
            context: ssl.SSLContext | None = server.config.ssl
            if context is not None:
                context.load_cert_chain(files.certfile, files.keyfile, files.password)
            log.info("serving_certificate_renewed", next_in_s=int(delay))
        except Exception as exc:
            log.error("serving_certificate_renewal_failed", error=str(exc))
            delay = 60.0


def _worker(settings: Settings, tcp: socket.socket, uds: socket.socket, level: str) -> None:
    configure_logging(level)
    services = build_services(settings)
    tls, renew_in = (None, 0.0)
    if settings.tls:
        services.ca.load()
        tls, renew_in = issue_serving_files(services, settings.tls_dir)
    try:
        # uvloop's event loop and TLS transport are native code; asyncio's are Python, and
        # they run for every request.
        uvloop.run(_serve_forever(services, tcp, uds, tls, renew_in))
    finally:
        if tls:
            for path in tls.certfile.parent.glob(f"server-{os.getpid()}*.pem"):
                path.unlink(missing_ok=True)


def run(
    settings: Settings,
    tcp: socket.socket,
    uds: socket.socket,
    level: str,
    ready: Callable[[], None],
) -> None:
    """Serve until SIGINT/SIGTERM, in this process or in `settings.workers` processes."""
    try:
        if settings.workers == 1:
            ready()
            _worker(settings, tcp, uds, level)
        else:
            _supervise(settings, tcp, uds, level, ready)
    finally:
        settings.admin_socket.unlink(missing_ok=True)


def _supervise(
    settings: Settings,
    tcp: socket.socket,
    uds: socket.socket,
    level: str,
    ready: Callable[[], None],
) -> None:
    # Metrics from every worker are summed through prometheus_client's multiprocess mode;
    # the directory must exist before the workers import prometheus_client.
    metrics_dir = tempfile.mkdtemp(prefix="trustd-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(settings, tcp, uds, level), name=f"trustd-worker-{i}")
        for i in range(settings.workers)
    ]
    for process in workers:
        process.start()
    ready()

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
