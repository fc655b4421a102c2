"""The tc program itself, run by the kernel on crafted frames (BPF_PROG_TEST_RUN) with its
maps written by the agent's own `BpfEnforcer`: every branch of the verdict, over IPv4 and
IPv6 alike (every workload is dual-stack here: one identity, one policy, both families),
neighbour discovery and DHCPv6, the generation switch, the staleness deadline, a full
map leaving the last good state in force, and the flow events each verdict puts on the
ring buffer."""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import os
import select
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pki.clock import SystemClock
from tests.packets import ACK, ICMPV6, TCP, UDP, frame, ipv4, ipv6, packet
from trustd.agent.config import AgentConfig
from trustd.agent.enforcement import libbpf
from trustd.agent.enforcement.ebpf import (
    EGRESS_PROGRAM,
    BpfEnforcer,
    Config,
    FlowEvent,
    IpcacheKey,
    Mode,
    PolicyKey,
    Scope,
    address_of,
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
WEB_IP6, API_IP6, BAD_IP6 = "fd00:9::1", "fd00:9::2", "fd00:9::3"


@dataclass(frozen=True)
class Addresses:
    """One family's addresses: the three workloads', one in no entry, an always-allowed
    resolver, a network to allow and an address in it."""

    web: str
    api: str
    bad: str
    other: str
    resolver: str
    network: str
    in_network: str


V4 = Addresses(WEB_IP, API_IP, BAD_IP, OTHER_IP, "192.0.2.53", "198.51.100.0/24", "198.51.100.9")
V6 = Addresses(
    WEB_IP6, API_IP6, BAD_IP6, "2001:db8::7", "2001:db8::53", "2001:db8:100::/48", "2001:db8:100::9"
)


@pytest.fixture(params=[V4, V6], ids=["ipv4", "ipv6"])
def at(request: pytest.FixtureRequest) -> Addresses:
    return request.param  # type: ignore[no-any-return]


class Program:
    def __init__(self, enforcer: BpfEnforcer) -> None:
        self.enforcer = enforcer
        self._ring: libbpf.RingBuffer | None = None

    def events(self) -> list[FlowEvent]:
        """The flow events the program reported since the last call."""
        if self._ring is None:
            self._ring = self.enforcer.events()
        return [FlowEvent.from_buffer_copy(r) for r in self._ring.read(100_000)]

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()

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
                "ipcache": {
                    "set": {
                        f"{WEB_IP}/32": 256,
                        f"{API_IP}/32": 257,
                        f"{BAD_IP}/32": 258,
                        f"{WEB_IP6}/128": 256,
                        f"{API_IP6}/128": 257,
                        f"{BAD_IP6}/128": 258,
                    }
                },
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
    program = Program(enforcer)
    try:
        yield program
    finally:
        program.close()
        enforcer.stop(detach=True)
        shutil.rmtree(pin_dir, ignore_errors=True)


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Program]:
    yield from _enforcer(tmp_path, Mode.ENFORCE)


def test_verdicts_follow_the_policy_map(program: Program, at: Addresses) -> None:
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
        (packet(at.web, at.api, TCP, 8443), TC_ACT_OK),
        (packet(at.web, at.api, TCP, 8444), TC_ACT_SHOT),
        (packet(at.web, at.api, UDP, 53), TC_ACT_OK),
        (packet(at.web, at.api, UDP, 54), TC_ACT_SHOT),
        (packet(at.bad, at.api, TCP, 9999), TC_ACT_OK),
        # A port a deny names next to an any-port allow: the exact entry wins.
        (packet(at.bad, at.api, TCP, 22), TC_ACT_SHOT),
        # Nothing allows api -> web; an unknown source is identity 0, allowed nowhere.
        (packet(at.api, at.web, TCP, 8443), TC_ACT_SHOT),
        (packet(at.other, at.api, TCP, 8443), TC_ACT_SHOT),
        # A destination trustd does not manage is not its to judge.
        (packet(at.web, at.other, TCP, 8443), TC_ACT_OK),
        # Connections are judged by their SYN; later segments pass.
        (packet(at.api, at.web, TCP, 8443, ACK), TC_ACT_OK),
        # ARP must pass; another EtherType carries no identity and is denied.
        (frame(0x0806), TC_ACT_OK),
        (frame(0x88B5), TC_ACT_SHOT),
    ]
    assert [program.verdict(p) for p, _ in cases] == [want for _, want in cases]
    counts = program.enforcer.counters()
    moved = {k: counts[k] - counts_before[k] for k in counts}
    assert moved["allowed"] == 3 and moved["dropped"] == 6 and moved["unmanaged"] == 1
    assert moved["established"] == 1


