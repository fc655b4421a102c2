"""The Workload API against py-spiffe's WorkloadApiClient, each workload its own process.

The agent side (cache, gRPC server, relay) runs on an event loop thread in this process;
the workloads are `workload_client.py` processes that drop to their own uid/gid before
they connect, so attestation sees real, different credentials.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pki.clock import FakeClock
from tests.workload_helpers import Domain, LoopThread
from trustd.agent.cache import SvidCache
from trustd.agent.workload_api import WorkloadApiServer, start_workload_api

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs workloads as other users"),
]
CLIENT = str(Path(__file__).with_name("workload_client.py"))
WEB, DB, STRANGER = 1001, 1002, 1003


@dataclass
class Node:
    domain: Domain
    cache: SvidCache
    loop: LoopThread
    server: WorkloadApiServer
    socket: Path

    def workload(self, uid: int, *args: str) -> subprocess.Popen[str]:
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

    def run(self, uid: int, *args: str) -> tuple[int, dict[str, object]]:
        process = self.workload(uid, *args)
        out, err = process.communicate(timeout=60)
        assert out, err
        return process.returncode, json.loads(out.splitlines()[-1])


@pytest.fixture
def node() -> Iterator[Node]:
    # Certificates must be valid by the wall clock: the workloads run real TLS.
    domain = Domain(FakeClock(datetime.now(UTC)))
    cache = SvidCache()
    # World-traversable, so workloads under other uids reach the socket.
    directory = Path(tempfile.mkdtemp(prefix="trustd-wl-"))
    directory.chmod(0o755)
    loop = LoopThread()
    entries = [
        domain.entry("web", "/web", f"unix:uid:{WEB}", "unix:gid:1001"),
        domain.entry("db", "/db", f"unix:uid:{DB}"),
        # Needs a selector no workload here has: never matches.
        domain.entry("ops", "/ops", f"unix:uid:{STRANGER}", "unix:user:no-such-user"),
    ]

    async def setup() -> WorkloadApiServer:
        await cache.set_entries(entries)
        await cache.set_bundle(domain.bundle())
        for entry in entries:
            await cache.put_svid(domain.svid(entry))
        return await start_workload_api(
            directory / "agent.sock", cache, domain.jwt_source(), clock=domain.clock
        )

    server = loop.run(setup())
    try:
        yield Node(domain, cache, loop, server, directory / "agent.sock")
    finally:
        loop.run(server.stop(None))
        loop.close()
        shutil.rmtree(directory)


def test_workloads_under_different_uids_get_their_own_svids(node: Node) -> None:
    code, web = node.run(WEB, "x509")
    assert code == 0, web
    code, db = node.run(DB, "x509")
    assert code == 0, db
    assert [s["spiffe_id"] for s in web["svids"]] == ["spiffe://example.org/web"]  # type: ignore[index]
    assert [s["spiffe_id"] for s in db["svids"]] == ["spiffe://example.org/db"]  # type: ignore[index]
    assert web["svids"][0]["chain"] == 2  # type: ignore[index]
    assert web["bundles"] == ["example.org"]
    code, bundles = node.run(DB, "x509-bundles")
    assert (code, bundles) == (0, {"example.org": 1})


def test_workload_without_an_entry_gets_nothing(node: Node) -> None:
    for command in (["x509"], ["x509-bundles"], ["jwt", "db"], ["jwt-bundles"]):
        code, result = node.run(STRANGER, *command)
        assert code == 3, result
        assert "PERMISSION_DENIED" in str(result["message"]), result


def test_jwt_svids_bundles_and_validation(node: Node) -> None:
    code, jwt = node.run(WEB, "jwt", "db")
    assert code == 0, jwt
    assert jwt["spiffe_id"] == "spiffe://example.org/web"
    code, bundles = node.run(DB, "jwt-bundles")
    assert (code, bundles) == (0, {"example.org": [node.domain.kid]})
    # The db workload validates the token web presented to it.
    code, valid = node.run(DB, "validate", str(jwt["token"]), "db")
    assert (code, valid) == (0, {"spiffe_id": "spiffe://example.org/web", "audience": ["db"]})
    code, wrong = node.run(DB, "validate", str(jwt["token"]), "cache")
    assert code == 3 and "INVALID_ARGUMENT" in str(wrong["message"]), wrong
    # Asking for another workload's identity.
    code, denied = node.run(WEB, "jwt", "db", "spiffe://example.org/db")
    assert code == 3 and "PERMISSION_DENIED" in str(denied["message"]), denied


def test_stream_pushes_rotated_svid(node: Node) -> None:
    with node.workload(WEB, "stream", "2") as process:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        old = node.cache.svid("web")
        assert old is not None
        assert first["svids"] == [
            {"spiffe_id": "spiffe://example.org/web", "serial": str(old.chain[0].serial_number)}
        ]
        entry = next(e for e in node.cache.entries() if e.id == "web")
        rotated = node.domain.svid(entry)
        node.loop.run(node.cache.put_svid(rotated))
        second = json.loads(process.stdout.readline())
        assert second["update"] == 2
        assert second["svids"][0]["serial"] == str(rotated.chain[0].serial_number)
        assert process.wait(30) == 0


def test_mutual_tls_between_two_workloads(node: Node) -> None:
    server = node.workload(WEB, "mtls-server")
    assert server.stdout is not None
    ready = json.loads(server.stdout.readline())
    assert ready["me"] == "spiffe://example.org/web"
    code, client_view = node.run(DB, "mtls-client", str(ready["port"]))
    assert code == 0, client_view
    server_out, server_err = server.communicate(timeout=30)
    server_view = json.loads(server_out.splitlines()[-1])
    # Each side authenticated the other by certificate and read its SPIFFE ID.
    assert client_view == {"peer": "spiffe://example.org/web", "said": "spiffe://example.org/web"}
    assert server_view == {"peer": "spiffe://example.org/db", "said": "spiffe://example.org/db"}, (
        server_err
    )

    # A third workload has no entry: it gets no SVID, so it has nothing to present.
    code, stranger = node.run(STRANGER, "mtls-client", str(ready["port"]))
    assert code == 3 and "PERMISSION_DENIED" in str(stranger["message"]), stranger
