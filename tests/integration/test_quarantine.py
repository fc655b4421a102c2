"""Revoking a certificate and quarantining an identity, with real packets: the enforcement
namespaces of test_enforcement (a real server, a real agent attaching the tc program), a
workload X (the `bad` namespace) with a connection kept open to api, and py-spiffe as X on
the agent's Workload API.

Revoking one of X's certificates leaves X connected and gets it a new SVID; quarantining X
cuts its new and established connections as soon as the agent is woken, and the Workload API
refuses it with the reason; releasing it lets it back as soon, with a fresh SVID (how soon
across 100 agents is bench/propagation.py's measure). Unmanaged
destinations (namespaces in no entry): a quarantined X reaches only the node's
always-allowed prefixes, and the node's `unmanaged: deny` holds every workload to them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import cli
from tests.integration.test_enforcement import (
    API,
    BAD,
    PORT,
    PROPAGATED,
    WEB,
    Mesh,
    _mesh,
    set_policy,
    until,
)
from tests.integration.test_enforcement import (
    pytestmark as enforcement_marks,
)
from trustd.agent.enforcement.ebpf import FLAG_CUT_ESTABLISHED, Config

pytestmark = enforcement_marks
ECHO = 8444
API_ADDR = "10.213.1.2"
# In no entry: an outside address, and one the node always allows (its resolver, say).
EXT_ADDR, DNS_ADDR = "10.213.1.4", "10.213.1.5"
# uid of the `bad` entry's selector (test_enforcement `_mesh`).
X_UID = "30033"
ECHO_SERVER = (
    "import socket, threading\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {ECHO})); s.listen(16)\n"
    "def serve(c):\n"
    "    while (d := c.recv(64)):\n"
    "        c.sendall(d)\n"
    "while True:\n"
    "    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n"
)
# An established connection: one byte there and back every 50 ms; "cut" once an echo
# does not come back within 0.3 s.
FLOW = (
    "import socket, time\n"
    f"s = socket.create_connection(('{API_ADDR}', {ECHO}), timeout=2); s.settimeout(0.3)\n"
    "print('open', flush=True)\n"
    "while True:\n"
    "    try:\n"
    "        s.sendall(b'x')\n"
    "        if s.recv(1) != b'x':\n"
    "            break\n"
    "    except OSError:\n"
    "        break\n"
    "    time.sleep(0.05)\n"
    "print('cut', flush=True)\n"
)


RULES = [
    {"name": "x", "source": BAD, "destination": API, "ports": [PORT, ECHO]},
    {"name": "w", "source": WEB, "destination": API, "ports": [PORT]},
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    # X's own interface is enforced too: its egress is where what it sends to unmanaged
    # destinations is judged.
    meshes = _mesh(
        tmp_path_factory.mktemp("quarantine"),
        "enforce",
        enforce=("api", "web", "bad"),
        unmanaged={"ext": EXT_ADDR, "dns": DNS_ADDR},
    )
    found = next(meshes)
    echo = subprocess.Popen(
        ["ip", "netns", "exec", found.ns("api"), sys.executable, "-c", ECHO_SERVER]
    )
    try:
        set_policy(found, RULES, [])
        until(lambda: found.connects("bad", API_ADDR) and found.connects("web", API_ADDR), 15)
        yield found
    finally:
        echo.kill()
        echo.wait()
        meshes.close()


def workload(mesh: Mesh) -> dict[str, Any]:
    """py-spiffe as X, from X's namespace: its X509-SVIDs, or the Workload API's error."""
    client = Path(__file__).with_name("workload_client.py")
    result = subprocess.run(
        [
            *("ip", "netns", "exec", mesh.ns("bad"), sys.executable, str(client)),
            *("--socket", str(mesh.socket), "--uid", X_UID, "--gid", X_UID, "x509"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    found: dict[str, Any] = json.loads(lines[-1])
    return found


def serial_of(mesh: Mesh) -> str | None:
    found = workload(mesh)
    svids = found.get("svids") or []
    return str(svids[0]["serial"]) if svids else None


def new_serial(mesh: Mesh, old: str | None, timeout: float) -> str:
    """X's SVID serial (decimal) once it differs from `old`."""
    held: list[str] = []

    def fresh() -> bool:
        serial = serial_of(mesh)
        held[:] = [serial] if serial is not None else []
        return serial not in (None, old)

    until(fresh, timeout)
    return held[0]


