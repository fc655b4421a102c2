"""eBPF enforcement with real packets: three workloads in network namespaces, a real
trustd server and a real agent attaching the tc program, real TCP connections, over IPv4,
over IPv6 (neighbour discovery through the enforced interfaces included) and dual-stack.
Only addresses inside the namespaces this test creates (10.213.x.x, fd00:213:1::/64) are
used."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Running, join_agent_command, start_server, tls
from trustd.agent.enforcement.ebpf import COUNTERS, Config, IpcacheKey

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timed,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and eBPF need root"),
    pytest.mark.skipif(shutil.which("clang") is None, reason="clang is needed (make system-deps)"),
]
TD = "spiffe://example.org"
WEB, API, BAD = f"{TD}/ns/web/frontend", f"{TD}/ns/api/orders", f"{TD}/ns/quarantine/x"
PORT = 8443
LISTENER = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    f"s.bind(('::', {PORT})); s.listen(128)\n"
    "while True:\n    c, _ = s.accept(); c.close()\n"
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Mesh:
    tag: str
    server: Running
    agent: subprocess.Popen[str]
    agent_log: Path
    node_id: str
    pin_dir: Path
    socket: Path
    # Each namespace's addresses, the family under test first.
    addresses: dict[str, list[str]]

    def addr(self, name: str, index: int = 0) -> str:
        return self.addresses[name][index]

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def connects(self, src: str, dst_addr: str) -> bool:
        code = (
            f"import socket\nsocket.create_connection(('{dst_addr}', {PORT}), timeout=0.3).close()"
        )
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns(src), sys.executable, "-c", code],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method,
            f"{self.server.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.server.token}"},
            verify=tls(self.server.bundle),
        )
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def dump(self, name: str) -> list[dict[str, Any]]:
        """A pinned map's elements, as bpftool reads them."""
        out = subprocess.run(
            ["bpftool", "-j", "map", "dump", "pinned", str(self.pin_dir / name)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return list(json.loads(out))

    def counters(self) -> dict[str, int]:
        return {
            COUNTERS[_number(item["key"])]: sum(_number(v["value"]) for v in item["values"])
            for item in self.dump("trustd_counters")
        }


def _number(value: Any) -> int:
    """bpftool prints a value as a number, or as little-endian hex bytes without BTF."""
    if isinstance(value, list):
        return int.from_bytes(bytes(int(b, 16) for b in value), "little")
    return int(value)


# How soon a pushed change must reach the datapath here. The product's target (p99 under
# 1 s, to 100 agents) is bench/propagation.py's, measured against its baseline; a test only
# proves the agent was woken: its long-poll waits 30 s and nothing else of the agent's would
# apply a change sooner, so a change seen within this bound came by the wake.
PROPAGATED = 3.0


def until(predicate: Any, timeout: float) -> float:
    """Seconds until `predicate` holds, counted to the start of the probe that found it
    (a connection probe is a new process: its start-up is no part of what it measures);
    fails after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        probed = time.monotonic()
        if predicate():
            return probed - started
        time.sleep(0.02)
    pytest.fail(f"not within {timeout} s")


FAMILIES = {
    "ipv4": {"web": ["10.213.1.1"], "api": ["10.213.1.2"], "bad": ["10.213.1.3"]},
    "ipv6": {"web": ["fd00:213:1::1"], "api": ["fd00:213:1::2"], "bad": ["fd00:213:1::3"]},
    "dual": {
        "web": ["10.213.1.1", "fd00:213:1::1"],
        "api": ["10.213.1.2", "fd00:213:1::2"],
        "bad": ["10.213.1.3", "fd00:213:1::3"],
    },
}


def _mesh(
    tmp_path: Path,
    mode: str,
    *agent_args: str,
    enforce: tuple[str, ...] = ("api", "web"),
    unmanaged: dict[str, str] | None = None,
    family: str = "ipv4",
) -> Iterator[Mesh]:
    """The namespaces (web, api and bad with entries, plus `unmanaged` name -> address in
    none), a server, and an agent enforcing on the `enforce` namespaces' eth0. `family`:
    the managed namespaces' addresses (FAMILIES)."""
    tag = f"td{uuid.uuid4().hex[:6]}"
    pin_dir = Path("/sys/fs/bpf/trustd") / tag
    managed = FAMILIES[family]
    names = {**managed, **{name: [addr] for name, addr in (unmanaged or {}).items()}}
    listeners: list[subprocess.Popen[bytes]] = []
    server: Running | None = None
    agent: subprocess.Popen[str] | None = None
    # World-traversable, so workloads running as other users reach the agent's socket.
    sockets = Path(tempfile.mkdtemp(prefix="trustd-mesh-"))
    sockets.chmod(0o755)
    try:
        ip("netns", "add", f"{tag}-hub")
        ip("-n", f"{tag}-hub", "link", "add", "br0", "type", "bridge")
        ip("-n", f"{tag}-hub", "link", "set", "br0", "up")
        for index, (name, addrs) in enumerate(names.items()):
            ns = f"{tag}-{name}"
            ip("netns", "add", ns)
            peer = f"p{index}"
            ip(
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                peer,
                "netns",
                f"{tag}-hub",
            )
            ip("-n", f"{tag}-hub", "link", "set", peer, "master", "br0", "up")
            for addr in addrs:
                if ":" in addr:  # no duplicate address detection: usable at once
                    ip("-n", ns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
                else:
                    ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            listeners.append(
                subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER])
            )
        server = start_server(tmp_path / "var", tmp_path / "server.log")
        interfaces = [o for name in enforce for o in ("--enforce-interface", f"{tag}-{name}/eth0")]
        command = join_agent_command(
            server,
            tmp_path,
            *interfaces,
            "--enforcement-mode",
            mode,
            "--bpf-pin-dir",
            str(pin_dir),
            *agent_args,
        )
        command[command.index("--socket") + 1] = str(sockets / "agent.sock")
        token = command[command.index("--join-token") + 1]
        node_id = f"{TD}/trustd/agent/join_token/{token.split('.')[0]}"
        agent_log = tmp_path / "agent.log"
        with agent_log.open("w") as log:
            agent = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        mesh = Mesh(tag, server, agent, agent_log, node_id, pin_dir, sockets / "agent.sock", names)
        for (name, addrs), spiffe_id in zip(managed.items(), (WEB, API, BAD), strict=True):
            mesh.api(
                "POST",
                "/v1/entries",
                {
                    "spiffe_id": spiffe_id,
                    "parent_id": node_id,
                    "selectors": [f"unix:uid:{3000 + len(name)}{addrs[0][-1]}"],
                    "ip_addresses": addrs,
                },
            )
        until(lambda: (pin_dir / "trustd_config").exists(), 30)
        yield mesh
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
        if server is not None:
            server.stop()
        for listener in listeners:
            listener.kill()
            listener.wait()
        for name in ("hub", *names):
            subprocess.run(["ip", "netns", "del", f"{tag}-{name}"], check=False)
        shutil.rmtree(pin_dir, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture(params=["ipv4", "ipv6"])
def mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mesh]:
    yield from _mesh(tmp_path, "enforce", family=request.param)


@pytest.fixture
def dual_mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield from _mesh(tmp_path, "enforce", family="dual")


@pytest.fixture
def audit_mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield from _mesh(tmp_path, "audit")


STALENESS = 6.0


@pytest.fixture(params=["ipv4", "ipv6"])
def stale_mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mesh]:
    yield from _mesh(tmp_path, "enforce", "--staleness-limit", str(STALENESS), family=request.param)