def test_revoked_source_is_cut_off_even_mid_connection(program: Program, at: Addresses) -> None:
    program.apply(1, {(257, 256, 8443, 6): True}, revoked=(256,))
    assert program.verdict(packet(at.web, at.api, TCP, 8443)) == TC_ACT_SHOT
    assert program.verdict(packet(at.web, at.api, TCP, 8443, ACK)) == TC_ACT_SHOT
    assert program.enforcer.counters()["revoked"] == 2


def test_egress_judges_unmanaged_destinations_by_the_nodes_scope(
    program: Program, at: Addresses
) -> None:
    """What workloads send: a managed destination is judged at its own ingress; an
    unmanaged one by the scope, the always-allowed prefixes passing either way and being
    all a quarantined source reaches."""
    loaded = program.enforcer._obj
    assert loaded is not None
    fd = loaded.program_fds[EGRESS_PROGRAM]

    def verdict(packet: bytes) -> int:
        return libbpf.run_on_packet(fd, packet)[0]

    program.apply(1, {}, revoked=(258,))
    program.enforcer.set_scope(
        Scope(Unmanaged.ALLOW, frozenset({str(ipaddress.ip_network(at.resolver))}))
    )
    cases = [
        (packet(at.web, at.api, TCP, 8443), TC_ACT_OK),  # managed: its ingress judges
        (packet(at.web, at.other, TCP, 443), TC_ACT_OK),  # unmanaged, allowed
        (packet(at.bad, at.other, TCP, 443), TC_ACT_SHOT),  # quarantined: only the list
        (packet(at.bad, at.resolver, UDP, 53), TC_ACT_OK),
        (frame(0x88B5), TC_ACT_OK),
    ]
    assert [verdict(p) for p, _ in cases] == [want for _, want in cases]
    # Deny: every source is held to the list; the list is replaced, not added to.
    program.enforcer.set_scope(Scope(Unmanaged.DENY, frozenset({at.network})))
    cases = [
        (packet(at.web, at.api, TCP, 8443), TC_ACT_OK),
        (packet(at.web, at.other, TCP, 443), TC_ACT_SHOT),
        (packet(at.web, at.resolver, UDP, 53), TC_ACT_SHOT),
        (packet(at.web, at.in_network, UDP, 53), TC_ACT_OK),
        (packet(at.other, at.in_network, UDP, 53), TC_ACT_OK),
        (frame(0x88B5), TC_ACT_SHOT),
        (frame(0x0806), TC_ACT_OK),
    ]
    assert [verdict(p) for p, _ in cases] == [want for _, want in cases]
    # The ingress program applies the same scope to a local workload in no entry.
    assert program.verdict(packet(at.web, at.other, TCP, 8443)) == TC_ACT_SHOT
    assert program.verdict(packet(at.web, at.in_network, TCP, 8443)) == TC_ACT_OK


@pytest.mark.parametrize("cut", [False, True])
def test_a_deny_cuts_admitted_connections_only_when_set(
    program: Program, at: Addresses, cut: bool
) -> None:
    allow = {(257, 256, 8443, 6): True}
    program.enforcer.apply(replace(table(1, allow), cut_established=cut))
    assert program.verdict(packet(at.web, at.api, TCP, 8443)) == TC_ACT_OK  # admitted
    program.enforcer.apply(replace(table(2, {}), cut_established=cut))
    # New connections are refused either way.
    assert program.verdict(packet(at.web, at.api, TCP, 8443)) == TC_ACT_SHOT
    # The admitted one goes on, unless a deny cuts established connections.
    segment = packet(at.web, at.api, TCP, 8443, ACK)
    assert program.verdict(segment) == (TC_ACT_SHOT if cut else TC_ACT_OK)
    # A segment of no connection admitted here (a reply to a local client) passes.
    assert program.verdict(packet(at.api, at.web, TCP, 40000, ACK)) == TC_ACT_OK
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
    assert program.generation("trustd_ipcache", IpcacheKey) == {0: 6, 1: 6}


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
        assert program.verdict(ipv6(WEB_IP6, API_IP6, TCP, 8443)) == TC_ACT_SHOT
        assert program.verdict(ipv4(WEB_IP, OTHER_IP, TCP, 8443)) == TC_ACT_OK
        assert program.enforcer.counters()["stale"] == 3
        # trustd answers again: the deadline moves and traffic flows.
        program.enforcer.refresh()
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK


def test_one_policy_judges_both_families_of_a_dual_stack_workload(program: Program) -> None:
    program.apply(1, {(257, 256, 8443, TCP): True})
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK
    assert program.verdict(ipv6(WEB_IP6, API_IP6, TCP, 8443)) == TC_ACT_OK
    assert program.verdict(ipv6(BAD_IP6, API_IP6, TCP, 8443)) == TC_ACT_SHOT
    # ICMPv6 is judged as ICMP, which nothing allows here.
    assert program.verdict(ipv6(WEB_IP6, API_IP6, ICMPV6, 128)) == TC_ACT_SHOT
    # The families are keyed apart: an IPv6 address whose first bytes spell an IPv4
    # workload's (10.9.0.1 -> a09:1::) is not that workload.
    assert program.verdict(ipv6("a09:1::", API_IP6, TCP, 8443)) == TC_ACT_SHOT
    assert program.verdict(ipv6(WEB_IP6, "a09:2::", TCP, 8443)) == TC_ACT_OK  # unmanaged
    # Prefixes longer than /32 and shorter than /128 match by longest prefix.
    net = VerdictTable().applied(
        {
            "revision": 2,
            "base": 0,
            "changes": {
                "identities": {"set": {WEB: 256, API: 257}},
                "ipcache": {"set": {"fd00:9::/64": 256, f"{API_IP6}/128": 257}},
                "policy": {"set": [[257, 256, 8443, TCP, True]]},
            },
        }
    )
    program.enforcer.apply(net)
    assert program.verdict(ipv6("fd00:9::abcd", API_IP6, TCP, 8443)) == TC_ACT_OK
    assert program.verdict(ipv6("fd00:9:0:1::1", API_IP6, TCP, 8443)) == TC_ACT_SHOT


def test_neighbour_discovery_and_dhcpv6_pass_whatever_the_policy(program: Program) -> None:
    """ND (RFC 4861) with hop limit 255 and a DHCPv6 client's exchange (RFC 8415) pass
    both programs with nothing allowed and unmanaged destinations denied; anything else
    on those types and ports is judged as usual."""
    loaded = program.enforcer._obj
    assert loaded is not None
    egress = loaded.program_fds[EGRESS_PROGRAM]
    program.apply(1, {})
    program.enforcer.set_scope(Scope(Unmanaged.DENY, frozenset()))
    solicited = "ff02::1:ff00:2"
    cases = [
        (ipv6(WEB_IP6, solicited, ICMPV6, 135, hop_limit=255), TC_ACT_OK),  # NS
        (ipv6(WEB_IP6, API_IP6, ICMPV6, 135, hop_limit=255), TC_ACT_OK),  # NS, unicast
        (ipv6(API_IP6, WEB_IP6, ICMPV6, 136, hop_limit=255), TC_ACT_OK),  # NA
        (ipv6("fe80::1", "ff02::2", ICMPV6, 133, hop_limit=255), TC_ACT_OK),  # RS
        (ipv6("fe80::1", "ff02::1", ICMPV6, 134, hop_limit=255), TC_ACT_OK),  # RA
        (ipv6("fe80::1", API_IP6, ICMPV6, 137, hop_limit=255), TC_ACT_OK),  # redirect
        # Forwarded (hop limit below 255): not ND a receiver accepts, judged as ICMP.
        (ipv6(WEB_IP6, API_IP6, ICMPV6, 135, hop_limit=254), TC_ACT_SHOT),
        (ipv6(WEB_IP6, API_IP6, ICMPV6, 128, hop_limit=255), TC_ACT_SHOT),  # echo
        (ipv6(WEB_IP6, API_IP6, ICMPV6, 138, hop_limit=255), TC_ACT_SHOT),
        # DHCPv6: a client's Solicit and its server's answer.
        (ipv6("fe80::1", "ff02::1:2", UDP, 547, sport=546), TC_ACT_OK),
        (ipv6("fe80::2", "fe80::1", UDP, 546, sport=547), TC_ACT_OK),
        (ipv6(API_IP6, "fe80::1", UDP, 546, sport=547), TC_ACT_OK),  # a server's global
        # The same ports between addresses a DHCPv6 client does not use are judged.
        (ipv6(WEB_IP6, "ff02::1:2", UDP, 547, sport=546), TC_ACT_SHOT),
        (ipv6("fe80::1", API_IP6, UDP, 547, sport=546), TC_ACT_SHOT),
        (ipv6(WEB_IP6, API_IP6, UDP, 546, sport=547), TC_ACT_SHOT),
    ]
    for fd in (program.enforcer.program_fd, egress):
        got = [libbpf.run_on_packet(fd, p)[0] for p, _ in cases]
        want = [w for _, w in cases]
        if fd == egress:  # a managed destination is its own ingress's to judge
            want = [
                TC_ACT_OK if p[38:54] == ipaddress.IPv6Address(API_IP6).packed else w
                for p, w in cases
            ]
        assert got == want