class Flow:
    """A TCP connection from X to api, opened now and kept busy."""

    def __init__(self, mesh: Mesh) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", mesh.ns("bad"), sys.executable, "-c", FLOW],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "open"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def test_revoking_a_certificate_leaves_the_identity_connected(mesh: Mesh) -> None:
    first = new_serial(mesh, None, 30)
    flow = Flow(mesh)
    try:
        mesh.api(
            "POST",
            "/v1/admin/certificates/revoke",
            {"serial": format(int(first), "x"), "reason": "superseded"},
        )
        # The agent drops the revoked SVID and X gets a new one at once...
        new_serial(mesh, first, 5)
        # ...while the kernel goes on letting X through: new connections and the open one.
        for _ in range(5):
            assert mesh.connects("bad", API_ADDR)
        assert flow.alive
        assert mesh.counters()["revoked"] == 0
        assert mesh.api("GET", "/v1/admin/identities/quarantined") == []
    finally:
        flow.close()


def test_quarantine_cuts_x_off_and_release_lets_it_back(mesh: Mesh) -> None:
    before = new_serial(mesh, None, 30)
    flow = Flow(mesh)
    try:
        started = time.monotonic()
        mesh.api(
            "POST", "/v1/admin/identities/quarantine", {"spiffe_id": BAD, "reason": "incident 7"}
        )
        # New connections and the established one fail at once (the flow notices 0.3 s
        # after its last echo).
        until(lambda: not mesh.connects("bad", API_ADDR), PROPAGATED)
        flow.process.wait(max(0.0, started + PROPAGATED + 0.3 - time.monotonic()))
        assert flow.process.stdout is not None
        assert flow.process.stdout.read().strip() == "cut"
    finally:
        flow.close()
    assert not mesh.connects("bad", API_ADDR)
    assert mesh.connects("web", API_ADDR)
    assert mesh.counters()["revoked"] >= 1
    # The Workload API refuses X, saying why.
    refused = workload(mesh)
    assert "svids" not in refused, refused
    assert "PERMISSION_DENIED" in refused["message"].upper().replace(" ", "_"), refused
    assert "incident 7" in refused["message"], refused
    # trustd shows who applied it.
    until(
        lambda: (
            mesh.api("GET", f"/v1/admin/identities?spiffe_id={BAD}")["applied_by"] == [mesh.node_id]
        ),
        5,
    )

    mesh.api("POST", "/v1/admin/identities/release", {"spiffe_id": BAD})
    until(lambda: mesh.connects("bad", API_ADDR), PROPAGATED)
    # With a fresh SVID: the one held before the quarantine was dropped.
    new_serial(mesh, before, 5)


def cuts_established(mesh: Mesh) -> bool:
    """The kernel's setting, read from the pinned config map."""
    raw = bytes(int(b, 16) for b in mesh.dump("trustd_config")[0]["value"])
    return bool(Config.from_buffer_copy(raw).flags & FLAG_CUT_ESTABLISHED)


def scope(mesh: Mesh, unmanaged: str, *always: str) -> None:
    node = mesh.api(
        "POST",
        "/v1/nodes/scope",
        {"spiffe_id": mesh.node_id, "unmanaged": unmanaged, "always_allowed": list(always)},
    )
    assert (node["unmanaged"], node["always_allowed"]) == (unmanaged, [f"{a}/32" for a in always])