def set_policy(
    mesh: Mesh, allow: list[dict[str, Any]], deny: list[dict[str, Any]], **settings: Any
) -> None:
    """Activate the shipped mesh module with these rules (and `data.mesh` settings)."""
    modules = {"mesh.rego": (Path(__file__).parents[2] / "rego" / "mesh.rego").read_text()}
    mesh.api(
        "POST",
        "/v1/admin/policy/bundles",
        {"modules": modules, "data": {"mesh": {"allow": allow, "deny": deny, **settings}}},
    )


def web_to_api_in_force(mesh: Mesh) -> bool:
    """web may reach api and quarantine may not: the verdicts are applied. (Before the
    agent's first revision every address is unmanaged and every connection passes.)"""
    return not mesh.connects("bad", mesh.addr("api")) and mesh.connects("web", mesh.addr("api"))


def test_policy_allows_denies_flips_and_revokes(mesh: Mesh) -> None:
    web_to_api = {"name": "w", "source": WEB, "destination": API, "ports": [PORT]}
    set_policy(mesh, [web_to_api], [])
    # web -> api allowed; quarantine -> api dropped; api -> web dropped (nothing allows).
    until(lambda: web_to_api_in_force(mesh), 10)
    assert not mesh.connects("bad", mesh.addr("api"))
    assert not mesh.connects("api", mesh.addr("web"))
    before = mesh.counters()
    assert before["dropped"] >= 2 and before["allowed"] >= 1

    # A policy change flips the verdicts at once (by the agent's wake), seen with real
    # connections.
    set_policy(mesh, [{**web_to_api, "source": BAD}], [])
    until(lambda: not mesh.connects("web", mesh.addr("api")), PROPAGATED)
    assert mesh.connects("bad", mesh.addr("api"))

    # Revoking the quarantine identity's SVIDs for keyCompromise quarantines it (by
    # default): it is cut off at once.
    until(lambda: b"svids_minted" in mesh.agent_log.read_bytes(), 30)
    mesh.api("POST", "/v1/admin/certificates/revoke", {"spiffe_id": BAD, "reason": "keyCompromise"})
    until(lambda: not mesh.connects("bad", mesh.addr("api")), PROPAGATED)
    assert mesh.counters()["revoked"] >= 1

    # trustd reports the agent applied the newest revision.
    lag = mesh.api("GET", "/v1/verdicts/agents")
    assert lag[0]["node_id"] == mesh.node_id
    until(lambda: mesh.api("GET", "/v1/verdicts/agents")[0]["lag"] == 0, 5)


def test_audit_mode_drops_nothing_and_counts(audit_mesh: Mesh) -> None:
    set_policy(audit_mesh, [], [])
    # Nothing is allowed: once the verdicts are applied, every connection counts as denied.
    until(
        lambda: (
            audit_mesh.connects("bad", audit_mesh.addr("api")) and audit_mesh.counters()["denied"]
        ),
        10,
    )
    before = audit_mesh.counters()["denied"]
    assert audit_mesh.connects("bad", audit_mesh.addr("api"))
    assert audit_mesh.connects("web", audit_mesh.addr("api"))
    counts = audit_mesh.counters()
    assert counts["denied"] >= before + 2
    assert counts["dropped"] == 0


def test_staleness_limit_denies_everything_once_trustd_is_silent(stale_mesh: Mesh) -> None:
    mesh = stale_mesh
    web_to_api = {"name": "w", "source": WEB, "destination": API, "ports": [PORT]}
    set_policy(mesh, [web_to_api], [])
    until(lambda: web_to_api_in_force(mesh), 10)
    # While trustd answers, the agent keeps moving the deadline: still open past the limit.
    time.sleep(STALENESS + 1)
    assert mesh.connects("web", mesh.addr("api"))
    assert mesh.counters()["stale"] == 0

    # The last answer came at most a third of the limit before this.
    stopping = time.monotonic()
    mesh.server.stop()
    # Fail-static first: the last applied revision stays in force...
    assert mesh.connects("web", mesh.addr("api"))
    assert not mesh.connects("bad", mesh.addr("api"))
    # ...until the limit passes without a word from trustd: then everything is denied.
    until(lambda: not mesh.connects("web", mesh.addr("api")), 3 * STALENESS)
    assert time.monotonic() - stopping >= STALENESS * 2 / 3 - 0.1
    assert mesh.counters()["stale"] >= 1


