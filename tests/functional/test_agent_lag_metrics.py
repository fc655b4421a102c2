"""The agent-lag gauges the alerting rules read (deploy/prometheus/trustd-rules.yml), as a
scrape of /metrics reports them after a real agent sync, acknowledgement and policy change
on both backends."""

from __future__ import annotations

import re
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from tests.functional.conftest import Server
from tests.functional.test_nodes_entries import attest, entry, join_token, node_headers
from tests.functional.test_verdicts import API, DB, WEB, set_mesh, sync


def scrape(server: Server) -> dict[str, float]:
    response = server.client.get("/metrics")
    assert response.status_code == 200
    wanted = re.compile(r"^trustd_(verdict_revision|agents_behind.*)$")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if wanted.match(sample.name)
    }


def test_a_scrape_reports_agents_behind_and_how_old_their_verdicts_are(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    parent = str(node.spiffe_id)
    entry(server, API, parent, "unix:uid:1001", ip_addresses=["10.213.0.2"])
    entry(server, DB, parent, "unix:uid:1002", ip_addresses=["10.213.0.3"])
    headers = node_headers(server, node)
    first = sync(server, headers, verdict_since=0)["verdicts"]
    ack = server.client.post(
        "/v1/agents/ack",
        json={"revision": 1, "verdict_revision": first["revision"]},
        headers=headers,
    )
    assert ack.status_code == 204
    current = scrape(server)
    assert current["trustd_verdict_revision"] == first["revision"]
    assert current["trustd_agents_behind"] == 0

    # A policy change compiles a newer revision the agent has not applied.
    mesh = dict(server.services.policy.active.bundle.data["mesh"])
    mesh["allow"] = [*mesh["allow"], {"name": "web-db", "source": WEB, "destination": DB}]
    set_mesh(server, mesh)
    second = sync(server, headers, verdict_since=first["revision"])["verdicts"]
    behind = scrape(server)
    assert behind["trustd_verdict_revision"] == second["revision"] > first["revision"]
    assert behind["trustd_agents_behind"] == 1
    applied_at = server.client.get("/v1/verdicts/agents", headers=server.auth).json()[0][
        "applied_at"
    ]
    oldest = behind["trustd_agents_behind_oldest_applied_timestamp_seconds"]
    assert oldest == datetime.fromisoformat(applied_at).timestamp()
