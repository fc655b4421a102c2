"""Real OPA clients against real `trustd serve` processes.

- opa-python-client's `check_health`, `update_policy_from_string`, `query_rule`,
  `get_policy`, `delete_policy` behave as against OPA;
- its data calls (`update_or_create_data`, `patch_data`, `get_data`, `delete_data`) with
  `get_policies_list`, `query_rule` and `ad_hoc_query` behave as against OPA;
- a second trustd with the remote engine pointed at the first decides like the embedded
  engine, over a table of mesh cases;
- `trustd policy test` and `trustd policy check` run the shipped rego/ like `opa test`.
"""

from __future__ import annotations

import itertools
import json
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
from typing import IO

import httpx
import pytest
from opa_client.errors import (
    DeleteDataError,
    PatchDataError,
    PolicyNotFoundError,
    RegoParseError,
)
from opa_client.opa import OpaClient

from policy.engine import EmbeddedEngine
from policy.testing import load_directory

pytestmark = pytest.mark.integration
TRUSTD = str(Path(sys.executable).parent / "trustd")
REGO = Path(__file__).resolve().parents[2] / "rego"


@dataclass
class Trustd:
    process: subprocess.Popen[str]
    port: int
    data_dir: Path
    token: str
    log: IO[str]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def bundle(self) -> str:
        return str(self.data_dir / "bundle.pem")

    def decide(self, path: str, input: object) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/data/{path}",
            json={"input": input},
            headers={"Authorization": f"Bearer {self.token}"},
            verify=ssl.create_default_context(cafile=self.bundle),
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp_path: Path, name: str, **env: str) -> Trustd:
    data_dir = tmp_path / name
    port = _free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    environment.update(env)
    log = (tmp_path / f"{name}.log").open("w")
    process = subprocess.Popen(
        [TRUSTD, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert process.stdout is not None
    token = ""
    for line in process.stdout:
        if line.strip().startswith("trustd."):
            token = line.strip()
        if line.startswith("Next"):
            break
    else:
        process.wait(10)
        log.close()
        pytest.fail(f"trustd serve exited: {(tmp_path / f'{name}.log').read_text()}")
    server = Trustd(process, port, data_dir, token, log)
    tls = ssl.create_default_context(cafile=server.bundle)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/health", verify=tls).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail("trustd did not report /health")


def _stop(server: Trustd) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(20)
    assert server.process.stdout is not None
    server.process.stdout.close()
    server.log.close()


@pytest.fixture
def first(tmp_path: Path) -> Iterator[Trustd]:
    server = _start(tmp_path, "first")
    yield server
    _stop(server)


@pytest.fixture
def client(first: Trustd, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpaClient]:
    """opa-python-client against `first`, closed afterwards: an idle TLS keep-alive
    connection would hold the server's graceful shutdown for its whole timeout (10 s)."""
    # requests reads its CA file from the environment before the client's own setting.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", first.bundle)
    opa = OpaClient(host="127.0.0.1", port=first.port, ssl=first.bundle, token=first.token)
    yield opa
    opa.close_connection()


EXAMPLE = """package example
import rego.v1

default allow := false
allow if input.user in data.example.admins
admins := ["alice"]
"""


def test_opa_python_client_against_trustd(first: Trustd, client: OpaClient) -> None:
    assert client.check_health() is True
    assert client.update_policy_from_string(EXAMPLE, "example") is True
    answer = client.query_rule({"user": "alice"}, "example", "allow")
    assert answer["result"] is True and "decision_id" in answer
    assert client.query_rule({"user": "bob"}, "example", "allow")["result"] is False
    assert "example" in client.get_policies_list()
    assert client.get_policy("example")["result"]["raw"] == EXAMPLE
    with pytest.raises(RegoParseError) as refused:
        client.update_policy_from_string("package broken\nallow if {", "broken")
    assert "broken:2" in str(refused.value)
    # The refused module changed nothing.
    assert client.query_rule({"user": "alice"}, "example", "allow")["result"] is True
    assert client.delete_policy("example") is True
    # As OPA answers: the deleted package's rule is an undefined document (200, no result).
    assert "result" not in client.query_rule({"user": "alice"}, "example", "allow")
    client.close_connection()


TEAM = """package team
import rego.v1

default allow := false

allow if input.user in data.teams.admins
"""


def test_opa_python_client_data_documents(first: Trustd, client: OpaClient) -> None:
    assert client.update_policy_from_string(TEAM, "team") is True
    assert "team" in client.get_policies_list()
    assert client.query_rule({"user": "alice"}, "team", "allow")["result"] is False
    # PUT answers 204, as OPA does; the client reads that as success.
    assert client.update_or_create_data({"admins": ["alice"]}, "teams") is True
    assert client.get_data("teams")["result"] == {"admins": ["alice"]}
    assert client.query_rule({"user": "alice"}, "team", "allow")["result"] is True
    assert client.patch_data("teams", [{"op": "add", "path": "/admins/-", "value": "bob"}])
    assert client.query_rule({"user": "bob"}, "team", "allow")["result"] is True
    rows = client.ad_hoc_query("x := data.teams.admins[_]")["result"]
    assert sorted(row["x"] for row in rows) == ["alice", "bob"]
    # Errors carry OPA's codes where the client looks for them.
    with pytest.raises(PatchDataError) as missing:
        client.patch_data("teams", [{"op": "remove", "path": "/owners"}])
    assert missing.value.expression == "resource_not_found"
    with pytest.raises(RegoParseError) as clash:
        client.update_or_create_data({"allow": True}, "team")
    assert clash.value.expression == "invalid_parameter"
    assert "conflicting rule for data path team/allow" in str(clash.value)
    assert client.delete_data("teams") is True
    with pytest.raises(PolicyNotFoundError):
        client.get_data("teams")
    with pytest.raises(DeleteDataError) as gone:
        client.delete_data("teams")
    assert gone.value.expression == "resource_not_found"
    assert client.query_rule({"user": "alice"}, "team", "allow")["result"] is False
    client.close_connection()


def test_policy_data_commands(first: Trustd) -> None:
    shared = ["--server", first.url, "--token", first.token, "--ca-bundle", first.bundle]
    put = _cli(*shared, "policy", "data", "put", "teams/leads", '["ann"]')
    assert put.returncode == 0, put.stderr
    assert "data.teams.leads: written" in put.stdout
    kept = _cli(*shared, "policy", "data", "put", "teams.leads", "[]", "--if-absent")
    assert "exists, left alone" in kept.stdout
    patched = _cli(
        *shared,
        "policy",
        "data",
        "patch",
        "teams",
        '[{"op": "add", "path": "/leads/-", "value": "bo"}]',
    )
    assert patched.returncode == 0, patched.stderr
    got = _cli(*shared, "--output", "json", "policy", "data", "get", "data.teams")
    assert json.loads(got.stdout) == {"leads": ["ann", "bo"]}
    assert first.decide("teams/leads", {}).json()["result"] == ["ann", "bo"]
    assert _cli(*shared, "policy", "data", "delete", "teams").returncode == 0
    missing = _cli(*shared, "policy", "data", "delete", "teams")
    assert missing.returncode == 1 and "404" in missing.stderr
    assert _cli(*shared, "policy", "data", "get", "teams").returncode == 1


SOURCES = [
    "spiffe://example.org/ns/web/frontend",
    "spiffe://example.org/ns/api/orders",
    "spiffe://example.org/ns/quarantine/web/x",
    "spiffe://example.org/ns/monitoring/prometheus",
    "web",
]
DESTINATIONS = ["spiffe://example.org/ns/api/orders", "spiffe://example.org/ns/db/postgres"]
REQUESTS = [
    (8443, "http", "GET", "/v1/orders"),
    (8443, "http", "DELETE", "/v1/orders"),
    (8443, "http", "POST", "/v1/admin/users"),
    (5432, "tcp", "", ""),
    (9090, "http", "GET", "/metrics"),
    (80, "http", "GET", "/v1/orders"),
]


def mesh_cases() -> list[dict[str, object]]:
    cases: list[dict[str, object]] = []
    for src, dst, (port, proto, method, path) in itertools.product(SOURCES, DESTINATIONS, REQUESTS):
        case: dict[str, object] = {
            "source": src,
            "destination": dst,
            "port": port,
            "protocol": proto,
        }
        if method:
            case.update(method=method, path=path)
        cases.append(case)
    # Envoy ext_authz shape too.
    cases.append(
        {
            "attributes": {
                "source": {"principal": SOURCES[0]},
                "destination": {
                    "principal": DESTINATIONS[0],
                    "address": {"socketAddress": {"portValue": 8443}},
                },
                "request": {"http": {"method": "GET", "path": "/v1/orders?x=1"}},
            }
        }
    )
    return cases


def test_remote_engine_decides_like_the_embedded_engine(first: Trustd, tmp_path: Path) -> None:
    second = _start(
        tmp_path,
        "second",
        TRUSTD_POLICY_ENGINE="remote",
        TRUSTD_POLICY_REMOTE_URL=first.url,
        TRUSTD_POLICY_REMOTE_TOKEN=first.token,
        TRUSTD_POLICY_REMOTE_CA_BUNDLE=first.bundle,
    )
    try:
        bundle = load_directory(REGO, tests=False)
        embedded = EmbeddedEngine(bundle.modules, bundle.data)
        cases = mesh_cases()
        assert len(cases) >= 50
        table = []
        for case in cases:
            expected = embedded.query("trustd/mesh/decision", json.dumps(case)).value
            remote = second.decide("trustd/mesh/decision", case)
            assert remote.status_code == 200, remote.text
            table.append((expected, remote.json()["result"]))
        assert all(expected == got for expected, got in table)
        verdicts = {expected["allowed"] for expected, _ in table}
        assert verdicts == {True, False}
        # An unknown path is an undefined document through the remote engine too (as OPA).
        unknown = second.decide("no/such/rule", {})
        assert unknown.status_code == 200 and "result" not in unknown.json()
    finally:
        _stop(second)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRUSTD, *args], capture_output=True, text=True, timeout=120)


def test_policy_test_and_check_commands(tmp_path: Path) -> None:
    passed = _cli("policy", "test", str(REGO))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "PASS: " in passed.stdout and "FAIL" not in passed.stdout
    assert _cli("policy", "check", str(REGO)).returncode == 0

    (tmp_path / "p.rego").write_text("package p\nimport rego.v1\nallow if input.ok\n")
    (tmp_path / "p_test.rego").write_text(
        "package p_test\nimport rego.v1\nimport data.p\n"
        'test_allows if p.allow with input as {"ok": true}\n'
        'test_wrong if p.allow with input as {"ok": false}\n'
    )
    failed = _cli("policy", "test", str(tmp_path))
    assert failed.returncode == 1
    assert "FAIL  data.p_test.test_wrong" in failed.stdout
    assert "PASS: 1/2, FAIL: 1" in failed.stdout

    (tmp_path / "bad.rego").write_text("package bad\nimport rego.v1\nx := nope.fn(1)\n")
    checked = _cli("policy", "check", str(tmp_path))
    assert checked.returncode == 1
    assert "bad.rego:3:13: could not find function nope.fn" in checked.stderr