def test_unmanaged_destinations_and_the_always_allowed_list(mesh: Mesh) -> None:
    # The default, as README says: unmanaged destinations are not judged.
    assert mesh.connects("bad", EXT_ADDR) and mesh.connects("web", EXT_ADDR)
    scope(mesh, "allow", DNS_ADDR)
    until(lambda: mesh.dump("trustd_allowed") != [], 5)

    # Quarantined, X reaches nothing but the always-allowed list, even with `allow`.
    mesh.api("POST", "/v1/admin/identities/quarantine", {"spiffe_id": BAD, "reason": "drill"})
    try:
        until(lambda: not mesh.connects("bad", EXT_ADDR), PROPAGATED)
        assert mesh.connects("bad", DNS_ADDR)
        assert not mesh.connects("bad", API_ADDR)
        # Others are not held to it.
        assert mesh.connects("web", EXT_ADDR)
    finally:
        mesh.api("POST", "/v1/admin/identities/release", {"spiffe_id": BAD})
    until(lambda: mesh.connects("bad", EXT_ADDR), PROPAGATED)

    # `deny`: every workload of the node reaches only managed destinations (as the policy
    # says) and the always-allowed list.
    scope(mesh, "deny", DNS_ADDR)
    try:
        until(lambda: not mesh.connects("web", EXT_ADDR), 5)
        assert not mesh.connects("bad", EXT_ADDR)
        assert mesh.connects("web", DNS_ADDR) and mesh.connects("bad", DNS_ADDR)
        assert mesh.connects("web", API_ADDR) and mesh.connects("bad", API_ADDR)
        shown = mesh.api("GET", f"/v1/nodes?spiffe_id={mesh.node_id}")[0]
        assert shown["unmanaged"] == "deny"
    finally:
        scope(mesh, "allow")
    until(lambda: mesh.connects("web", EXT_ADDR), 5)


@pytest.mark.parametrize("established", ["keep", "cut"])
def test_a_deny_cuts_established_connections_only_when_the_policy_says_so(
    mesh: Mesh, established: str
) -> None:
    """`data.mesh.established`: with "keep" (the default) a deny refuses new connections
    and spares those admitted before it; with "cut" it ends them too."""
    set_policy(mesh, RULES, [], established=established)
    until(lambda: mesh.connects("bad", API_ADDR), 5)
    # The agent applied the revision that carries the setting.
    until(lambda: cuts_established(mesh) == (established == "cut"), 5)
    flow = Flow(mesh)
    try:
        started = time.monotonic()
        set_policy(mesh, RULES[1:], [], established=established)
        until(lambda: not mesh.connects("bad", API_ADDR), PROPAGATED)
        if established == "cut":
            flow.process.wait(max(0.0, started + PROPAGATED + 0.3 - time.monotonic()))
        else:
            # Past twice the flow's 0.3 s notice after the deny was in force: still open.
            time.sleep(0.6)
            assert flow.alive
        assert mesh.connects("web", API_ADDR)
    finally:
        flow.close()
        set_policy(mesh, RULES, [])
    until(lambda: mesh.connects("bad", API_ADDR), 5)


def test_the_cli_quarantines_until_a_time_and_x_comes_back_then(mesh: Mesh) -> None:
    data = ("--data-dir", str(mesh.server.data_dir))
    made = cli("identity", "quarantine", BAD, "--reason", "cool-off", "--until", "4s", *data)
    assert f"{BAD} quarantined until" in made.stdout and "cool-off" in made.stdout
    until(lambda: not mesh.connects("bad", API_ADDR), PROPAGATED)
    listed = cli("identity", "list", *data).stdout
    assert BAD in listed and "cool-off" in listed
    held = json.loads(cli(*data, "-o", "json", "identity", "list").stdout)
    ends = datetime.fromisoformat(held[0]["until"])
    # Who applied it: this node's agent.
    until(lambda: mesh.node_id in cli("identity", "show", BAD, *data).stdout, 5)
    # At `until` X is let back in (by the agent's clock, whatever the server's duty).
    wait = (ends - datetime.now(UTC)).total_seconds()
    until(lambda: mesh.connects("bad", API_ADDR), wait + 1.5)
    assert datetime.now(UTC) >= ends - timedelta(seconds=0.1)
    new_serial(mesh, None, 5)

    # Revoking for keyCompromise quarantines, and says so; --no-quarantine does not.
    revoked = cli("cert", "revoke", "--spiffe-id", BAD, "--reason", "keyCompromise", *data)
    assert f"{BAD} is now quarantined" in revoked.stderr
    until(lambda: not mesh.connects("bad", API_ADDR), PROPAGATED)
    assert f"released {BAD}" in cli("identity", "release", BAD, *data).stdout
    until(lambda: mesh.connects("bad", API_ADDR), PROPAGATED)
    new_serial(mesh, None, 5)
    again = cli(
        "cert", "revoke", "--spiffe-id", BAD, "--reason", "keyCompromise", "--no-quarantine", *data
    )
    assert "quarantined" not in again.stderr
    assert json.loads(cli(*data, "-o", "json", "identity", "list").stdout) == []