def ebpf_ipcache(mesh: Mesh) -> dict[str, int]:
    """The eBPF IP cache's current generation, as prefix -> identity (read through the
    agent's own struct layouts)."""

    def raw(value: Any) -> bytes:
        return bytes(int(b, 16) for b in value)

    def config() -> tuple[int, int]:
        found = Config.from_buffer_copy(raw(mesh.dump("trustd_config")[0]["value"]))
        return found.gen, found.revision

    # The agent may switch to a new revision while the map is read (and clear the old
    # generation): read again until the map was read within one revision.
    while True:
        before = config()
        found = {}
        for item in mesh.dump("trustd_ipcache"):
            key = IpcacheKey.from_buffer_copy(raw(item["key"]))
            if key.gen == before[0]:
                found[key.prefix] = _number(item["value"])
        if config() == before:
            return found


def _both(mesh: Mesh, src: str, dst: str) -> list[bool]:
    """Whether `src` reaches `dst` over IPv4 and over IPv6."""
    return [mesh.connects(src, mesh.addr(dst, index)) for index in (0, 1)]


def test_a_dual_stack_workload_is_enforced_on_both_families_by_one_policy(
    dual_mesh: Mesh,
) -> None:
    """One policy judges both families, first for addresses the entries declare, then for
    a dual-stack workload whose entry declares none: it fetches its SVID from the agent's
    Workload API, in its own network namespace, as the entry's uid; the agent reports the
    namespace's IPv4 and IPv6 addresses (not its link-local one), and the eBPF IP cache
    gives both the workload's identity (a /32 and a /128)."""
    mesh = dual_mesh
    web_to_api = {"name": "w", "source": WEB, "destination": API, "ports": [PORT]}
    set_policy(mesh, [web_to_api], [])
    until(lambda: web_to_api_in_force(mesh), 10)
    assert _both(mesh, "web", "api") == [True, True]
    assert _both(mesh, "bad", "api") == [False, False]
    assert _both(mesh, "api", "web") == [False, False]
    web_prefixes = {"10.213.1.1/32", "fd00:213:1::1/128"}
    web_number = ebpf_ipcache(mesh)["10.213.1.1/32"]
    assert ebpf_ipcache(mesh)["fd00:213:1::1/128"] == web_number

    # The web entry's declared addresses go: web is unknown, its connections are dropped.
    [web_entry] = mesh.api("GET", f"/v1/entries?spiffe_id={WEB}")["entries"]
    mesh.api("PATCH", f"/v1/entries/{web_entry['id']}", {"ip_addresses": []})
    until(lambda: not web_prefixes & ebpf_ipcache(mesh).keys(), 10)
    assert _both(mesh, "web", "api") == [False, False]

    # The web workload (uid 30031, as its entry selects) calls the Workload API from its
    # namespace and keeps its X509-SVID stream open.
    uid = web_entry["selectors"][0].rsplit(":", 1)[1]
    client = Path(__file__).with_name("workload_client.py")
    workload = subprocess.Popen(
        [
            *("ip", "netns", "exec", mesh.ns("web"), sys.executable, str(client)),
            *("--socket", str(mesh.socket), "--uid", uid, "--gid", uid, "stream", "1000"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert workload.stdout is not None
        first = json.loads(workload.stdout.readline())
        assert [s["spiffe_id"] for s in first["svids"]] == [WEB], first

        def reported() -> set[str]:
            return {k for k, v in ebpf_ipcache(mesh).items() if v == web_number}

        # Both its addresses are back with its identity, and nothing else is (its fe80::
        # address names no one workload, RFC 4291 §2.5.6); the policy applies to both.
        until(lambda: reported() == web_prefixes, 15)
        until(lambda: _both(mesh, "web", "api") == [True, True], 5)
        assert _both(mesh, "bad", "api") == [False, False]
        # Both families flip with the one policy.
        set_policy(mesh, [{**web_to_api, "source": BAD}], [])
        until(lambda: _both(mesh, "web", "api") == [False, False], 2)
        assert _both(mesh, "bad", "api") == [True, True]
        set_policy(mesh, [web_to_api], [])
        until(lambda: _both(mesh, "web", "api") == [True, True], 2)
    finally:
        workload.kill()
        workload.communicate()

    # Once the workload has gone, the agent's next pass withdraws both addresses.
    until(lambda: not web_prefixes & ebpf_ipcache(mesh).keys(), 30)
    assert _both(mesh, "web", "api") == [False, False]
