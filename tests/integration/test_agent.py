"""A real server, a real agent process and py-spiffe workloads running as other users:
attestation by join token, entries synced to the node, SVIDs over the Workload API, mutual
TLS between workloads, rotation, and an agent that outlives a server restart.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pki.bundle import TrustBundle
from pki.clock import SystemClock
from pki.errors import InvalidWit
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import TrustDomain
from pki.wit_svid import parse_workload_jwk, validate_wit_svid, workload_jwk
from tests.integration.conftest import TRUSTD, Running, cli, start_server, tls

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timed,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs workloads as other users"),
]
CLIENT = str(Path(__file__).with_name("workload_client.py"))
WIT_CLIENT = str(Path(__file__).with_name("wit_client.py"))
WEB, DB, STRANGER = 2001, 2002, 2003


@dataclass
class Node:
    server: Running
    agent: subprocess.Popen[str]
    socket: Path
    spiffe_id: str
    agent_log: Path

    def run(self, uid: int, *args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
        process = subprocess.run(
            [
                sys.executable,
                CLIENT,
                "--socket",
                str(self.socket),
                "--uid",
                str(uid),
                "--gid",
                str(uid),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert process.stdout, process.stderr
        return process.returncode, json.loads(process.stdout.splitlines()[-1])

    def wit(self, uid: int) -> tuple[int, dict[str, Any]]:
        """FetchWITSVID as the workload *uid* (`wit_client.py`): exit code and answer."""
        ids = ["--uid", str(uid), "--gid", str(uid)]
        process = subprocess.run(
            [sys.executable, WIT_CLIENT, "--socket", str(self.socket), *ids],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert process.stdout, process.stderr
        return process.returncode, json.loads(process.stdout.splitlines()[-1])

    def start(self, uid: int, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                CLIENT,
                "--socket",
                str(self.socket),
                "--uid",
                str(uid),
                "--gid",
                str(uid),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def admin(server: Running, *args: str) -> str:
    return cli(*args, "--data-dir", str(server.data_dir)).stdout


def add_entry(server: Running, spiffe_id: str, parent: str, uid: int, ttl: int = 3600) -> None:
    admin(
        server,
        "entry",
        "create",
        "--spiffe-id",
        spiffe_id,
        "--parent-id",
        parent,
        "--selector",
        f"unix:uid:{uid}",
        "--x509-ttl",
        str(ttl),
    )


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@contextmanager
def agent_on(server: Running, tmp_path: Path, entries: Callable[[str], object]) -> Iterator[Node]:
    """A real agent process joined to *server* with a token, after *entries* (given the
    node's SPIFFE ID) made its entries; stopped, and the server with it, on exit."""
    command = admin(server, "token", "create", "--selector", "region:test").split()
    token = command[command.index("--join-token") + 1]
    ca_sha256 = command[command.index("--ca-sha256") + 1]
    assert command[command.index("--server") + 1] == server.url
    node_id = f"spiffe://example.org/trustd/agent/join_token/{token.split('.')[0]}"
    entries(node_id)

    # World-traversable, so workloads running as other users reach the socket.
    sockets = Path(tempfile.mkdtemp(prefix="trustd-agent-"))
    sockets.chmod(0o755)
    socket = sockets / "agent.sock"
    agent_log = tmp_path / "agent.log"
    with agent_log.open("w") as log:
        agent = subprocess.Popen(
            [
                TRUSTD,
                "agent",
                "--server",
                server.url,
                "--join-token",
                token,
                "--ca-sha256",
                ca_sha256,
                "--socket",
                str(socket),
                "--data-dir",
                str(tmp_path / "agent"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    node = Node(server, agent, socket, node_id, agent_log)
    try:
        wait_for(socket.exists, 30, f"the agent socket; log: {agent_log}")
        yield node
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
        node.server.stop()
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield from _node(tmp_path)


def _node(tmp_path: Path, **env: str) -> Iterator[Node]:
    server = start_server(tmp_path / "var", tmp_path / "server.log", **env)

    def entries(node_id: str) -> None:
        add_entry(server, "spiffe://example.org/web", node_id, WEB)
        add_entry(server, "spiffe://example.org/db", node_id, DB, ttl=20)

    with agent_on(server, tmp_path, entries) as node:
        yield node


def svids_of(node: Node, uid: int) -> tuple[int, dict[str, Any]]:
    return node.run(uid, "x509")


def test_workloads_get_their_own_svids_and_talk_mtls(node: Node) -> None:
    code, web = wait_for(lambda: (r := svids_of(node, WEB))[0] == 0 and r, 30, "web SVID")
    assert [s["spiffe_id"] for s in web["svids"]] == ["spiffe://example.org/web"]
    code, db = svids_of(node, DB)
    assert code == 0
    assert [s["spiffe_id"] for s in db["svids"]] == ["spiffe://example.org/db"]
    code, stranger = svids_of(node, STRANGER)
    assert code == 3
    assert "PERMISSION_DENIED" in json.dumps(stranger).upper()

    # Mutual TLS between the two workloads, each seeing the other's SPIFFE ID.
    server = node.start(WEB, "mtls-server")
    assert server.stdout is not None
    port = json.loads(server.stdout.readline())["port"]
    code, client = node.run(DB, "mtls-client", str(port))
    assert code == 0, client
    assert client["peer"] == "spiffe://example.org/web"
    out, _ = server.communicate(timeout=30)
    assert json.loads(out.splitlines()[-1])["peer"] == "spiffe://example.org/db"

    # The node is known to the server and acknowledged what it applied.
    nodes = json.loads(admin(node.server, "node", "list", "--output", "json"))
    assert nodes[0]["spiffe_id"] == node.spiffe_id
    assert nodes[0]["applied_revision"] > 0

    # JWT-SVIDs: web fetches one, db validates it.
    code, jwt = node.run(WEB, "jwt", "api")
    assert code == 0, jwt
    code, valid = node.run(DB, "validate", jwt["token"], "api")
    assert code == 0, valid
    assert valid["spiffe_id"] == "spiffe://example.org/web"

    # WIT-SVIDs are off on this server: the Workload API answers as it does for any
    # method it does not serve.
    code, wit = node.wit(WEB)
    assert code == 3 and wit["error"] == "UNIMPLEMENTED", wit


def test_short_lived_svids_rotate(node: Node) -> None:
    # db's entry has a 20 s lifetime: the agent renews at 40-50 % of it.
    stream = node.start(DB, "stream", "2")
    out, err = stream.communicate(timeout=60)
    updates = [json.loads(line) for line in out.splitlines()]
    assert len(updates) == 2, (out, err)
    serials = [u["svids"][0]["serial"] for u in updates]
    assert serials[0] != serials[1]


def test_new_entries_reach_the_agent_within_a_second(node: Node) -> None:
    wait_for(lambda: svids_of(node, WEB)[0] == 0, 30, "first sync")
    add_entry(node.server, "spiffe://example.org/late", node.spiffe_id, STRANGER)
    started = time.monotonic()
    wait_for(lambda: svids_of(node, STRANGER)[0] == 0, 10, "the new entry")
    # Includes two client process starts; the sync itself is a long-poll woken at once.
    assert time.monotonic() - started < 5


def test_agent_survives_a_server_restart(node: Node) -> None:
    wait_for(lambda: svids_of(node, WEB)[0] == 0, 30, "first sync")
    port, data_dir = node.server.port, node.server.data_dir
    node.server.stop()
    # The server is gone: workloads are still served from the agent's cache.
    code, web = svids_of(node, WEB)
    assert code == 0
    assert web["svids"][0]["spiffe_id"] == "spiffe://example.org/web"
    node.server = start_server(data_dir, data_dir.parent / "server2.log", port=port)
    # And the agent resyncs: a change made after the restart reaches it.
    add_entry(node.server, "spiffe://example.org/after", node.spiffe_id, STRANGER)
    wait_for(lambda: svids_of(node, STRANGER)[0] == 0, 60, "resync after restart")
    assert node.agent.poll() is None


def test_a_revoked_svid_is_replaced_at_once(node: Node) -> None:
    _, web = wait_for(lambda: (r := svids_of(node, WEB))[0] == 0 and r, 30, "web SVID")
    serial = format(int(web["svids"][0]["serial"]), "x")
    # Let the agent's long-poll follow the revocation feed from a known point.
    time.sleep(1)
    # Revoked only: the identity is not quarantined, so the agent mints it a new SVID.
    admin(
        node.server,
        *("cert", "revoke", "--serial", serial, "--reason", "keyCompromise", "--no-quarantine"),
    )

    def replaced() -> bool:
        code, now = svids_of(node, WEB)
        return code == 0 and format(int(now["svids"][0]["serial"]), "x") != serial

    wait_for(replaced, 15, "the revoked SVID to be replaced")
    log = node.agent_log.read_text()
    assert '"svids_revoked"' in log


def test_an_evicted_agent_stops_and_says_what_to_do(node: Node) -> None:
    listed = admin(node.server, "node", "list")
    assert listed.splitlines()[0].split()[:4] == ["SPIFFE", "ID", "AGENT", "ID"]
    nodes = json.loads(admin(node.server, "node", "list", "--output", "json"))
    agent_id = nodes[0]["agent_id"]
    assert agent_id in listed
    # The short agent id that `node list` shows names the node as well as its SPIFFE ID.
    assert f"evicted {node.spiffe_id}" in admin(node.server, "node", "evict", agent_id)
    started = time.monotonic()
    code = node.agent.wait(60)
    log = node.agent_log.read_text()
    assert code != 0, log
    assert "this node was evicted or banned" in log and "trustd token create" in log
    # The void identity is gone, so a restart with a new join token attests anew.
    assert not (node.agent_log.parent / "agent" / "node-key.pem").exists()
    print(f"agent stopped {time.monotonic() - started:.1f} s after the eviction")


@pytest.fixture
def wit_node(tmp_path: Path) -> Iterator[Node]:
    yield from _node(tmp_path, TRUSTD_WIT_SVID="true")


def test_wit_svids_are_bound_to_the_key_handed_to_the_workload(wit_node: Node) -> None:
    node = wit_node
    code, answer = wait_for(lambda: (r := node.wit(WEB))[0] == 0 and r, 30, "web WIT-SVID")
    [svid] = answer["svids"]
    assert svid["spiffe_id"] == "spiffe://example.org/web"
    assert svid["key"]["alg"] == "ES256" and "d" in svid["key"]
    document = httpx.get(f"{node.server.url}/v1/bundle", verify=tls(node.server.bundle)).json()
    domain = TrustDomain("example.org")
    bundle = TrustBundle.from_jwks(document, domain)
    public_jwk = {k: v for k, v in svid["key"].items() if k != "d"}
    bound, _ = parse_workload_jwk(public_jwk)
    clock = SystemClock()
    held = validate_wit_svid(
        svid["token"], bundle.wit_authorities, clock, domain, presented_key=bound
    )
    assert str(held.spiffe_id) == "spiffe://example.org/web"
    assert held.kid not in bundle.jwt_authorities
    other = generate_private_key(KeyType.EC_P256).public_key()
    with pytest.raises(InvalidWit, match="another key"):
        validate_wit_svid(svid["token"], bundle.wit_authorities, clock, domain, presented_key=other)
    # Each identity is checked like every other call: a stranger gets nothing.
    code, stranger = node.wit(STRANGER)
    assert code == 3 and stranger["error"] == "PERMISSION_DENIED", stranger

    # The CLI: mint for a key made here, then check the token offline with that key.
    out = node.server.data_dir.parent / "wit-cli"
    admin(
        node.server,
        "svid",
        "wit",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/cli",
        "--out",
        str(out),
    )
    bundle_file = out / "bundle.json"
    bundle_file.write_text(json.dumps(document))
    token = (out / "wit.jwt").read_text().strip()
    verified = cli(
        *("-o", "json", "svid", "wit", "verify", token, "--bundle", str(bundle_file)),
        *("--trust-domain", "example.org", "--key", str(out / "key.pem")),
    )
    assert json.loads(verified.stdout)["spiffe_id"] == "spiffe://example.org/cli"
    (out / "other.jwk").write_text(json.dumps(workload_jwk(other)))
    refused = cli(
        *("svid", "wit", "verify", token, "--bundle", str(bundle_file)),
        *("--trust-domain", "example.org", "--key", str(out / "other.jwk")),
        check=False,
    )
    assert refused.returncode == 1
    assert "bound to another key" in refused.stderr