def test_ipv6_extension_headers_are_walked(program: Program) -> None:
    program.apply(1, {(257, 256, 8443, TCP): True})

    def ext(next_header: int) -> bytes:  # hop-by-hop or destination options: PadN only
        return bytes([next_header, 0, 1, 4, 0, 0, 0, 0])

    def fragment(next_header: int, offset: int) -> bytes:
        return bytes([next_header, 0]) + (offset << 3).to_bytes(2, "big") + b"\0\0\0\1"

    def tcp_behind(chain: bytes, first: int, port: int = 8443) -> bytes:
        return ipv6(WEB_IP6, API_IP6, TCP, port, extensions=chain, first_header=first)

    hop_dest = ext(60) + ext(TCP)
    assert program.verdict(tcp_behind(hop_dest, 0)) == TC_ACT_OK
    assert program.verdict(tcp_behind(hop_dest, 0, 8444)) == TC_ACT_SHOT
    # A first fragment carries the ports; a later one none, and no verdict allows it.
    assert program.verdict(tcp_behind(fragment(TCP, 0), 44)) == TC_ACT_OK
    assert program.verdict(tcp_behind(fragment(TCP, 185), 44)) == TC_ACT_SHOT
    # More extension headers than are walked: denied, not guessed at.
    assert program.verdict(tcp_behind(ext(60) * 4 + ext(TCP), 60)) == TC_ACT_SHOT
    # Truncated behind its extension header.
    assert program.verdict(tcp_behind(b"", 60)) == TC_ACT_SHOT


def test_always_allowed_prefixes_of_one_family_cover_none_of_the_other(program: Program) -> None:
    loaded = program.enforcer._obj
    assert loaded is not None
    egress = loaded.program_fds[EGRESS_PROGRAM]
    program.apply(1, {})
    program.enforcer.set_scope(Scope(Unmanaged.DENY, frozenset({"::/0"})))
    assert libbpf.run_on_packet(egress, ipv6(WEB_IP6, "2001:db8::1", TCP, 1))[0] == TC_ACT_OK
    assert libbpf.run_on_packet(egress, ipv4(WEB_IP, OTHER_IP, TCP, 1))[0] == TC_ACT_SHOT
    program.enforcer.set_scope(Scope(Unmanaged.DENY, frozenset({"0.0.0.0/0"})))
    assert libbpf.run_on_packet(egress, ipv6(WEB_IP6, "2001:db8::1", TCP, 1))[0] == TC_ACT_SHOT
    assert libbpf.run_on_packet(egress, ipv4(WEB_IP, OTHER_IP, TCP, 1))[0] == TC_ACT_OK


# Flow events: (verdict, reason, direction) as bpf/enforce.c numbers them.
ALLOWED, DENIED, AUDIT = 0, 1, 2
POLICY, REVOKED, STALE, UNMANAGED, AUDIT_WOULD_DENY = 0, 1, 2, 3, 4
EGRESS, INGRESS = 0, 1


def summary(event: FlowEvent) -> tuple[Any, ...]:
    """An event as (source address, destination address, src, dst, dport, proto, verdict,
    reason, direction)."""
    family = event.family
    assert family in (4, 6) and event.ktime > 0 and bytes(event.pad) == b"\0" * 7
    return (
        address_of(family, bytes(event.saddr)),
        address_of(family, bytes(event.daddr)),
        event.src,
        event.dst,
        event.dport,
        event.proto,
        event.verdict,
        event.reason,
        event.direction,
    )


