"""The agent's flows: events folded per key with a bounded number of keys, the bounded queue
that holds them while trustd is away, datapath records named from the verdict table, and
ext_authz decisions joining the same stream with what they saw of the request."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from datetime import timedelta
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc

from pki.bundle import TrustBundle
from pki.clock import SystemClock
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId
from tests.unit.test_agent_verdicts import (
    API,
    FULL,
    WEB,
    _ca,
    _chain_pem,
    _check,
    _check_request,
)
from trustd.agent.client import NodeIdentity, ServerClient, ServerError
from trustd.agent.enforcement.ebpf import FlowEvent
from trustd.agent.enforcement.state import VerdictTable
from trustd.agent.extauthz import Authorizer, start_extauthz
from trustd.agent.extauthz_grpc import start_extauthz_grpc
from trustd.agent.flows import FlowAggregator, FlowQueue, FlowReporter, fold_events
from trustd.domain.flows import (
    MAX_FLOWS_PER_BATCH,
    Direction,
    FlowReport,
    L7Attributes,
    Observer,
    Reason,
    Verdict,
)
from trustd.settings import Settings

CLOCK = SystemClock()
TABLE = VerdictTable().applied(FULL)


def event(
    src: int,
    dst: int,
    saddr: str = "10.213.0.1",
    daddr: str = "10.213.0.2",
    dport: int = 8443,
    *,
    sport: int = 40000,
    proto: int = 6,
    verdict: int = 0,
    reason: int = 0,
    direction: int = 1,
    ktime: int = 1,
) -> bytes:
    """A `struct flow_event` as enforce.c writes it (built field by field through the
    ctypes layout, so the record and the agent's struct format are checked against it)."""
    e = FlowEvent()
    e.ktime, e.src, e.dst, e.sport, e.dport = ktime, src, dst, sport, dport
    a, b = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
    e.family, e.proto = a.version, proto
    e.saddr[:] = list(a.packed.ljust(16, b"\0"))
    e.daddr[:] = list(b.packed.ljust(16, b"\0"))
    e.verdict, e.reason, e.direction = verdict, reason, direction
    return bytes(e)


def report(**fields: Any) -> FlowReport:
    now = CLOCK.now()
    base: dict[str, Any] = {
        "source": WEB,
        "destination": API,
        "source_address": "10.213.0.1",
        "destination_address": "10.213.0.2",
        "destination_port": 8443,
        "protocol": "tcp",
        "verdict": "allowed",
        "reason": "policy",
        "direction": "ingress",
        "count": 1,
        "first_seen": now,
        "last_seen": now,
    }
    return FlowReport.model_validate({**base, **fields})


def test_the_aggregator_folds_per_key_and_counts_what_it_has_no_room_for() -> None:
    aggregator = FlowAggregator(cap=2)
    assert aggregator.add("a", 5) and aggregator.add("a", 3) and aggregator.add("a", 9)
    assert aggregator.add("b", 1, count=10)
    assert not aggregator.add("c", 2, count=4)  # a third key: no room
    assert aggregator.add("a", 4)  # a key it holds still folds
    folded, dropped = aggregator.drain()
    assert sorted(folded) == [("a", 4, 3, 9), ("b", 10, 1, 1)] and dropped == 4
    assert aggregator.drain() == ([], 0)


def test_the_queue_is_bounded_drops_the_oldest_and_reports_the_events_lost() -> None:
    queue = FlowQueue(cap=3)
    since = CLOCK.now()
    assert queue.batch(since, since) is None  # nothing to say
    queue.push([report(destination_port=p, count=p) for p in (1, 2, 3, 4, 5)], dropped=7)
    assert len(queue) == 3
    batch = queue.batch(since, CLOCK.now())
    assert batch is not None
    assert [f.destination_port for f in batch.flows] == [3, 4, 5]
    # 7 lost before the queue, and the events of the two oldest flows.
    assert batch.dropped == 7 + 1 + 2
    # Not shipped: still queued, with what was lost meanwhile.
    queue.push([report(destination_port=6)], dropped=1)
    again = queue.batch(since, CLOCK.now())
    assert again is not None and again.dropped == 7 + 1 + 2 + 3 + 1
    queue.shipped(batch)
    rest = queue.batch(since, CLOCK.now())
    assert rest is not None and [f.destination_port for f in rest.flows] == [6]
    assert rest.dropped == 3 + 1
    queue.shipped(rest)
    assert len(queue) == 0 and queue.batch(since, CLOCK.now()) is None


def test_a_batch_carries_at_most_the_contracts_number_of_flows() -> None:
    queue = FlowQueue(cap=3 * MAX_FLOWS_PER_BATCH)
    queue.push([report(destination_port=p % 65536) for p in range(2 * MAX_FLOWS_PER_BATCH + 5)])
    sizes = []
    while (batch := queue.batch(CLOCK.now(), CLOCK.now())) is not None:
        assert batch.interval_start <= batch.interval_end
        sizes.append(len(batch.flows))
        queue.shipped(batch)
    assert sizes == [MAX_FLOWS_PER_BATCH, MAX_FLOWS_PER_BATCH, 5]


def test_a_batch_of_long_flows_stays_under_the_servers_request_limit() -> None:
    # 1,000 ext_authz flows with 1 KiB paths: about 1.5 MB as one batch, which trustd's
    # default 1 MiB request limit would refuse whole.
    l7 = L7Attributes(method="GET", path="/" + "p" * 1023, host="api", status=403)
    queue = FlowQueue()
    queue.push(
        [
            report(destination_port=p, observer="ext_authz", verdict="denied", l7=l7)
            for p in range(MAX_FLOWS_PER_BATCH)
        ]
    )
    shipped = 0
    while (batch := queue.batch(CLOCK.now(), CLOCK.now())) is not None:
        assert len(batch.model_dump_json()) < Settings.model_fields["max_request_bytes"].default
        shipped += len(batch.flows)
        queue.shipped(batch)
    assert shipped == MAX_FLOWS_PER_BATCH


def test_datapath_events_become_flows_named_from_the_verdict_table() -> None:
    reporter = FlowReporter(lambda: TABLE, CLOCK)
    fold_events(
        [
            event(256, 257, sport=40000),
            event(256, 257, sport=40001),  # another connection, the same flow
            event(256, 257, dport=9, verdict=1),
            event(0, 257, "10.213.0.9", verdict=2, reason=4),  # unknown source, audit
            event(256, 0, "fd00::1", "fd00::9", 53, proto=17, reason=3, direction=0),
            event(999, 257, reason=1, verdict=1),  # a number the table does not hold
            event(256, 257, proto=47),  # a protocol no flow names: left out
        ],
        reporter.aggregator,
    )
    assert reporter.flush() == 5
    batch = reporter.queue.batch(CLOCK.now() - timedelta(seconds=1), CLOCK.now())
    assert batch is not None
    got = {
        (
            f.source,
            f.destination,
            f.source_address,
            f.destination_address,
            f.destination_port,
            f.protocol,
            f.verdict,
            f.reason,
            f.direction,
            f.count,
        )
        for f in batch.flows
    }
    allowed, denied, audit = Verdict.ALLOWED, Verdict.DENIED, Verdict.AUDIT
    ingress, egress = Direction.INGRESS, Direction.EGRESS
    assert got == {
        (WEB, API, "10.213.0.1", "10.213.0.2", 8443, "tcp", allowed, Reason.POLICY, ingress, 2),
        (WEB, API, "10.213.0.1", "10.213.0.2", 9, "tcp", denied, Reason.POLICY, ingress, 1),
        (
            None,
            API,
            "10.213.0.9",
            "10.213.0.2",
            8443,
            "tcp",
            audit,
            Reason.AUDIT_WOULD_DENY,
            ingress,
            1,
        ),
        (WEB, None, "fd00::1", "fd00::9", 53, "udp", allowed, Reason.UNMANAGED, egress, 1),
        (None, API, "10.213.0.1", "10.213.0.2", 8443, "tcp", denied, Reason.REVOKED, ingress, 1),
    }
    assert all(f.observer is Observer.EBPF and f.first_seen <= f.last_seen for f in batch.flows)


def test_one_interval_holds_a_bounded_number_of_flows() -> None:
    """A flood of distinct flows (one source scanning ports) costs at most the cap; the
    rest is counted and reported as dropped."""
    reporter = FlowReporter(lambda: TABLE, CLOCK, open_cap=100)
    fold_events([event(256, 257, dport=p) for p in range(1, 1001)], reporter.aggregator)
    assert reporter.flush() == 100
    batch = reporter.queue.batch(CLOCK.now(), CLOCK.now())
    assert batch is not None and len(batch.flows) == 100 and batch.dropped == 900


def test_the_record_layout_is_enforce_cs() -> None:
    # enforce.c's struct flow_event: 64 bytes, the addresses at 8 and 24, the identities
    # at 40 and 44.
    raw = event(256, 257)
    assert len(raw) == 64
    assert struct.unpack_from("=II", raw, 40) == (256, 257)
    assert raw[8:12] == ipaddress.ip_address("10.213.0.1").packed


def test_ext_authz_decisions_join_the_flows_with_their_l7_attributes() -> None:
    authority, root = _ca()
    bundle = TrustBundle(SpiffeId.parse(WEB).trust_domain, (root,), {}, 1, 300)
    holder = {"table": TABLE}
    reporter = FlowReporter(lambda: holder["table"], CLOCK)
    authorizer = Authorizer(lambda: holder["table"], lambda: bundle, CLOCK, flows=reporter)
    web = _chain_pem(authority, WEB)
    seen = {
        "x-client-cert": web,
        "x-trustd-destination": API,
        "x-trustd-port": "8443",
        "x-trustd-source-address": "10.213.0.1",
        "x-trustd-destination-address": "not an address",
        "x-original-uri": "/v1/orders?token=secret",
    }

    async def run() -> list[int]:
        server = await start_extauthz("127.0.0.1", 0, authorizer)
        port = server.sockets[0].getsockname()[1]
        try:
            results = [
                await _check(port, seen),
                await _check(port, seen),
                await _check(port, seen, "DELETE"),
                await _check(port, {k: v for k, v in seen.items() if k != "x-client-cert"}),
            ]
            holder["table"] = holder["table"].applied(
                {"revision": 4, "base": 3, "changes": {"revoked": {"set": [256]}}}
            )
            results.append(await _check(port, seen))
            return results
        finally:
            server.close()

    assert asyncio.run(run()) == [200, 200, 403, 403, 403]
    assert reporter.flush() == 4
    batch = reporter.queue.batch(CLOCK.now(), CLOCK.now())
    assert batch is not None
    got = {
        (f.source, f.verdict, f.reason, f.count, f.l7.method, f.l7.path, f.l7.host, f.l7.status)
        for f in batch.flows
        if f.l7 is not None
    }
    assert got == {
        (WEB, Verdict.ALLOWED, Reason.POLICY, 2, "GET", "/v1/orders", "a", 200),
        (WEB, Verdict.DENIED, Reason.POLICY, 1, "DELETE", "/v1/orders", "a", 403),
        (None, Verdict.DENIED, Reason.POLICY, 1, "GET", "/v1/orders", "a", 403),
        (WEB, Verdict.DENIED, Reason.REVOKED, 1, "GET", "/v1/orders", "a", 403),
    }
    for flow in batch.flows:
        assert flow.observer is Observer.EXT_AUTHZ and flow.direction is Direction.INGRESS
        assert flow.destination == API and flow.destination_port == 8443
        assert (flow.source_address, flow.destination_address) == ("10.213.0.1", "0.0.0.0")  # noqa: S104 - unspecified: not known


def test_a_batch_trustd_cannot_take_stays_queued() -> None:
    authority, root = _ca()
    key = generate_private_key(KeyType.EC_P256)
    bundle = TrustBundle(SpiffeId.parse(WEB).trust_domain, (root,), {}, 1, 300)
    node = NodeIdentity(SpiffeId.parse(WEB), (authority.certificate,), key)
    reporter = FlowReporter(lambda: TABLE, CLOCK)
    fold_events([event(256, 257)], reporter.aggregator)
    reporter.flush()

    async def run() -> None:
        # Nothing listens on port 9 of the loopback: trustd is away.
        client = ServerClient("https://127.0.0.1:9", bundle, CLOCK, timeout=2)
        try:
            with pytest.raises(ServerError):
                await reporter.ship(client, node)
        finally:
            await client.aclose()

    asyncio.run(run())
    assert len(reporter.queue) == 1
    assert reporter.status()["queued"] == 1


def test_grpc_ext_authz_decisions_join_the_flows_with_envoys_addresses() -> None:
    authority, root = _ca()
    bundle = TrustBundle(SpiffeId.parse(WEB).trust_domain, (root,), {}, 1, 300)
    reporter = FlowReporter(lambda: TABLE, CLOCK)
    authorizer = Authorizer(lambda: TABLE, lambda: bundle, CLOCK, flows=reporter)

    async def run() -> list[int]:
        server, port = await start_extauthz_grpc("127.0.0.1", 0, authorizer)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                check = pb_grpc.AuthorizationStub(channel).Check
                codes = []
                for method, certificate in (("GET", _chain_pem(authority, WEB)), ("GET", "")):
                    request = _check_request(WEB, API, method, certificate)
                    attributes = request.attributes
                    attributes.source.address.socket_address.address = "fd00::1"
                    attributes.destination.address.socket_address.address = "fd00::2"
                    attributes.request.http.host = "orders.example"
                    codes.append((await check(request)).status.code)
                return codes
        finally:
            await server.stop(None)

    assert asyncio.run(run()) == [0, 7]
    assert reporter.flush() == 2
    batch = reporter.queue.batch(CLOCK.now(), CLOCK.now())
    assert batch is not None
    got = {
        (f.source, f.verdict, f.source_address, f.destination_address, f.l7) for f in batch.flows
    }
    allowed = L7Attributes(method="GET", path="/v1/orders", host="orders.example", status=200)
    denied = allowed.model_copy(update={"status": 403})
    assert got == {
        (WEB, Verdict.ALLOWED, "fd00::1", "fd00::2", allowed),
        (None, Verdict.DENIED, "fd00::1", "fd00::2", denied),
    }
