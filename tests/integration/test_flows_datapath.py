"""Flow events from real packets: two network namespaces joined by a veth pair, the tc
program attached by the agent's own `BpfEnforcer` in front of the server namespace, real
TCP connections, and the agent's `FlowReporter` reading the ring buffer on an asyncio loop
as the agent does. Only addresses inside the namespaces this test creates (10.215.0.x) are
used."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.clock import SystemClock
from trustd.agent.enforcement import libbpf
from trustd.agent.enforcement.ebpf import BpfEnforcer, Interface, Mode
from trustd.agent.enforcement.state import VerdictTable
from trustd.agent.flows import FlowReporter
from trustd.domain.flows import Direction, FlowReport, Observer, Reason, Verdict

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and eBPF need root"),
    pytest.mark.skipif(shutil.which("clang") is None, reason="clang is needed (make system-deps)"),
]
WEB, API, BAD = "spiffe://example.org/web", "spiffe://example.org/api", "spiffe://example.org/bad"
WEB_IP, API_IP, BAD_IP = "10.215.0.1", "10.215.0.2", "10.215.0.3"
PORT = 8443
LISTENER = (
    "import socket\n"
    f"s = socket.create_server(('{API_IP}', {PORT}), backlog=128)\n"
    "print('ready', flush=True)\n"
    "while True:\n    c, _ = s.accept(); c.close()\n"
)
CLOCK = SystemClock()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def table(revision: int, allow: bool, revoked: tuple[int, ...] = ()) -> VerdictTable:
    return VerdictTable().applied(
        {
            "revision": revision,
            "base": 0,
            "changes": {
                "identities": {"set": {WEB: 256, API: 257, BAD: 258}},
                "ipcache": {"set": {f"{WEB_IP}/32": 256, f"{API_IP}/32": 257, f"{BAD_IP}/32": 258}},
                "policy": {"set": [[257, 256, PORT, 6, True]] if allow else []},
                "revoked": {"set": list(revoked)},
            },
        }
    )


class Pair:
    def __init__(self, tag: str, enforcer: BpfEnforcer) -> None:
        self.tag = tag
        self.enforcer = enforcer

    def connects(self, source: str) -> bool:
        """A real TCP connection from `source` (web's or bad's address) to api."""
        code = (
            "import socket\n"
            f"socket.create_connection(('{API_IP}', {PORT}), timeout=0.3, "
            f"source_address=('{source}', 0)).close()"
        )
        result = subprocess.run(
            ["ip", "netns", "exec", f"{self.tag}-c", sys.executable, "-c", code],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0


@contextlib.contextmanager
def pair(tmp_path: Path, mode: Mode) -> Iterator[Pair]:
    tag = f"tdf{uuid.uuid4().hex[:6]}"
    pin_dir = Path("/sys/fs/bpf/trustd") / tag
    listener: subprocess.Popen[str] | None = None
    enforcer: BpfEnforcer | None = None
    try:
        _ip("netns", "add", f"{tag}-c")
        _ip("netns", "add", f"{tag}-s")
        _ip(
            "link",
            "add",
            "eth0",
            "netns",
            f"{tag}-c",
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            f"{tag}-s",
        )
        for ns, addrs in (("c", (WEB_IP, BAD_IP)), ("s", (API_IP,))):
            for addr in addrs:
                _ip("-n", f"{tag}-{ns}", "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", f"{tag}-{ns}", "link", "set", "eth0", "up")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", f"{tag}-s", sys.executable, "-c", LISTENER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        obj = libbpf.compile_object(tmp_path / "enforce.o")
        enforcer = BpfEnforcer(obj, [Interface(f"{tag}-s", "eth0")], mode, pin_dir)
        enforcer.start()
        yield Pair(tag, enforcer)
    finally:
        if enforcer is not None:
            enforcer.stop(detach=True)
        if listener is not None:
            listener.kill()
            listener.communicate()
        for ns in ("c", "s"):
            subprocess.run(["ip", "netns", "del", f"{tag}-{ns}"], check=False)
        shutil.rmtree(pin_dir, ignore_errors=True)


def flows_of(reporter: FlowReporter) -> set[tuple[object, ...]]:
    reporter.flush()
    batch = reporter.queue.batch(CLOCK.now(), CLOCK.now())
    flows: list[FlowReport] = list(batch.flows) if batch is not None else []
    if batch is not None:
        reporter.queue.shipped(batch)
    # The namespaces' own IPv6 chatter (MLD reports to ff02::16) goes out to unmanaged
    # destinations, and is reported too: only what reached api is looked at here.
    flows = [f for f in flows if f.destination_address == API_IP]
    for flow in flows:
        assert flow.observer is Observer.EBPF and flow.direction is Direction.INGRESS
        assert flow.protocol == "tcp" and flow.source_address in (WEB_IP, BAD_IP)
    return {
        (f.source, f.destination, f.destination_port, f.verdict, f.reason, f.count) for f in flows
    }


def test_real_connections_become_flows_with_identities_and_reasons(tmp_path: Path) -> None:
    with pair(tmp_path, Mode.ENFORCE) as at:
        held = {"table": table(1, allow=True)}
        at.enforcer.apply(held["table"])

        async def run() -> list[set[tuple[object, ...]]]:
            reporter = FlowReporter(lambda: held["table"], CLOCK)
            reporter.watch(at.enforcer)
            try:
                # The connections run in other processes; the loop reads the ring buffer
                # meanwhile, on its tick (no wake-up below the burst threshold).
                assert await asyncio.to_thread(at.connects, WEB_IP)
                assert await asyncio.to_thread(at.connects, WEB_IP)
                assert not await asyncio.to_thread(at.connects, BAD_IP)
                await asyncio.sleep(0.3)
                assert reporter.datapath is not None and reporter.datapath.events >= 3
                first = flows_of(reporter)
                # web is quarantined: its next attempt is reported revoked.
                held["table"] = table(2, allow=True, revoked=(256,))
                await asyncio.to_thread(at.enforcer.apply, held["table"])
                assert not await asyncio.to_thread(at.connects, WEB_IP)
                # Flow events off: connections go on, unreported.
                at.enforcer.set_flow_events(False)
                assert not await asyncio.to_thread(at.connects, BAD_IP)
                await asyncio.sleep(0.3)
                return [first, flows_of(reporter)]
            finally:
                reporter.close()

        first, second = asyncio.run(run())
    allowed, denied = Verdict.ALLOWED, Verdict.DENIED
    # A retransmitted SYN is another event of the same flow: counts are at least.
    assert {k[:5] for k in first} == {
        (WEB, API, PORT, allowed, Reason.POLICY),
        (BAD, API, PORT, denied, Reason.POLICY),
    }
    assert {k[:5]: k[5] for k in first}[(WEB, API, PORT, allowed, Reason.POLICY)] == 2
    assert {k[:5] for k in second} == {(WEB, API, PORT, denied, Reason.REVOKED)}


def test_audit_mode_reports_what_policy_would_deny(tmp_path: Path) -> None:
    with pair(tmp_path, Mode.AUDIT) as at:
        held = table(1, allow=True)
        at.enforcer.apply(held)

        async def run() -> set[tuple[object, ...]]:
            reporter = FlowReporter(lambda: held, CLOCK)
            reporter.watch(at.enforcer)
            try:
                assert await asyncio.to_thread(at.connects, BAD_IP)  # passed, reported
                assert await asyncio.to_thread(at.connects, WEB_IP)
                await asyncio.sleep(0.3)
                return flows_of(reporter)
            finally:
                reporter.close()

        got = asyncio.run(run())
    assert got == {
        (BAD, API, PORT, Verdict.AUDIT, Reason.AUDIT_WOULD_DENY, 1),
        (WEB, API, PORT, Verdict.ALLOWED, Reason.POLICY, 1),
    }