def test_connection_verdicts_are_reported_on_the_ring_buffer(
    program: Program, at: Addresses
) -> None:
    """One event per connection verdict (its SYN), with both identities and why; later
    segments are not reported."""
    program.apply(1, {(257, 256, 8443, TCP): True})
    assert program.events() == []  # nothing judged yet
    assert program.verdict(packet(at.web, at.api, TCP, 8443)) == TC_ACT_OK
    assert program.verdict(packet(at.web, at.api, TCP, 8443, ACK)) == TC_ACT_OK
    assert program.verdict(packet(at.bad, at.api, TCP, 8443)) == TC_ACT_SHOT
    assert program.verdict(packet(at.web, at.other, TCP, 8443)) == TC_ACT_OK
    assert [summary(e) for e in program.events()] == [
        (at.web, at.api, 256, 257, 8443, TCP, ALLOWED, POLICY, INGRESS),
        (at.bad, at.api, 258, 257, 8443, TCP, DENIED, POLICY, INGRESS),
        (at.web, at.other, 256, 0, 8443, TCP, ALLOWED, UNMANAGED, INGRESS),
    ]
    assert program.verdict(packet(at.web, at.api, TCP, 9)) == TC_ACT_SHOT
    [event] = program.events()
    assert event.sport == 40000 and summary(event)[6:8] == (DENIED, POLICY)


def test_a_revoked_source_is_reported_revoked(program: Program, at: Addresses) -> None:
    program.apply(1, {(257, 256, 8443, TCP): True}, revoked=(256,))
    assert program.verdict(packet(at.web, at.api, TCP, 8443)) == TC_ACT_SHOT
    assert program.verdict(packet(at.web, at.api, TCP, 8443, ACK)) == TC_ACT_SHOT
    # Unmanaged destinations: a quarantined source reaches none, for that reason.
    assert program.verdict(packet(at.web, at.other, TCP, 443)) == TC_ACT_SHOT
    assert [summary(e) for e in program.events()] == [
        (at.web, at.api, 256, 257, 8443, TCP, DENIED, REVOKED, INGRESS),
        (at.web, at.other, 256, 0, 443, TCP, DENIED, REVOKED, INGRESS),
    ]


def test_stale_and_audit_verdicts_are_reported_as_such(tmp_path: Path) -> None:
    for program in _enforcer(tmp_path, Mode.AUDIT, staleness=30):
        program.apply(1, {(257, 256, 8443, TCP): True}, revoked=(258,))
        program.enforcer.refresh()
        # Audit mode passes what policy denies and says so; a quarantined source keeps
        # its own reason.
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 9)) == TC_ACT_OK
        assert program.verdict(ipv4(BAD_IP, API_IP, TCP, 8443)) == TC_ACT_OK
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK
        fd = program.enforcer._fds["trustd_config"]
        config = Config()
        libbpf.lookup(fd, ctypes.c_uint32(0), config)
        config.valid_until_ns = time.monotonic_ns() - 1_000_000_000
        libbpf.update(fd, ctypes.c_uint32(0), config)
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK
        assert [summary(e)[2:] for e in program.events()] == [
            (256, 257, 9, TCP, AUDIT, AUDIT_WOULD_DENY, INGRESS),
            (258, 257, 8443, TCP, AUDIT, REVOKED, INGRESS),
            (256, 257, 8443, TCP, ALLOWED, POLICY, INGRESS),
            (256, 257, 8443, TCP, AUDIT, STALE, INGRESS),
        ]
    for program in _enforcer(tmp_path, Mode.ENFORCE, staleness=30):
        program.apply(1, {(257, 256, 8443, TCP): True})
        fd = program.enforcer._fds["trustd_config"]
        config = Config()
        libbpf.lookup(fd, ctypes.c_uint32(0), config)
        config.valid_until_ns = time.monotonic_ns() - 1_000_000_000
        libbpf.update(fd, ctypes.c_uint32(0), config)
        assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_SHOT
        assert [summary(e)[2:] for e in program.events()] == [
            (256, 257, 8443, TCP, DENIED, STALE, INGRESS)
        ]


