"""An agent given two replicas' addresses (`--server` twice), two real `trustd serve`
sharing PostgreSQL and Redis: the one it talks to is killed (kill -9). The agent keeps
serving its workload's SVID over the Workload API, moves to the other replica, resyncs from
its cursors (verdict deltas, never a full state, and no new attestation), and a revocation
made on the survivor reaches it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PostgresDatabase
from tests.integration.conftest import Running, cli, free_port, join_agent_command, start_server

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.fault]

CLIENT = str(Path(__file__).with_name("workload_client.py"))
REDIS_URL = "redis://127.0.0.1:6379/0"
WORKLOAD = "spiffe://example.org/failover/web"


@dataclass
class Pair:
    first: Running
    second: Running
    agent: subprocess.Popen[str]
    agent_log: Path
    socket: Path
    node_id: str

    def workload(self) -> tuple[int, dict[str, Any]]:
        """The workload's X509-SVIDs through the Workload API (py-spiffe), as this user."""
        done = subprocess.run(
            [sys.executable, CLIENT, "--socket", str(self.socket), "x509"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.stdout, done.stderr
        return done.returncode, json.loads(done.stdout.splitlines()[-1])

    def events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.agent_log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found


def _admin(server: Running, *args: str) -> str:
    return cli(*args, "--data-dir", str(server.data_dir)).stdout


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def pair(tmp_path: Path, postgres_db: PostgresDatabase) -> Iterator[Pair]:
    shared = {
        "TRUSTD_DATABASE_URL": postgres_db.url,
        "TRUSTD_REDIS_URL": REDIS_URL,
        # Replicas share the key-encryption key, as they share the database.
        "TRUSTD_KEY_PASSPHRASE": "replica shared passphrase 0123456789",
    }
    first = start_server(tmp_path / "a", tmp_path / "a.log", **shared)
    second = start_server(tmp_path / "b", tmp_path / "b.log", **shared)
    # World-traversable, as the Workload API socket's directory is on a node.
    sockets = Path(tempfile.mkdtemp(prefix="trustd-agent-"))
    sockets.chmod(0o755)
    work = tmp_path / "node"
    work.mkdir()
    command = join_agent_command(
        first,
        work,
        "--server",
        second.url,
        # Answering proxies makes the agent follow verdicts and the whole revocation feed.
        "--ext-authz-listen",
        f"127.0.0.1:{free_port()}",
    )
    command[command.index("--socket") + 1] = str(sockets / "agent.sock")
    token = command[command.index("--join-token") + 1]
    node_id = f"spiffe://example.org/trustd/agent/join_token/{token.split('.')[0]}"
    _admin(
        first,
        *("entry", "create", "--spiffe-id", WORKLOAD, "--parent-id", node_id),
        *("--selector", f"unix:uid:{os.getuid()}"),
    )
    agent_log = tmp_path / "agent.log"
    with agent_log.open("w") as log:
        agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    pair = Pair(first, second, agent, agent_log, sockets / "agent.sock", node_id)
    try:
        _wait(pair.socket.exists, 30, f"the agent's socket; log: {agent_log}")
        yield pair
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
        for server in (first, second):
            server.stop()
        shutil.rmtree(sockets, ignore_errors=True)


def _serial(document: dict[str, Any]) -> str:
    return format(int(document["svids"][0]["serial"]), "x")


def test_an_agent_moves_to_the_surviving_replica_and_resyncs_by_delta(pair: Pair) -> None:
    _, before = _wait(lambda: (r := pair.workload())[0] == 0 and r, 60, "the workload's SVID")
    assert before["svids"][0]["spiffe_id"] == WORKLOAD
    serial = _serial(before)
    _wait(lambda: pair.events("verdicts_applied"), 30, "the agent's first verdicts")
    applied_before = len(pair.events("verdicts_applied"))

    # kill -9 of the replica the agent talks to (the first address, tried first).
    pair.first.process.send_signal(signal.SIGKILL)
    pair.first.process.wait(10)

    # The workload is served from the agent's cache meanwhile: the same SVID.
    code, during = pair.workload()
    assert code == 0, during
    assert _serial(during) == serial

    # A change on the survivor: a new identity for the node moves its verdicts, and the
    # workload's SVID is revoked there.
    _admin(
        pair.second,
        *("entry", "create", "--spiffe-id", "spiffe://example.org/failover/late"),
        *("--parent-id", pair.node_id, "--selector", "unix:uid:65534"),
    )
    _admin(
        pair.second,
        *("cert", "revoke", "--serial", serial, "--reason", "keyCompromise", "--no-quarantine"),
    )

    def replaced() -> dict[str, Any] | None:
        code, now = pair.workload()
        return now if code == 0 and _serial(now) != serial else None

    after = _wait(replaced, 30, "the revoked SVID to be replaced through the survivor")
    assert after["svids"][0]["spiffe_id"] == WORKLOAD
    assert pair.events("svids_revoked")
    failovers = pair.events("server_failover")
    assert failovers and failovers[0]["to"] == pair.second.url, failovers
    # Resynced from its cursors: every verdict update since the kill was a delta.
    applied_after = _wait(
        lambda: pair.events("verdicts_applied")[applied_before:], 30, "verdicts from the survivor"
    )
    assert all(record["base"] != 0 for record in applied_after), applied_after
    # Neither a new attestation nor an exit: the same node, served on.
    assert len(pair.events("attested")) == 1
    assert pair.agent.poll() is None
