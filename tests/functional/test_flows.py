"""Observed flows, on both backends: a node's batch is stored only for its own workloads
(a forged report about another node's is refused and counted), batches are bounded,
queries filter and page by id, and the leader's prune keeps the store bounded."""

from __future__ import annotations

import copy
import html
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from tests.functional.conftest import Server, ServerFactory, make_settings
from tests.functional.test_nodes_entries import attest, entry, join_token, node_headers
from tests.functional.test_ui_views import ADMIN, PASSWORD, sign_in
from tests.functional.test_verdicts import API, DB, WEB
from trustd.app import create_app
from trustd.domain.flows import MAX_FLOWS_PER_BATCH
from trustd.leader import LostLeadership
from trustd.roles import Role
from trustd.services.container import build_services
from trustd.services.flows import overlay
from trustd.store.db import transaction
from trustd.store.flows import count_flows

FLOWS = "/v1/agents/flows"
REDIS_URL = "redis://127.0.0.1:6379/0"


def flow(source: str | None, destination: str | None, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "source": source,
        "destination": destination,
        "source_address": "10.213.0.2",
        "destination_address": "10.213.0.9",
        "destination_port": 5432,
        "protocol": "tcp",
        "verdict": "allowed",
        "reason": "policy",
        "direction": "egress",
        "count": 3,
        "first_seen": (now - timedelta(seconds=5)).isoformat(),
        "last_seen": now.isoformat(),
        **extra,
    }


def batch(*flows: dict[str, Any], dropped: int = 0) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "flows": list(flows),
        "dropped": dropped,
        "interval_start": (now - timedelta(seconds=10)).isoformat(),
        "interval_end": now.isoformat(),
    }


class Node:
    def __init__(self, server: Server) -> None:
        self.server = server
        identity = attest(server, join_token(server)["token"])[0]
        self.id = str(identity.spiffe_id)
        self.headers = node_headers(server, identity)

    def send(self, body: dict[str, Any]) -> Any:
        return self.server.client.post(FLOWS, json=body, headers=self.headers)


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def query(server: Server, **params: Any) -> dict[str, Any]:
    response = server.client.get("/v1/flows", params=params, headers=server.auth)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
def nodes(server: Server) -> tuple[Node, Node]:
    """Node a hosts API (at a reported address), node b hosts WEB and DB (DB declares its
    address in the entry)."""
    a, b = Node(server), Node(server)
    assert entry(server, API, a.id, "unix:uid:1001").status_code == 201
    assert entry(server, WEB, b.id, "unix:uid:1002").status_code == 201
    assert entry(server, DB, b.id, "unix:uid:1003", ip_addresses=["10.213.0.9"]).status_code == 201
    reported = {"identities": [{"spiffe_id": API, "addresses": ["10.213.0.2"]}]}
    assert (
        server.client.put("/v1/agents/addresses", json=reported, headers=a.headers).status_code
        == 204
    )
    return a, b


def test_a_node_reports_its_own_workloads_flows_and_a_forged_one_is_refused(
    server: Server, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes
    refused = _sample("trustd_flows_total", {"outcome": "refused"})
    dropped = _sample("trustd_flows_dropped_total", {"node": a.id})
    mine = flow(API, DB)
    # Node a claims an egress flow of WEB (node b's workload) and an ingress flow to DB
    # (node b's): neither is a's to report.
    forged_egress = flow(WEB, DB, source_address="10.213.0.5", verdict="denied")
    forged_ingress = flow(API, DB, direction="ingress", verdict="denied")
    # An unknown local source is a's only at an address a's workloads hold.
    unknown_mine = flow(None, DB)
    unknown_not_mine = flow(None, DB, source_address="10.213.0.77")
    body = batch(mine, forged_egress, forged_ingress, unknown_mine, unknown_not_mine, dropped=7)
    response = a.send(body)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2, "refused": 3}
    assert _sample("trustd_flows_total", {"outcome": "refused"}) == refused + 3
    assert _sample("trustd_flows_dropped_total", {"node": a.id}) == dropped + 7
    stored = query(server)["flows"]
    assert sorted((f["source"] or "", f["destination"]) for f in stored) == [("", DB), (API, DB)]
    assert {f["node"] for f in stored} == {a.id}
    # No edge for node b's workloads from the forged report: nothing denied between WEB and DB.
    assert query(server, verdict="denied")["flows"] == []
    # Node b reports the ingress side of the same connection: DB is b's (declared address).
    response = b.send(batch(flow(API, DB, direction="ingress")))
    assert response.json() == {"accepted": 1, "refused": 0}


def test_bad_batches_are_refused_with_problem_json_and_change_nothing(server: Server) -> None:
    a = Node(server)
    assert entry(server, API, a.id, "unix:uid:1001").status_code == 201
    too_many = batch(*[flow(API, DB)] * (MAX_FLOWS_PER_BATCH + 1))
    response = a.send(too_many)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    # Past the request size limit: refused before it is read whole.
    huge = batch(
        *[flow(API, DB, l7={"method": "GET", "path": "/" + "x" * 1000, "status": 200})]
        * (MAX_FLOWS_PER_BATCH - 1)
    )
    response = a.send(huge)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    # Unknown fields, unordered intervals, a bad address: the wire model's refusals.
    for bad in (
        {**batch(flow(API, DB)), "extra": 1},
        batch(flow(API, DB, source_address="10.0.0.300")),
        batch(
            flow(
                API, DB, first_seen=datetime.now(UTC).isoformat(), last_seen="2020-01-01T00:00:00Z"
            )
        ),
    ):
        assert a.send(bad).status_code == 422
    # Not a node: an admin token is no node credential.
    assert server.client.post(FLOWS, json=batch(), headers=server.auth).status_code == 401
    with transaction(server.services.engine) as session:
        assert count_flows(session) == 0


def test_a_node_flooding_batches_is_throttled(server_factory: ServerFactory) -> None:
    server = server_factory(flow_batches_per_minute=3)
    a = Node(server)
    assert entry(server, API, a.id, "unix:uid:1001").status_code == 201
    throttled = _sample("trustd_flow_batches_throttled_total")
    answers = [a.send(batch(flow(API, DB, verdict="denied"))) for _ in range(5)]
    assert _sample("trustd_flow_batches_throttled_total") == throttled + 2
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    # RFC 6585 §4: when to come back (the next batch's slot, 20 s at 3 a minute).
    assert 1 <= int(answers[3].headers["retry-after"]) <= 20
    assert answers[3].headers["content-type"] == "application/problem+json"
    # Refused before the body is read: a malformed batch past the rate is a 429, not a 422.
    assert a.send({"flows": "not even a list"}).status_code == 429
    # The server still answers everyone else.
    assert query(server, verdict="denied", limit=10)["flows"][0]["count"] == 3


def test_replicas_share_a_nodes_bound_through_redis(
    server_factory: ServerFactory, tmp_path: Path, database_url: str
) -> None:
    """An agent may talk to any replica: the bound is the node's, not each replica's."""
    server = server_factory(flow_batches_per_minute=3, redis_url=REDIS_URL)
    a = Node(server)
    assert entry(server, API, a.id, "unix:uid:1001").status_code == 201
    settings = make_settings(tmp_path, database_url, flow_batches_per_minute=3, redis_url=REDIS_URL)
    replica = build_services(settings)
    try:
        with TestClient(create_app(settings, replica)) as other:
            body = batch(flow(API, DB))
            statuses = [server.client.post(FLOWS, json=body, headers=a.headers).status_code]
            statuses += [other.post(FLOWS, json=body, headers=a.headers).status_code for _ in "ab"]
            statuses += [server.client.post(FLOWS, json=body, headers=a.headers).status_code]
    finally:
        replica.engine.dispose()
    assert statuses == [200, 200, 200, 429]


