"""What `trustd serve` writes: a banner first, then short human-readable lines on a terminal
(a real pseudo-terminal here) or JSON lines into a pipe; an access log without agents'
long-polls, health checks and scrapes unless asked; uvicorn's start and stop lines once."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    TRUSTD,
    Running,
    free_port,
    join_agent_command,
    start_server,
    tls,
)

pytestmark = pytest.mark.integration
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A console log line: `14:42:47 [info] worker_started [trustd.server] pid=...`.
_CONSOLE_LINE = re.compile(r"^\d\d:\d\d:\d\d \[(debug|info|warning|error|critical)\] ")
_LIFECYCLE = (
    "Started server process",
    "Waiting for application startup.",
    "Application startup complete.",
    "Shutting down",
    "Waiting for application shutdown.",
    "Application shutdown complete.",
    "Finished server process",
)


class Terminal:
    """A process whose stdout and stderr are one pseudo-terminal, as under `make run`."""

    def __init__(self, args: list[str], **env: str) -> None:
        self.master, slave = pty.openpty()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
        environ.update(env)
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=environ, text=True
        )
        os.close(slave)
        self.output = ""

    def read_until(self, done: str | Callable[[], bool], timeout: float = 30) -> None:
        """Read what the process writes (a terminal it writes into must be read, or the
        process blocks once the buffer is full) until *done* is seen or true."""
        deadline = time.monotonic() + timeout
        while done not in self.output if isinstance(done, str) else not done():
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                pytest.fail(f"{done!r} not seen in:\n{self.output}")
            self._read(min(left, 0.1))

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the process closed the terminal
            return False
        self.output += _ANSI.sub("", chunk.decode(errors="replace")).replace("\r\n", "\n")
        return bool(chunk)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        while self._read(20):
            pass
        self.process.wait(20)
        os.close(self.master)


def _sync_polls(url: str, bundle: Path) -> float:
    """How many agent sync requests the server has answered, from its own metrics."""
    text = httpx.get(f"{url}/metrics", verify=tls(bundle)).text
    counts = re.findall(
        r'^trustd_http_request_duration_seconds_count\{[^}]*route="/v1/agents/sync"[^}]*\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return sum(float(c) for c in counts)


def test_a_terminal_gets_the_banner_then_human_lines_without_the_noise(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "var", free_port()
    url = f"https://127.0.0.1:{port}"
    # Long-polls of a second, so that several end while the test watches.
    server = Terminal(
        [TRUSTD, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
        TRUSTD_SYNC_WAIT="PT1S",
    )
    agent: subprocess.Popen[str] | None = None
    try:
        server.read_until("Application startup complete.")
        bundle = data_dir / "bundle.pem"
        # An agent joins and long-polls; probes and a person's request come meanwhile.
        running = Running(server.process, data_dir, url, token="", banner="")
        with (tmp_path / "agent.log").open("w") as log:
            agent = subprocess.Popen(
                join_agent_command(running, tmp_path),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        server.read_until(lambda: _sync_polls(url, bundle) >= 3)
        for path in ("/healthz", "/readyz", "/metrics", "/v1/bundle"):
            assert httpx.get(f"{url}{path}", verify=tls(bundle)).status_code == 200
        server.read_until("GET /v1/bundle 200")
        # A quiet path that fails is logged: a sync without a node credential is refused.
        refused = httpx.post(f"{url}/v1/agents/sync", json={}, verify=tls(bundle))
        assert refused.status_code >= 400
        server.read_until(f"POST /v1/agents/sync {refused.status_code}")
    finally:
        # The server first: stopping ends the agent's long-poll in flight, which would then
        # be logged if long-polls were.
        server.stop()
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
    assert server.process.returncode == 0, server.output
    lines = server.output.splitlines()
    logged = [i for i, line in enumerate(lines) if _CONSOLE_LINE.match(line)]
    banner = lines.index("trustd is running")
    assert logged and banner < logged[0], server.output
    # No JSON anywhere; from the first log line on, nothing but log lines.
    assert not [line for line in lines if line.lstrip().startswith("{")], server.output
    after = lines[logged[0] :]
    assert all(_CONSOLE_LINE.match(line) for line in after if line.strip()), server.output
    # uvicorn says each start and stop line once, though three servers run in the process.
    for message in _LIFECYCLE:
        assert sum(message in line for line in lines) == 1, (message, server.output)
    # The agent attested and fetched its SVIDs (logged), its long-polls are not; nor probes.
    assert any("POST /v1/attest 201" in line for line in after), server.output
    for quiet in ("/v1/agents/sync", "/healthz", "/readyz", "/metrics"):
        assert not [line for line in after if f" {quiet} 2" in line], (quiet, server.output)
    assert sum(" /v1/agents/sync " in line for line in after) == 1, server.output
    request = next(line for line in after if "GET /v1/bundle 200" in line)
    assert "[trustd.access]" in request
    # The banner's commands name the data directory the CLI would not find by itself.
    assert f"--data-dir {data_dir} token create" in server.output


def test_a_pipe_gets_json_lines_and_every_request_when_asked(tmp_path: Path) -> None:
    server = start_server(tmp_path / "var", tmp_path / "server.log", TRUSTD_ACCESS_LOG="all")
    try:
        for path in ("/healthz", "/v1/bundle"):
            assert httpx.get(f"{server.url}{path}", verify=tls(server.bundle)).status_code == 200
    finally:
        server.stop()
    lines = (tmp_path / "server.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    # Only the progress notes before the banner are not JSON.
    assert [line for line in lines if not line.startswith("{")] == [
        f"migrating database sqlite:///{(tmp_path / 'var' / 'trustd.db').resolve()}",
        "created the CA for trust domain example.org",
    ]
    for message in _LIFECYCLE:
        assert sum(message in e["event"] for e in events) == 1, message
    # `all`: health checks too (start_server polls /readyz until it answers).
    paths = [e["path"] for e in events if e["logger"] == "trustd.access"]
    assert paths.count("/healthz") == 1 and paths.count("/v1/bundle") == 1
    assert paths.count("/readyz") >= 1
    assert all(e["timestamp"].endswith("Z") for e in events)
