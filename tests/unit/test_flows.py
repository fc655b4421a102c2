"""The pure parts of flows: which node may speak for which workload, the graph from
traffic (seen, unused, denied), the datapath's verdict lookup, and how the overlay is
drawn (a real `dot`)."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime

from policy.verdicts import ANY_PORT, l4_allows
from trustd.domain.flows import (
    Direction,
    FlowReport,
    Observer,
    Reason,
    TrafficEdge,
    Usage,
    Verdict,
)
from trustd.domain.ui import Edge, MeshRule
from trustd.services.agents import Hosted
from trustd.services.flows import _hosts, overlay
from trustd.web.graphviz import render_svg, traffic_dot_source

TD = "spiffe://example.org"
WEB, API, DB = f"{TD}/ns/web/frontend", f"{TD}/ns/api/orders", f"{TD}/ns/db/postgres"
NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def report(
    source: str | None,
    destination: str | None,
    direction: Direction,
    observer: Observer = Observer.EBPF,
    **extra: str,
) -> FlowReport:
    return FlowReport(
        source=source,
        destination=destination,
        source_address=extra.get("source_address", "10.0.0.1"),
        destination_address=extra.get("destination_address", "10.0.0.2"),
        destination_port=5432,
        protocol="tcp",
        verdict=Verdict.DENIED,
        reason=Reason.POLICY,
        direction=direction,
        observer=observer,
        count=1,
        first_seen=NOW,
        last_seen=NOW,
    )


def test_a_node_speaks_only_for_its_side_of_a_flow() -> None:
    hosted = Hosted(
        frozenset({API}), frozenset({"10.0.0.1"}), (ipaddress.ip_network("10.9.0.0/24"),)
    )
    assert _hosts(hosted, report(API, DB, Direction.EGRESS))
    assert not _hosts(hosted, report(WEB, API, Direction.EGRESS))  # the source is not its
    assert _hosts(hosted, report(WEB, API, Direction.INGRESS))
    assert not _hosts(hosted, report(API, DB, Direction.INGRESS))  # the destination is not
    # An identity in no entry: judged by address, reported or declared.
    assert _hosts(hosted, report(None, DB, Direction.EGRESS))
    assert not _hosts(hosted, report(None, DB, Direction.EGRESS, source_address="10.0.0.7"))
    assert _hosts(hosted, report(WEB, None, Direction.INGRESS, destination_address="10.9.0.5"))
    assert not _hosts(hosted, report(WEB, None, Direction.INGRESS, destination_address="10.9.1.5"))
    # An ext_authz decision is the destination's side, whatever the direction says.
    assert _hosts(hosted, report(WEB, API, Direction.EGRESS, Observer.EXT_AUTHZ))
    assert not _hosts(hosted, report(API, DB, Direction.EGRESS, Observer.EXT_AUTHZ))
    # A known identity never falls back to the address: a node holding an address cannot
    # speak for another node's identity there.
    assert not _hosts(hosted, report(DB, API, Direction.EGRESS))


def _seen(
    src: str, dst: str, verdict: Verdict, count: int, reason: Reason = Reason.POLICY
) -> TrafficEdge:
    return TrafficEdge(src, dst, verdict, reason, count, 1, NOW)


def test_overlay_marks_seen_unused_and_denied() -> None:
    allow = MeshRule("allow", "api-to-db", (5432,), ("tcp",))
    deny = MeshRule("deny", "quarantine")
    policy = [
        Edge(API, DB, True, ("allowed by rule api-to-db",), (allow,)),
        Edge(WEB, API, True, ("allowed by rule web-to-api",), ()),
        Edge(WEB, DB, False, ("denied by rule quarantine",), (deny,)),
    ]
    traffic = [
        _seen(API, DB, Verdict.ALLOWED, 5),
        _seen(API, DB, Verdict.AUDIT, 2, Reason.AUDIT_WOULD_DENY),
        _seen(WEB, DB, Verdict.DENIED, 9),
        _seen(DB, WEB, Verdict.DENIED, 1, Reason.STALE),
    ]
    edges = {(e.source, e.destination): e for e in overlay(policy, traffic)}
    assert edges[(API, DB)].usage is Usage.SEEN and edges[(API, DB)].count == 7
    assert edges[(API, DB)].decided_by == "allow rule api-to-db"
    assert edges[(WEB, API)].usage is Usage.UNUSED and edges[(WEB, API)].count == 0
    assert edges[(WEB, API)].decided_by == "allowed"
    assert edges[(WEB, DB)].usage is Usage.DENIED
    assert edges[(WEB, DB)].decided_by == "deny rule quarantine"
    assert edges[(DB, WEB)].usage is Usage.DENIED and edges[(DB, WEB)].reasons == ("stale",)
    assert edges[(DB, WEB)].decided_by == "default deny (no allow rule)"
    assert len(edges) == 4


def test_the_lookup_is_the_datapaths_exact_port_first() -> None:
    verdicts = {(DB, API, ANY_PORT, "tcp"): True, (DB, API, 22, "tcp"): False}
    assert l4_allows(verdicts, DB, API, 5432, "tcp")
    assert not l4_allows(verdicts, DB, API, 22, "tcp")
    assert not l4_allows(verdicts, DB, API, 5432, "udp")
    assert not l4_allows(verdicts, API, DB, 5432, "tcp")


def test_the_overlay_is_drawn_solid_dashed_and_red() -> None:
    policy = [Edge(API, DB, True, (), ()), Edge(WEB, API, True, (), ())]
    edges = overlay(policy, [_seen(API, DB, Verdict.ALLOWED, 3), _seen(WEB, DB, Verdict.DENIED, 4)])
    svg = render_svg(traffic_dot_source([WEB, API, DB], edges))
    classes = re.findall(r'<g id="traffic\d+" class="edge ([a-z]+)"', svg)
    assert sorted(classes) == ["denied", "seen", "unused"]
    assert 'stroke="#b42318"' in svg
    assert 'stroke-dasharray="5,2"' in svg
    assert "/ui/flows?source=" in svg
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert "denied: 4 events" in texts and "default deny (no allow rule)" in texts
