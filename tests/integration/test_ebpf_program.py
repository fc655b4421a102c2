"""The tc program itself, run by the kernel on crafted frames (BPF_PROG_TEST_RUN) with its
maps written by the agent's own `BpfEnforcer`: every branch of the verdict, the generation
switch, the staleness deadline, and a full map leaving the last good state in force."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pki.clock import SystemClock
from tests.packets import ACK, TCP, UDP, frame, ipv4
from trustd.agent.config import AgentConfig
from trustd.agent.enforcement import libbpf
from trustd.agent.enforcement.ebpf import (
    EGRESS_PROGRAM,
    BpfEnforcer,
    Config,
    IpcacheKey,
    Mode,
    PolicyKey,
    Scope,
)
from trustd.agent.enforcement.state import VerdictTable
from trustd.agent.errors import EnforcementError
from trustd.agent.main import Agent
from trustd.domain.nodes import Unmanaged

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF programs needs root"),
    pytest.mark.skipif(shutil.which("clang") is None, reason="clang is needed (make system-deps)"),
]
TC_ACT_OK, TC_ACT_SHOT = 0, 2
WEB, API, BAD = "spiffe://example.org/web", "spiffe://example.org/api", "spiffe://example.org/bad"
WEB_IP, API_IP, BAD_IP, OTHER_IP = "10.9.0.1", "10.9.0.2", "10.9.0.3", "192.0.2.7"


class Program:
    def __init__(self, enforcer: BpfEnforcer) -> None:
        self.enforcer = enforcer

    def verdict(self, packet: bytes) -> int:
        return libbpf.run_on_packet(self.enforcer.program_fd, packet)[0]

    def apply(self, revision: int, policy: Policy, revoked: tuple[int, ...] = ()) -> None:
        self.enforcer.apply(table(revision, policy, revoked))

    def generation(self, map_name: str, key_type: type[ctypes.Structure]) -> dict[int, int]:
        """How many keys of `map_name` each generation holds."""
        counts: dict[int, int] = {}
        for key in libbpf.keys(self.enforcer._fds[map_name], key_type):
            counts[key.gen] = counts.get(key.gen, 0) + 1  # type: ignore[attr-defined]
        return counts


# (dst, src, port, proto) -> allow, as the wire's [dst, src, port, proto, allow] entries.
Policy = dict[tuple[int, int, int, int], bool]


def table(revision: int, policy: Policy, revoked: tuple[int, ...] = ()) -> VerdictTable:
    return VerdictTable().applied(
        {
            "revision": revision,
            "base": 0,
            "changes": {
                "identities": {"set": {WEB: 256, API: 257, BAD: 258}},
                "ipcache": {"set": {f"{WEB_IP}/32": 256, f"{API_IP}/32": 257, f"{BAD_IP}/32": 258}},
                "policy": {"set": [[*k, v] for k, v in policy.items()]},
                "revoked": {"set": list(revoked)},
            },
        }
    )


def _enforcer(tmp_path: Path, mode: Mode, staleness: float | None = None) -> Iterator[Program]:
    obj = libbpf.compile_object(tmp_path / "enforce.o")
    pin_dir = Path("/sys/fs/bpf/trustd") / f"test-{uuid.uuid4().hex[:8]}"
    enforcer = BpfEnforcer(obj, [], mode, pin_dir, staleness)
    enforcer.start()
    try:
        yield Program(enforcer)
    finally:
        enforcer.stop(detach=True)
        shutil.rmtree(pin_dir, ignore_errors=True)


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Program]:
    yield from _enforcer(tmp_path, Mode.ENFORCE)


def test_verdicts_follow_the_policy_map(program: Program) -> None:
    # web -> api on 8443/tcp and 53/udp; bad -> api on any TCP port except 22.
    program.apply(
        1,
        {
            (257, 256, 8443, 6): True,
            (257, 256, 53, 17): True,
            (257, 258, 0, 6): True,
            (257, 258, 22, 6): False,
        },
    )
    counts_before = program.enforcer.counters()
    cases: list[tuple[bytes, int]] = [
        (ipv4(WEB_IP, API_IP, TCP, 8443), TC_ACT_OK),
        (ipv4(WEB_IP, API_IP, TCP, 8444), TC_ACT_SHOT),
        (ipv4(WEB_IP, API_IP, UDP, 53), TC_ACT_OK),
        (ipv4(WEB_IP, API_IP, UDP, 54), TC_ACT_SHOT),
        (ipv4(BAD_IP, API_IP, TCP, 9999), TC_ACT_OK),
        # A port a deny names next to an any-port allow: the exact entry wins.
        (ipv4(BAD_IP, API_IP, TCP, 22), TC_ACT_SHOT),
        # Nothing allows api -> web; an unknown source is identity 0, allowed nowhere.
        (ipv4(API_IP, WEB_IP, TCP, 8443), TC_ACT_SHOT),
        (ipv4(OTHER_IP, API_IP, TCP, 8443), TC_ACT_SHOT),
        # A destination trustd does not manage is not its to judge.
        (ipv4(WEB_IP, OTHER_IP, TCP, 8443), TC_ACT_OK),
        # Connections are judged by their SYN; later segments pass.
        (ipv4(API_IP, WEB_IP, TCP, 8443, ACK), TC_ACT_OK),
        # ARP must pass; IPv6 carries no identities here and is denied.
        (frame(0x0806), TC_ACT_OK),
        (frame(0x86DD), TC_ACT_SHOT),
    ]
    assert [program.verdict(p) for p, _ in cases] == [want for _, want in cases]
    counts = program.enforcer.counters()
    moved = {k: counts[k] - counts_before[k] for k in counts}
    assert moved["allowed"] == 3 and moved["dropped"] == 6 and moved["unmanaged"] == 1
    assert moved["established"] == 1


def test_revoked_source_is_cut_off_even_mid_connection(program: Program) -> None:
    program.apply(1, {(257, 256, 8443, 6): True}, revoked=(256,))
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_SHOT
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443, ACK)) == TC_ACT_SHOT
    assert program.enforcer.counters()["revoked"] == 2


def test_egress_judges_unmanaged_destinations_by_the_nodes_scope(program: Program) -> None:
    """What workloads send: a managed destination is judged at its own ingress; an
    unmanaged one by the scope, the always-allowed prefixes passing either way and being
    all a quarantined source reaches."""
    loaded = program.enforcer._obj
    assert loaded is not None
    fd = loaded.program_fds[EGRESS_PROGRAM]

    def verdict(packet: bytes) -> int:
        return libbpf.run_on_packet(fd, packet)[0]

    resolver = "192.0.2.53"
    program.apply(1, {}, revoked=(258,))
    program.enforcer.set_scope(Scope(Unmanaged.ALLOW, frozenset({f"{resolver}/32"})))
    cases = [
        (ipv4(WEB_IP, API_IP, TCP, 8443), TC_ACT_OK),  # managed: its ingress judges
        (ipv4(WEB_IP, OTHER_IP, TCP, 443), TC_ACT_OK),  # unmanaged, allowed
        (ipv4(BAD_IP, OTHER_IP, TCP, 443), TC_ACT_SHOT),  # quarantined: only the list
        (ipv4(BAD_IP, resolver, UDP, 53), TC_ACT_OK),
        (frame(0x86DD), TC_ACT_OK),
    ]
    assert [verdict(p) for p, _ in cases] == [want for _, want in cases]
    # Deny: every source is held to the list; the list is replaced, not added to.
    program.enforcer.set_scope(Scope(Unmanaged.DENY, frozenset({"198.51.100.0/24"})))
    cases = [
        (ipv4(WEB_IP, API_IP, TCP, 8443), TC_ACT_OK),
        (ipv4(WEB_IP, OTHER_IP, TCP, 443), TC_ACT_SHOT),
        (ipv4(WEB_IP, resolver, UDP, 53), TC_ACT_SHOT),
        (ipv4(WEB_IP, "198.51.100.9", UDP, 53), TC_ACT_OK),
        (ipv4(OTHER_IP, "198.51.100.9", UDP, 53), TC_ACT_OK),
        (frame(0x86DD), TC_ACT_SHOT),
        (frame(0x0806), TC_ACT_OK),
    ]
    assert [verdict(p) for p, _ in cases] == [want for _, want in cases]
    # The ingress program applies the same scope to a local workload in no entry.
    assert program.verdict(ipv4(WEB_IP, OTHER_IP, TCP, 8443)) == TC_ACT_SHOT
    assert program.verdict(ipv4(WEB_IP, "198.51.100.9", TCP, 8443)) == TC_ACT_OK


@pytest.mark.parametrize("cut", [False, True])
def test_a_deny_cuts_admitted_connections_only_when_set(program: Program, cut: bool) -> None:
    allow = {(257, 256, 8443, 6): True}
    program.enforcer.apply(replace(table(1, allow), cut_established=cut))
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK  # admitted
    program.enforcer.apply(replace(table(2, {}), cut_established=cut))
    # New connections are refused either way.
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_SHOT
    # The admitted one goes on, unless a deny cuts established connections.
    segment = ipv4(WEB_IP, API_IP, TCP, 8443, ACK)
    assert program.verdict(segment) == (TC_ACT_SHOT if cut else TC_ACT_OK)
    # A segment of no connection admitted here (a reply to a local client) passes.
    assert program.verdict(ipv4(API_IP, WEB_IP, TCP, 40000, ACK)) == TC_ACT_OK
    # Allowed again, the connection flows again.
    program.enforcer.apply(replace(table(3, allow), cut_established=cut))
    assert program.verdict(segment) == TC_ACT_OK


def test_a_new_revision_replaces_the_old_one_whole(program: Program) -> None:
    program.apply(1, {(257, 256, 8443, 6): True})
    program.apply(2, {(257, 258, 8443, 6): True})
    assert program.enforcer.revision == 2
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_SHOT
    assert program.verdict(ipv4(BAD_IP, API_IP, TCP, 8443)) == TC_ACT_OK
    # The active generation holds revision 2 alone; the one left holds revision 1 until
    # the next apply brings it up to date by the difference.
    active = program.enforcer._config().gen
    assert program.generation("trustd_policy", PolicyKey) == {active: 1, active ^ 1: 1}
    program.apply(3, {(257, 258, 8443, 6): True, (257, 256, 9, 6): True})
    assert program.enforcer._config().gen == active ^ 1
    assert program.generation("trustd_policy", PolicyKey) == {active: 1, active ^ 1: 2}
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 9)) == TC_ACT_OK
    program.apply(4, {(257, 256, 9, 6): True})
    assert program.generation("trustd_policy", PolicyKey) == {active: 1, active ^ 1: 2}
    assert program.verdict(ipv4(BAD_IP, API_IP, TCP, 8443)) == TC_ACT_SHOT
    assert program.generation("trustd_ipcache", IpcacheKey) == {0: 3, 1: 3}


def test_a_delta_writes_only_what_changed(program: Program) -> None:
    policy: Policy = {(257, 256, port, TCP): True for port in range(1000, 3000)}
    program.apply(1, policy)
    program.apply(2, policy)  # both generations now hold the 2,000 entries
    writes: list[object] = []
    real_update = libbpf.update

    def counting(fd: int, key: Any, value: Any) -> None:
        writes.append(key)
        real_update(fd, key, value)

    libbpf.update = counting  # type: ignore[assignment]
    try:
        program.apply(3, {**policy, (257, 258, 22, TCP): True})
    finally:
        libbpf.update = real_update  # type: ignore[assignment]
    # One policy entry and the config switch, not the whole state again.
    assert len(writes) == 2
    assert program.verdict(ipv4(BAD_IP, API_IP, TCP, 22)) == TC_ACT_OK
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 2999)) == TC_ACT_OK


def test_a_full_map_keeps_the_last_good_state(program: Program, tmp_path: Path) -> None:
    program.apply(1, {(257, 256, 8443, 6): True})
    # More policy entries than the map holds (131072): the kernel refuses the write.
    huge: Policy = {
        (257, 256, port, proto): True for port in range(1, 65536) for proto in (TCP, UDP)
    }
    huge.update({(256, 257, port, 6): True for port in range(1, 2000)})
    with pytest.raises(EnforcementError, match="map update failed"):
        program.apply(2, huge)
    assert program.enforcer.revision == 1
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8444)) == TC_ACT_SHOT
    # The half-written generation was cleared: the next revision applies.
    program.apply(3, {(257, 256, 8444, 6): True})
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8444)) == TC_ACT_OK

    # The agent keeps the table it held and asks for the full state on its next sync.
    agent = Agent(AgentConfig("https://trustd.invalid", tmp_path, tmp_path / "s"), SystemClock())
    agent.enforcer = program.enforcer
    agent.verdicts = table(3, {(257, 256, 8444, 6): True})
    agent._verdict_full = False
    full: dict[str, Any] = {
        "revision": 4,
        "base": 0,
        "changes": {
            "identities": {"set": {WEB: 256, API: 257}},
            "policy": {"set": [[*k, v] for k, v in huge.items()]},
        },
    }
    asyncio.run(agent._apply_verdicts(full))
    assert agent.verdicts.revision == 3 and agent._verdict_since() == 0
    assert program.enforcer.revision == 3
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8444)) == TC_ACT_OK


def test_audit_mode_counts_and_drops_nothing(tmp_path: Path) -> None:
    for program in _enforcer(tmp_path, Mode.AUDIT):
        program.apply(1, {})
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK
        counts = program.enforcer.counters()
        assert counts["denied"] == 1 and counts["dropped"] == 0


def test_past_the_staleness_deadline_everything_managed_is_denied(tmp_path: Path) -> None:
    for program in _enforcer(tmp_path, Mode.ENFORCE, staleness=30):
        program.apply(1, {(257, 256, 8443, 6): True})
        program.enforcer.refresh()
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK
        # The deadline passes (written as it would stand 31 s after the last answer).
        config = Config()
        fd = program.enforcer._fds["trustd_config"]
        libbpf.lookup(fd, ctypes.c_uint32(0), config)
        config.valid_until_ns = time.monotonic_ns() - 1_000_000_000
        libbpf.update(fd, ctypes.c_uint32(0), config)
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_SHOT
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443, ACK)) == TC_ACT_SHOT
        assert program.verdict(ipv4(WEB_IP, OTHER_IP, TCP, 8443)) == TC_ACT_OK
        assert program.enforcer.counters()["stale"] == 2
        # trustd answers again: the deadline moves and traffic flows.
        program.enforcer.refresh()
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK
