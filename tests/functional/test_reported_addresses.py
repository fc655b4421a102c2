"""Workload addresses reported by agents, on both backends: accepted only for the node's own
entries, validated, stored, replaced, dropped with the node or the entry, and pushed to
every node's IP cache with conflicts resolved as the verdict compiler documents."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlmodel import Session, select

from tests.functional.conftest import Server
from tests.functional.test_nodes_entries import (
    _count,
    answer_after_change,
    attest,
    entry,
    join_token,
    node_headers,
)
from tests.functional.test_verdicts import API, DB, WEB, sync
from trustd.agent.client import NodeIdentity
from trustd.agent.enforcement.state import VerdictTable
from trustd.services.verdicts import AMBIGUOUS, AMBIGUOUS_IDENTITY
from trustd.store.audit import AuditEvent
from trustd.store.verdicts import ReportedAddress


class Node:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.identity: NodeIdentity = attest(server, join_token(server)["token"])[0]
        self.id = str(self.identity.spiffe_id)
        self.headers = node_headers(server, self.identity)

    def report(self, addresses: dict[str, list[str]] | list[dict[str, Any]]) -> Any:
        identities = (
            addresses
            if isinstance(addresses, list)
            else [{"spiffe_id": k, "addresses": v} for k, v in addresses.items()]
        )
        return self.server.client.put(
            "/v1/agents/addresses", json={"identities": identities}, headers=self.headers
        )

    def ipcache(self) -> dict[str, int]:
        state = sync(self.server, self.headers, verdict_since=0)["verdicts"]
        return dict(state["changes"]["ipcache"]["set"])

    def identities(self) -> dict[str, int]:
        state = sync(self.server, self.headers, verdict_since=0)["verdicts"]
        return dict(state["changes"]["identities"]["set"])


def _rows(server: Server) -> set[tuple[str, str, str]]:
    with Session(server.services.engine) as session:
        return {
            (r.node_id, r.spiffe_id, r.address) for r in session.exec(select(ReportedAddress)).all()
        }


def _revision(server: Server, node: Node) -> int:
    return int(sync(server, node.headers)["revision"])


def _conflicts(kind: str) -> float | None:
    return REGISTRY.get_sample_value("trustd_ipcache_conflicts", {"kind": kind})


@pytest.fixture
def nodes(server: Server) -> tuple[Node, Node]:
    a, b = Node(server), Node(server)
    assert entry(server, API, a.id, "unix:uid:1001").status_code == 201
    assert entry(server, WEB, b.id, "unix:uid:1002", ip_addresses=["10.213.0.1"]).status_code == 201
    return a, b


def test_report_reaches_every_nodes_ipcache_as_a_delta(
    server: Server, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes
    ids = a.identities()
    assert b.ipcache() == {"10.213.0.1/32": ids[WEB]}
    held = sync(server, b.headers, verdict_since=0)

    def report() -> None:
        response = a.report({API: ["10.213.0.2", "10.213.0.3"]})
        assert response.status_code == 204, response.text

    # Node b's agent is waiting in its long-poll; node a reports its workload's address.
    body = answer_after_change(
        server,
        b.headers,
        report,
        since=held["revision"],
        revoked_since=held["revocation_revision"],
        verdict_since=held["verdicts"]["revision"],
        wait=20,
    )
    delta = body["verdicts"]
    assert delta["base"] == held["verdicts"]["revision"]
    assert delta["changes"]["ipcache"] == {
        "set": {"10.213.0.2/32": ids[API], "10.213.0.3/32": ids[API]},
        "remove": [],
    }
    assert (
        a.ipcache()
        == b.ipcache()
        == {
            "10.213.0.1/32": ids[WEB],
            "10.213.0.2/32": ids[API],
            "10.213.0.3/32": ids[API],
        }
    )
    assert _rows(server) == {(a.id, API, "10.213.0.2"), (a.id, API, "10.213.0.3")}
    # The entry's detail shows who reported what.
    [api_entry] = server.client.get(
        "/v1/entries", params={"spiffe_id": API}, headers=server.auth
    ).json()["entries"]
    detail = server.client.get(f"/v1/entries/{api_entry['id']}", headers=server.auth).json()
    assert [(r["node_id"], r["address"]) for r in detail["reported_addresses"]] == [
        (a.id, "10.213.0.2"),
        (a.id, "10.213.0.3"),
    ]
    assert _count(server, AuditEvent, AuditEvent.action == "node:addresses:reported") == 1

    # The same report again changes nothing: no new revision, no audit row.
    revision = _revision(server, a)
    assert a.report({API: ["10.213.0.3", "10.213.0.2"]}).status_code == 204
    assert _revision(server, a) == revision
    assert _count(server, AuditEvent, AuditEvent.action == "node:addresses:reported") == 1

    # A report replaces the last one; an empty one withdraws everything.
    assert a.report({API: ["10.213.0.3"]}).status_code == 204
    assert b.ipcache() == {"10.213.0.1/32": ids[WEB], "10.213.0.3/32": ids[API]}
    assert a.report({}).status_code == 204
    assert b.ipcache() == {"10.213.0.1/32": ids[WEB]}
    assert _rows(server) == set()


@pytest.mark.parametrize(
    ("identities", "status", "detail"),
    [
        ({WEB: ["10.213.0.9"]}, 403, "may not serve"),
        ({DB: ["10.213.0.9"]}, 403, "may not serve"),
        ({API: ["127.0.0.1"]}, 400, "loopback"),
        ({API: ["0.0.0.0"]}, 400, "unspecified"),  # noqa: S104 - an address, not a bind
        ({API: ["224.0.0.5"]}, 400, "multicast"),
        ({API: ["169.254.1.1"]}, 400, "link-local"),
        ({API: ["255.255.255.255"]}, 400, "reserved"),
        # IPv6 (RFC 4291 §2.5): only global and unique local addresses name a workload.
        ({API: ["::1"]}, 400, "loopback"),
        ({API: ["::"]}, 400, "unspecified"),
        ({API: ["fe80::1"]}, 400, "link-local"),
        ({API: ["ff02::1"]}, 400, "multicast"),
        ({API: ["::ffff:10.213.0.9"]}, 400, "IPv4-mapped"),
        ({API: ["fec0::1"]}, 400, "site-local"),
        ({API: ["fd00:213::1%eth0"]}, 400, "zone"),
        ({API: ["64:ff9b::a00:1"]}, 400, "reserved"),
        ({API: ["fd00:213::/64"]}, 400, "not an IP address"),
        ({API: ["10.213.0.0/24"]}, 400, "not an IP address"),
        ({API: ["10.213.0.300"]}, 400, "not an IP address"),
        ({"https://example.org/x": ["10.213.0.9"]}, 400, "spiffe"),
        ({API: [f"10.213.1.{i}" for i in range(65)]}, 422, "64"),
        (
            [{"spiffe_id": API, "addresses": ["10.213.0.9"]}] * 2,
            400,
            "listed twice",
        ),
        ([{"spiffe_id": API, "addresses": ["10.213.0.9"], "extra": 1}], 422, "extra"),
    ],
)
def test_bad_reports_are_refused_and_change_nothing(
    server: Server,
    nodes: tuple[Node, Node],
    identities: dict[str, list[str]] | list[dict[str, Any]],
    status: int,
    detail: str,
) -> None:
    a, b = nodes
    other = "spiffe://example.org/ns/api/other"
    assert entry(server, other, a.id, "unix:uid:1005").status_code == 201
    assert a.report({API: ["10.213.0.2"]}).status_code == 204
    before = (_rows(server), _revision(server, a), b.ipcache())
    # A good identity next to the bad one is not stored either: all or nothing.
    good = {"spiffe_id": other, "addresses": ["10.213.0.7"]}
    body = (
        identities
        if isinstance(identities, list)
        else [good, *({"spiffe_id": k, "addresses": v} for k, v in identities.items())]
    )
    response = a.report(body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail.lower() in response.json()["detail"].lower()
    assert (_rows(server), _revision(server, a), b.ipcache()) == before


def test_reports_need_a_node_credential(server: Server, nodes: tuple[Node, Node]) -> None:
    response = server.client.put(
        "/v1/agents/addresses",
        json={"identities": [{"spiffe_id": API, "addresses": ["10.213.0.2"]}]},
        headers=server.auth,
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert _rows(server) == set()


def test_eviction_ban_and_entry_deletion_drop_reports(
    server: Server, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes
    second = entry(server, API, a.id, "unix:uid:2002").json()
    db = entry(server, DB, a.id, "unix:uid:1003").json()
    assert a.report({API: ["10.213.0.2"], DB: ["10.213.0.3"]}).status_code == 204
    ids = b.identities()
    assert b.ipcache() == {
        "10.213.0.1/32": ids[WEB],
        "10.213.0.2/32": ids[API],
        "10.213.0.3/32": ids[DB],
    }

    # The last entry with a SPIFFE ID goes: its addresses go with it. While another entry
    # still carries the SPIFFE ID, they stay.
    assert server.client.delete(f"/v1/entries/{db['id']}", headers=server.auth).status_code == 204
    assert (
        server.client.delete(f"/v1/entries/{second['id']}", headers=server.auth).status_code == 204
    )
    assert _rows(server) == {(a.id, API, "10.213.0.2")}
    assert b.ipcache() == {"10.213.0.1/32": ids[WEB], "10.213.0.2/32": ids[API]}

    # An evicted node's reports go at once.
    evicted = server.client.post("/v1/nodes/evict", json={"spiffe_id": a.id}, headers=server.auth)
    assert evicted.status_code == 200
    assert _rows(server) == set()
    assert b.ipcache() == {"10.213.0.1/32": ids[WEB]}

    # And a banned one's.
    assert entry(server, DB, b.id, "unix:uid:1004").status_code == 201
    assert b.report({DB: ["10.213.0.4"]}).status_code == 204
    assert _rows(server) == {(b.id, DB, "10.213.0.4")}
    banned = server.client.post("/v1/nodes/ban", json={"spiffe_id": b.id}, headers=server.auth)
    assert banned.status_code == 200
    assert _rows(server) == set()


def test_declared_prefixes_win_and_shared_addresses_fail_closed(
    server: Server, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes
    assert (
        entry(server, DB, b.id, "unix:uid:1003", ip_addresses=["10.213.7.0/24"]).status_code == 201
    )
    ids = a.identities()
    # Node a says its API workload holds an address inside DB's declared /24, one equal to
    # WEB's declared /32, and one of its own; node b says its WEB workload holds that last
    # one too (two workloads in one network namespace, or a stale report).
    assert a.report({API: ["10.213.7.9", "10.213.0.1", "10.213.0.5"]}).status_code == 204
    assert b.report({WEB: ["10.213.0.5", "10.213.0.1"]}).status_code == 204
    state = sync(server, a.headers, verdict_since=0)["verdicts"]
    assert state["changes"]["ipcache"]["set"] == {
        # Declared: kept as the operator wrote them; a reported /32 would override them.
        "10.213.0.1/32": ids[WEB],
        "10.213.7.0/24": ids[DB],
        # Claimed by two identities: neither, but the reserved identity no policy allows.
        "10.213.0.5/32": AMBIGUOUS_IDENTITY,
    }
    assert state["changes"]["identities"]["set"][AMBIGUOUS] == AMBIGUOUS_IDENTITY
    assert _conflicts("declared") == 2
    assert _conflicts("ambiguous") == 1
    # The agent accepts the state (the reserved identity is a known number) and its L4
    # verdict for the ambiguous address is deny, in either direction.
    table = VerdictTable().applied(state)
    assert table.ipcache["10.213.0.5/32"] == AMBIGUOUS_IDENTITY
    for other in (ids[WEB], ids[API], ids[DB]):
        assert not table.allows(AMBIGUOUS_IDENTITY, other, 8443, 6)
        assert not table.allows(other, AMBIGUOUS_IDENTITY, 8443, 6)

    # Node b withdraws: the address is a's workload's alone again, the conflicts clear.
    assert b.report({WEB: ["10.213.0.1"]}).status_code == 204
    state = sync(server, a.headers, verdict_since=0)["verdicts"]
    assert state["changes"]["ipcache"]["set"]["10.213.0.5/32"] == ids[API]
    assert AMBIGUOUS not in state["changes"]["identities"]["set"]
    assert _conflicts("ambiguous") == 0
    assert _conflicts("declared") == 2


def test_ipv6_reports_reach_the_ipcache_as_128s_next_to_ipv4(
    server: Server, nodes: tuple[Node, Node]
) -> None:
    """A dual-stack workload's report: both families under its one identity, IPv6 in the
    RFC 5952 form whatever the agent wrote; declared IPv6 prefixes win and shared IPv6
    addresses fail closed, as for IPv4."""
    a, b = nodes
    assert (
        entry(server, DB, b.id, "unix:uid:1003", ip_addresses=["fd00:213:7::/48"]).status_code
        == 201
    )
    ids = a.identities()
    report = {API: ["10.213.0.2", "FD00:213:0:0::2", "2001:db8:213::2", "fd00:213:7::9"]}
    assert a.report(report).status_code == 204, a.report(report).text
    assert _rows(server) == {
        (a.id, API, "10.213.0.2"),
        (a.id, API, "fd00:213::2"),
        (a.id, API, "2001:db8:213::2"),
        (a.id, API, "fd00:213:7::9"),
    }
    assert b.report({WEB: ["fd00:213::2", "10.213.0.1"]}).status_code == 204
    assert a.ipcache() == {
        "10.213.0.1/32": ids[WEB],
        "fd00:213:7::/48": ids[DB],
        "10.213.0.2/32": ids[API],
        "2001:db8:213::2/128": ids[API],
        # Claimed by node b's web workload too.
        "fd00:213::2/128": AMBIGUOUS_IDENTITY,
    }
    # The same address written another way is the same report: nothing changes.
    revision = _revision(server, a)
    report[API][1] = "fd00:213::2"
    assert a.report(report).status_code == 204
    assert _revision(server, a) == revision
    assert b.report({WEB: ["10.213.0.1"]}).status_code == 204
    assert b.ipcache()["fd00:213::2/128"] == ids[API]