def test_egress_to_unmanaged_destinations_is_reported(program: Program, at: Addresses) -> None:
    loaded = program.enforcer._obj
    assert loaded is not None
    egress = loaded.program_fds[EGRESS_PROGRAM]
    program.apply(1, {})
    program.enforcer.set_scope(Scope(Unmanaged.DENY, frozenset({at.network})))
    for p in (
        packet(at.web, at.api, TCP, 8443),  # managed: its ingress reports it
        packet(at.web, at.other, TCP, 443),
        packet(at.web, at.in_network, TCP, 443),
        packet(at.web, at.in_network, TCP, 443, ACK),
    ):
        libbpf.run_on_packet(egress, p)
    assert [summary(e) for e in program.events()] == [
        (at.web, at.other, 256, 0, 443, TCP, DENIED, UNMANAGED, EGRESS),
        (at.web, at.in_network, 256, 0, 443, TCP, ALLOWED, UNMANAGED, EGRESS),
    ]


def test_a_udp_flow_is_reported_once_a_second(program: Program, at: Addresses) -> None:
    program.apply(1, {(257, 256, 53, UDP): True})
    for _ in range(3):
        assert program.verdict(packet(at.web, at.api, UDP, 53)) == TC_ACT_OK
    assert program.verdict(packet(at.bad, at.api, UDP, 53)) == TC_ACT_SHOT
    assert program.verdict(packet(at.bad, at.api, UDP, 53)) == TC_ACT_SHOT
    assert [summary(e) for e in program.events()] == [
        (at.web, at.api, 256, 257, 53, UDP, ALLOWED, POLICY, INGRESS),
        (at.bad, at.api, 258, 257, 53, UDP, DENIED, POLICY, INGRESS),
    ]
    time.sleep(1.05)
    assert program.verdict(packet(at.web, at.api, UDP, 53)) == TC_ACT_OK
    assert len(program.events()) == 1


def test_flow_events_off_reports_nothing(program: Program) -> None:
    program.apply(1, {(257, 256, 8443, TCP): True})
    program.enforcer.set_flow_events(False)
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK
    assert program.verdict(ipv4(BAD_IP, API_IP, TCP, 8443)) == TC_ACT_SHOT
    assert program.events() == []
    program.enforcer.set_flow_events(True)
    assert program.verdict(ipv4(BAD_IP, API_IP, TCP, 8443)) == TC_ACT_SHOT
    assert len(program.events()) == 1


def test_a_full_ring_buffer_loses_events_never_packets(program: Program) -> None:
    """Nobody reading: the ring buffer (256 KiB, 72 bytes a record) fills, every verdict is
    still given and the events it had no room for are counted."""
    program.apply(1, {(257, 256, 8443, TCP): True})
    assert program.enforcer.events_lost() == 0
    code, _ = libbpf.run_on_packet(
        program.enforcer.program_fd, ipv4(WEB_IP, API_IP, TCP, 8443), repeat=5000
    )
    assert code == TC_ACT_OK
    assert program.enforcer.counters()["allowed"] == 5000
    held = len(program.events())
    assert held == 256 * 1024 // 72
    assert program.enforcer.events_lost() == 5000 - held
    # Read, the ring buffer has room again.
    assert program.verdict(ipv4(WEB_IP, API_IP, TCP, 8443)) == TC_ACT_OK
    assert len(program.events()) == 1


def test_the_agent_is_woken_by_a_burst_only(program: Program) -> None:
    """Below 64 KiB unread the program wakes nobody (the agent reads on its tick); the
    event that brings the unread data past it wakes a poll(2) waiting on the ring buffer."""
    program.apply(1, {(257, 256, 8443, TCP): True})
    ring = program.enforcer.events()
    syn = ipv4(WEB_IP, API_IP, TCP, 8443)
    try:

        def woken(runs: int) -> bool:
            """Whether a poll(2) waiting for up to 2 s returned early: woken. (At its
            timeout poll looks at the ring buffer once more, and finds the data.)"""
            waiter = select.poll()
            waiter.register(ring.fd, select.POLLIN)
            returned: list[float] = []
            thread = threading.Thread(
                target=lambda: (waiter.poll(2000), returned.append(time.monotonic()))
            )
            thread.start()
            time.sleep(0.1)  # the thread waits in poll(2), on an empty ring buffer
            produced = time.monotonic()
            libbpf.run_on_packet(program.enforcer.program_fd, syn, repeat=runs)
            thread.join()
            return returned[0] - produced < 1.0

        assert not woken(100)  # 7 KiB unread: nobody woken
        assert len(ring.read(10_000)) == 100
        assert woken(1000)  # 72 KiB
        assert len(ring.read(10_000)) == 1000
    finally:
        ring.close()
