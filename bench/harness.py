"""What the benchmarks share: free ports, a real `trustd serve` subprocess, its bootstrap
admin token, a scratch PostgreSQL database per run, trustd's services in-process,
percentiles, an open-loop (paced) HTTP load generator, and the summary line every bench
ends with."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import uvloop

from trustd.bootstrap import initialise, migrate
from trustd.services.container import Services, build_services
from trustd.settings import load_settings

TRUSTD = Path(sys.executable).parent / "trustd"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of `pid` and its children (the workers) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        # proc(5): field 4 is the parent, 14 and 15 are utime and stime (after "pid (comm)").
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@contextlib.contextmanager
def scratch_database(prefix: str = "trustd_bench") -> Iterator[str]:
    """A fresh PostgreSQL database for one run (its SQLAlchemy URL), dropped afterwards even
    while servers still hold connections to it."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def in_process(database_url: str, data_dir: Path, **settings: Any) -> Services:
    """trustd's services in this process (no TLS): database migrated, CA created and loaded."""
    migrate(database_url)
    services = build_services(
        load_settings(data_dir=data_dir, database_url=database_url, tls=False, **settings)
    )
    initialise(services)
    services.ca.load()
    return services


def start_server(
    data_dir: Path,
    port: int,
    workers: int,
    db_url: str | None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """`trustd serve` over TLS on `port`, once every worker answers /readyz; `env` adds
    settings (TRUSTD_*). The banner (and the bootstrap token) is on the process's stdout."""
    environ = {
        **os.environ,
        "TRUSTD_DATA_DIR": str(data_dir),
        "TRUSTD_LISTEN": f"127.0.0.1:{port}",
        **(env or {}),
    }
    if db_url:
        environ["TRUSTD_DATABASE_URL"] = db_url
    proc = subprocess.Popen(
        [str(TRUSTD), "serve", "--workers", str(workers), "--log-level", "warning"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    bundle = data_dir / "bundle.pem"
    deadline = time.time() + 60
    while time.time() < deadline:
        if bundle.exists():
            try:
                tls = ssl.create_default_context(cafile=str(bundle))
                ok = 0
                for _ in range(workers * 4):
                    r = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=tls, timeout=2)
                    ok += r.status_code == 200
                if ok == workers * 4:
                    return proc
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("trustd did not become ready")


class PlainServer:
    """`trustd serve` on a scratch data directory under *work* (SQLite, no TLS, warnings
    only in its log) and the bootstrap admin token it printed."""

    def __init__(self, work: Path) -> None:
        port = free_port()
        shutil.rmtree(work / "var", ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
        self.log_path = work / "server.log"
        self.log = self.log_path.open("a")
        command = [str(TRUSTD), "serve", "--data-dir", str(work / "var")]
        command += ["--listen", f"127.0.0.1:{port}", "--tls", "off", "--log-level", "warning"]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        assert self.process.stdout is not None
        self.token = ""
        for line in self.process.stdout:
            if line.strip().startswith("trustd."):
                self.token = line.strip()
            if line.startswith("Next"):
                break
        if not self.token:
            self.stop()
            raise RuntimeError(f"trustd serve printed no token: {self.log_path}")
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_lines(self) -> list[str]:
        self.log.flush()
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def read_token(proc: subprocess.Popen[str]) -> str:
    """The bootstrap admin token from the banner of the server that created the database."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip().startswith("trustd."):
            return line.strip()
    raise RuntimeError("no bootstrap token printed")


# -- open-loop load ----------------------------------------------------------------------


@dataclass(frozen=True)
class Paced:
    """What a paced run measured. Latencies run from each request's intended send time
    (its slot in the schedule), not from when a connection got round to sending it: a
    server that stalls is charged for every request the stall delayed, as wrk2 does
    (coordinated omission)."""

    offered_rps: float
    achieved_rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def paced_load(
    url: str,
    rate: float,
    seconds: float,
    bodies: Sequence[bytes] = (b"",),
    *,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    processes: int = 2,
    connections: int = 16,
    warmup: float = 1.0,
    cafile: str | None = None,
) -> Paced:
    """Offer `rate` requests/s to `url` for `seconds` (after `warmup` seconds not counted),
    from `processes` client processes of `connections` keep-alive connections each, and
    measure latency at that fixed rate (open loop).

    Request *i* is due at `start + i / rate`, the processes interleaved; it is sent on the
    first free connection, and its latency counts from when it was due. Bodies are used in
    turn. The client is plain HTTP/1.1 (HTTPS trusting `cafile` for an `https` URL) over
    asyncio streams, to cost the machine little beside the server it measures; answers
    must carry Content-Length. A status of 400 or more, or a broken connection, is an
    error. With `connections` too few for the rate the requests queue, and the queueing
    counts in their latency, as it would for real callers.
    """
    context = multiprocessing.get_context("fork")
    start = time.monotonic() + 0.5 + 0.1 * processes  # every process ready before its slot
    jobs = [
        (
            url,
            rate,
            seconds + warmup,
            list(bodies),
            method,
            dict(headers or {}),
            index,
            processes,
            connections,
            start,
            warmup,
            cafile,
        )
        for index in range(processes)
    ]
    with context.Pool(processes) as pool:
        parts = pool.starmap(_paced_process, jobs)
    latencies = sorted(x for part, _, _ in parts for x in part)
    errors = sum(e for _, e, _ in parts)
    finished = max(f for _, _, f in parts)
    counted = len(latencies) + errors
    elapsed = max(finished - (start + warmup), 1e-9)
    return Paced(
        offered_rps=rate,
        achieved_rps=counted / elapsed,
        requests=counted,
        errors=errors,
        p50_ms=percentile(latencies, 50) * 1000 if latencies else 0.0,
        p99_ms=percentile(latencies, 99) * 1000 if latencies else 0.0,
        max_ms=latencies[-1] * 1000 if latencies else 0.0,
    )


def _paced_process(
    url: str,
    rate: float,
    seconds: float,
    bodies: list[bytes],
    method: str,
    headers: dict[str, str],
    index: int,
    processes: int,
    connections: int,
    start: float,
    warmup: float,
    cafile: str | None,
) -> tuple[list[float], int, float]:
    tls = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    # uvloop's loop and streams are native code: the client costs the shared cores less.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(
        _paced(
            url,
            rate,
            seconds,
            bodies,
            method,
            headers,
            index,
            processes,
            connections,
            start,
            warmup,
            tls,
        )
    )


async def _paced(
    url: str,
    rate: float,
    seconds: float,
    bodies: list[bytes],
    method: str,
    headers: dict[str, str],
    index: int,
    processes: int,
    connections: int,
    start: float,
    warmup: float,
    tls: ssl.SSLContext | None,
) -> tuple[list[float], int, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    requests = [(head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body in bodies]
    due: asyncio.Queue[tuple[float, int] | None] = asyncio.Queue()
    latencies: list[float] = []
    errors = 0
    counted_from = start + warmup

    async def connection() -> None:
        nonlocal errors
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while True:
            item = await due.get()
            if item is None:
                break
            when, number = item
            try:
                if streams is None:
                    streams = await asyncio.open_connection(host, port, ssl=tls)
                reader, writer = streams
                writer.write(requests[number % len(requests)])
                status = await _read_response(reader)
                failed = status >= 400
            except (OSError, asyncio.IncompleteReadError, ValueError):
                failed = True
                if streams is not None:
                    streams[1].close()
                streams = None
            finished = time.monotonic()
            if when >= counted_from:
                if failed:
                    errors += 1
                else:
                    latencies.append(finished - when)
        if streams is not None:
            streams[1].close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    # This process's slots: every `processes`-th of the whole schedule.
    interval = processes / rate
    first = start + index / rate
    total = int(seconds * rate / processes)
    for number in range(total):
        when = first + number * interval
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait((when, number))
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    return latencies, errors, time.monotonic()


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length framed); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


def result(
    measure: str,
    value: float,
    unit: str,
    baseline: float,
    target: str,
    met: bool | None,
) -> str:
    """One summary line: `RESULT <measure> <value> <unit> baseline <value> ratio <r> target
    <t> met|not met`. *target* is the condition as written (`<20ms`, `>=0.7`); *met* None
    prints `n/a` where a run could not judge it (e.g. a peer missing)."""
    verdict = "n/a" if met is None else ("met" if met else "not met")
    ratio = f"{value / baseline:.3f}" if baseline else "n/a"
    return (
        f"RESULT {measure} {value:.3f} {unit} baseline {baseline:.3f} ratio {ratio} "
        f"target {target} {verdict}"
    )
