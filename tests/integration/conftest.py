"""A real `trustd serve` subprocess over TLS, started and restarted by tests."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

TRUSTD = str(Path(sys.executable).parent / "trustd")


@dataclass
class Running:
    process: subprocess.Popen[str]
    data_dir: Path
    url: str
    token: str
    banner: str

    @property
    def bundle(self) -> Path:
        return self.data_dir / "bundle.pem"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)
        if self.process.stdout is not None:
            self.process.stdout.close()


def tls(bundle: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(bundle))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(
    *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    # Without *stdin* the child gets /dev/null, never the test runner's terminal.
    return subprocess.run(
        [TRUSTD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        input=stdin if stdin is not None else "",
    )


def join_agent_command(server: Running, work: Path, *options: str) -> list[str]:
    """`trustd agent` joining `server` with a fresh join token, its socket and data under
    `work`, plus `options`."""
    made = cli("token", "create", "--data-dir", str(server.data_dir), check=False)
    assert made.returncode == 0, f"token create failed: {made.stderr}"
    created = made.stdout.split()
    return [
        TRUSTD,
        "agent",
        "--server",
        server.url,
        "--join-token",
        created[created.index("--join-token") + 1],
        "--ca-sha256",
        created[created.index("--ca-sha256") + 1],
        "--socket",
        str(work / "agent.sock"),
        "--data-dir",
        str(work / "agent"),
        *options,
    ]


def serve_once(data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `trustd serve` on `data_dir` with the settings `env` (TRUSTD_* from this process
    left out), for a start-up expected to be refused; returns the finished process."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    return subprocess.run(
        [TRUSTD, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environ, **env},
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one `error: ` line a refused command printed (exit status 1, no traceback)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def start_server(data_dir: Path, log_path: Path, port: int | None = None, **env: str) -> Running:
    """Start `trustd serve` and wait until it is ready; the banner is read from stdout."""
    port = port or free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    environ.update(env)
    with log_path.open("a") as log:
        process = subprocess.Popen(
            [TRUSTD, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert process.stdout is not None
    banner: list[str] = []
    token = ""
    for line in process.stdout:
        banner.append(line)
        if line.strip().startswith("trustd."):
            token = line.strip()
        if line.startswith("Next"):
            break
    else:
        process.wait(10)
        pytest.fail(f"trustd serve exited early: {log_path.read_text()}")
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", verify=tls(data_dir / "bundle.pem")).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return Running(process, data_dir, url, token, "".join(banner))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    server = start_server(tmp_path / "var", tmp_path / "server.log")
    yield server
    server.stop()