def test_filters_and_keyset_paging(server: Server, nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    flows = [flow(API, DB, destination_port=5000 + i) for i in range(5)]
    flows.append(flow(API, WEB, verdict="denied", reason="revoked"))
    assert a.send(batch(*flows)).json()["accepted"] == 6
    everything = query(server)
    ids = [f["id"] for f in everything["flows"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 6
    assert everything["cursor"] == max(ids)
    # Pages of two in the order stored, each from the previous cursor.
    seen, after = [], 0
    while True:
        page = query(server, after=after, limit=2)
        if not page["flows"]:
            assert page["cursor"] == after
            break
        seen += [f["id"] for f in page["flows"]]
        after = page["cursor"]
    assert seen == sorted(ids)
    assert [f["destination"] for f in query(server, verdict="denied")["flows"]] == [WEB]
    assert query(server, reason="revoked")["flows"][0]["verdict"] == "denied"
    assert len(query(server, to=DB)["flows"]) == 5
    assert len(query(server, **{"from": "spiffe://example.org/ns/api/"})["flows"]) == 6
    assert query(server, **{"from": "spiffe://example.org/ns/"[:-1]})["flows"] == []
    assert len(query(server, node=a.id)["flows"]) == 6
    assert query(server, node=b.id)["flows"] == []
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert query(server, since=later)["flows"] == []
    assert len(query(server, until=later)["flows"]) == 6
    for bad in (
        {"limit": 0},
        {"limit": 1001},
        {"after": -1},
        {"after": 2**63},
        {"verdict": "maybe"},
        {"since": "2026-01-01T00:00:00"},
    ):
        response = server.client.get("/v1/flows", params=bad, headers=server.auth)
        assert response.status_code == 422, bad
        assert response.headers["content-type"] == "application/problem+json"
    response = server.client.get(
        "/v1/flows", params={"since": later, "until": later}, headers=server.auth
    )
    assert response.status_code == 400
    # Admin only: no token, no flows.
    assert server.client.get("/v1/flows").status_code == 401


def test_prune_keeps_the_newest_within_retention_and_count(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(flow_max_rows=3, flow_retention=3600)
    a = Node(server)
    assert entry(server, API, a.id, "unix:uid:1001").status_code == 201
    old = datetime.now(UTC) - timedelta(hours=2)
    stale = flow(API, DB, first_seen=old.isoformat(), last_seen=old.isoformat())
    assert (
        a.send(batch(stale, *[flow(API, DB, destination_port=p) for p in (1, 2, 3, 4)])).json()[
            "accepted"
        ]
        == 5
    )
    # A leader that stalled while a successor took over deletes nothing.
    fence = server.services.rotation.leader.fence
    stale, newest = fence.claim(), fence.claim()
    with pytest.raises(LostLeadership):
        server.services.flows.prune(fence.checker(stale))
    with transaction(server.services.engine) as session:
        assert count_flows(session) == 5
    # The stale one by age, then the oldest of the four fresh ones by count.
    assert server.services.flows.prune(fence.checker(newest)) == 2
    assert sorted(f["destination_port"] for f in query(server)["flows"]) == [2, 3, 4]
    assert server.services.flows.prune() == 0


def test_overlay_and_draft_impact(server: Server, nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    # API reaches DB (allowed by api-to-db); WEB's attempts at DB are denied by default.
    assert a.send(batch(flow(API, DB))).status_code == 200
    denied = flow(WEB, DB, source_address="10.213.0.3", verdict="denied")
    assert b.send(batch(denied)).status_code == 200
    graph = server.services.ui_views.graph()
    edges = {
        (e.source, e.destination): e
        for e in overlay(graph.edges, server.services.flows.traffic(timedelta(hours=1)))
    }
    assert edges[(API, DB)].usage == "seen"
    assert edges[(API, DB)].decided_by == "allow rule api-to-db"
    assert edges[(WEB, API)].usage == "unused"
    assert edges[(WEB, DB)].usage == "denied"
    assert edges[(WEB, DB)].decided_by == "default deny (no allow rule)"
    # A draft without api-to-db breaks the flow API -> DB; the active policy breaks none.
    active = server.client.get(
        f"/v1/admin/policy/bundles/{server.services.policy.revision}", headers=server.auth
    ).json()
    data = copy.deepcopy(active["data"])
    data["mesh"]["allow"] = [r for r in data["mesh"]["allow"] if r["name"] != "api-to-db"]
    response = server.client.post(
        "/v1/admin/policy/bundles",
        json={"modules": active["modules"], "data": data, "activate": False},
        headers=server.auth,
    )
    assert response.status_code == 201, response.text
    draft = response.json()["revision"]
    broken = server.services.flows.impact(draft)
    assert [(f.source, f.destination, f.destination_port) for f in broken] == [(API, DB, 5432)]
    assert server.services.flows.impact(server.services.policy.revision or 0) == []
    assert json.dumps([f.id for f in broken])


def test_the_ui_overlays_traffic_and_a_draft_is_stored_inactive(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(ui_cookie_secure=False)
    for role in (Role.VIEWER, Role.ADMIN):
        server.services.ui.create_user(ADMIN, role.value, PASSWORD, role, totp=False)
    a, b = Node(server), Node(server)
    assert entry(server, API, a.id, "unix:uid:1001").status_code == 201
    assert entry(server, DB, b.id, "unix:uid:1003").status_code == 201
    assert a.send(batch(flow(API, DB))).json()["accepted"] == 1
    active = server.services.policy.revision

    sign_in(server.client, "viewer")
    page = server.client.get("/ui/graph", params={"window": "24h"})
    assert page.status_code == 200 and "Edges from traffic" in page.text
    assert "allow rule api-to-db" in page.text
    assert server.client.get("/ui/graph", params={"window": "2h"}).status_code == 422
    listed = server.client.get("/ui/flows", params={"source": API, "destination": DB})
    assert listed.status_code == 200 and 'class="flow allowed"' in listed.text
    assert "allow rule api-to-db" in listed.text
    source = server.client.get("/ui/policies/edit", params={"module": "data.json"}).text
    textarea = re.search(r"<textarea[^>]*>(.*?)</textarea>", source, re.S)
    assert textarea is not None
    data_json = json.loads(html.unescape(textarea[1]))
    data_json["mesh"]["allow"] = [r for r in data_json["mesh"]["allow"] if r["name"] != "api-to-db"]
    form = {"module": "data.json", "source": json.dumps(data_json), "note": "drop api-to-db"}
    # A viewer may look, not store.
    csrf = sign_in(server.client, "viewer")
    refused = server.client.post("/ui/policies/draft", data={**form, "csrf": csrf})
    assert refused.status_code == 403
    assert [r.revision for r in server.services.policy.list_revisions()] == [active]

    csrf = sign_in(server.client, "admin")
    stored = server.client.post(
        "/ui/policies/draft", data={**form, "csrf": csrf}, follow_redirects=False
    )
    assert stored.status_code == 303
    draft = max(r.revision for r in server.services.policy.list_revisions())
    assert stored.headers["location"] == f"/ui/flows/impact?revision={draft}"
    assert server.services.policy.revision == active  # stored, not activated
    impact = server.client.get(stored.headers["location"])
    assert impact.status_code == 200
    assert impact.text.count('class="flow broken"') == 1 and API in impact.text
    assert server.client.get("/ui/flows/impact", params={"revision": 999}).status_code == 404
