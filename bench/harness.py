"""What the benchmarks share: free ports, a real `trustd serve` subprocess, its bootstrap
admin token, a scratch PostgreSQL database per run, trustd's services in-process,
percentiles, and the summary line every bench ends with."""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import psycopg

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
