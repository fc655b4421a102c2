"""Verdicts over the agent sync channel, on both backends: numeric identities, the IP
cache, L4 verdicts compiled from the mesh policy, deltas after the first full state, and
the per-agent applied revision."""

from __future__ import annotations

import copy
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlmodel import Session

from pki.clock import SystemClock
from policy.bundle import Bundle
from tests.functional.conftest import Server
from tests.functional.test_nodes_entries import (
    answer_after_change,
    attest,
    entry,
    join_token,
    node_headers,
)
from trustd.roles import Role
from trustd.services.auth import Principal
from trustd.services.verdicts import FIRST_IDENTITY, Verdicts
from trustd.store.db import transaction
from trustd.store.verdicts import NumericIdentity, Sources, fetch_sources

WEB = "spiffe://example.org/ns/web/frontend"
API = "spiffe://example.org/ns/api/orders"
DB = "spiffe://example.org/ns/db/postgres"
BAD = "spiffe://example.org/ns/quarantine/x"
ADMIN = Principal("test", Role.ADMIN)


def sync(server: Server, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = server.client.get("/v1/agents/sync", params={"wait": 0, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def policy_set(delta: dict[str, Any]) -> list[tuple[int, int, int, int, bool]]:
    """A delta's policy verdicts as (dst, src, port, proto, allow), in the order sent."""
    return [tuple(v) for v in delta["changes"]["policy"]["set"]]  # type: ignore[misc]


def set_mesh(server: Server, mesh: dict[str, Any]) -> None:
    active = server.services.policy.active.bundle
    data = copy.deepcopy(active.data)
    data["mesh"] = mesh
    server.services.policy.create_revision(ADMIN, Bundle(active.modules, data), activate=True)


def test_full_state_then_deltas_and_lag(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    parent = str(node.spiffe_id)
    # api is dual-stack: both its addresses get its one identity.
    entry(server, API, parent, "unix:uid:1001", ip_addresses=["10.213.0.2", "fd00:213::2"])
    entry(server, DB, parent, "unix:uid:1002", ip_addresses=["10.213.0.3/32"])
    entry(server, WEB, "spiffe://example.org/elsewhere", "unix:uid:7", ip_addresses=["10.213.0.1"])
    entry(server, BAD, "spiffe://example.org/elsewhere", "unix:uid:8", ip_addresses=["10.213.0.9"])
    headers = node_headers(server, node)

    # Agents that do not enforce get no verdicts at all.
    assert sync(server, headers)["verdicts"] is None

    first = sync(server, headers, verdict_since=0)["verdicts"]
    assert first["base"] == 0
    changes = first["changes"]
    ids = changes["identities"]["set"]
    assert set(ids) == {WEB, API, DB, BAD}
    assert all(n >= 256 for n in ids.values())
    assert changes["ipcache"]["set"] == {
        "10.213.0.1/32": ids[WEB],
        "10.213.0.2/32": ids[API],
        "fd00:213::2/128": ids[API],
        "10.213.0.3/32": ids[DB],
        "10.213.0.9/32": ids[BAD],
    }
    # Only destinations on this node (api, db): web -> api:8443 (an HTTP rule opens its
    # port at L4, the proxy judges methods and paths) and api -> db:5432. Nothing from
    # quarantine, nothing to web (not local).
    assert policy_set(first) == sorted(
        [(ids[API], ids[WEB], 8443, 6, True), (ids[DB], ids[API], 5432, 6, True)]
    )
    assert changes["revoked"]["set"] == []
    assert first["l7"]["modules"] and "allow" in first["l7"]["data"]["mesh"]

    # Nothing changed: the long-poll says so.
    idle = sync(server, headers, since=10**6, revoked_since=10**6, verdict_since=first["revision"])
    assert idle["changed"] is False

    # The agent acknowledges; trustd reports it applied the newest revision.
    ack = server.client.post(
        "/v1/agents/ack",
        json={"revision": 1, "verdict_revision": first["revision"]},
        headers=headers,
    )
    assert ack.status_code == 204
    lag = server.client.get("/v1/verdicts/agents", headers=server.auth).json()
    assert lag == [
        {
            "node_id": parent,
            "revision": first["revision"],
            "applied_revision": first["revision"],
            "lag": 0,
            "applied_at": lag[0]["applied_at"],
        }
    ]

    # A policy change: web may reach db on any port, except 22 which a deny rule names.
    mesh = copy.deepcopy(server.services.policy.active.bundle.data["mesh"])
    mesh["allow"].append({"name": "web-db", "source": WEB, "destination": DB})
    mesh["deny"].append({"name": "no-ssh", "ports": [22], "protocols": ["tcp"]})
    set_mesh(server, mesh)
    second = sync(server, headers, verdict_since=first["revision"])["verdicts"]
    assert second["base"] == first["revision"]
    assert policy_set(second) == [
        (ids[DB], ids[WEB], 0, 6, True),
        (ids[DB], ids[WEB], 0, 17, True),
        (ids[DB], ids[WEB], 22, 6, False),
    ]
    assert second["changes"]["policy"]["remove"] == []
    assert second["l7"] is not None
    lag = server.client.get("/v1/verdicts/agents", headers=server.auth).json()
    assert lag[0]["lag"] == second["revision"] - first["revision"]

    # An agent too far behind (or with a revision trustd never made) gets the full state.
    far = sync(server, headers, verdict_since=first["revision"] + 100)
    assert far["verdicts"] is None or far["verdicts"]["base"] == 0
    again = sync(server, headers, verdict_since=0)["verdicts"]
    assert again["base"] == 0 and again["revision"] == second["revision"]

    # Numbers are stable: the same SPIFFE IDs keep them across recompilations.
    assert again["changes"]["identities"]["set"] == ids


def test_bad_ip_addresses_are_refused(server: Server) -> None:
    # Host bits set; not an address; IPv6 link-local (reused on every link) and
    # IPv4-mapped (never on the wire).
    for bad in (["10.0.0.1/8"], ["not-an-ip"], ["fd00::1/64"], ["fe80::1"], ["::ffff:10.0.0.1"]):
        response = server.client.post(
            "/v1/entries",
            json={
                "spiffe_id": API,
                "parent_id": "spiffe://example.org/n",
                "selectors": ["unix:uid:1"],
                "ip_addresses": bad,
            },
            headers=server.auth,
        )
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert server.client.get("/v1/entries", headers=server.auth).json()["total"] == 0


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_replica_numbering_the_same_identity_first_wins(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    entry(server, API, str(node.spiffe_id), "unix:uid:1001", ip_addresses=["10.213.0.2"])
    headers = node_headers(server, node)
    # Another replica numbers API at the same moment: its row is written, not yet committed,
    # when this one compiles, so this one's insert waits for it and then conflicts.
    other = Session(server.services.engine)
    other.add(NumericIdentity(id=FIRST_IDENTITY, spiffe_id=API, created_at=datetime.now(UTC)))
    other.flush()
    answered: list[dict[str, Any]] = []
    compiling = threading.Thread(
        target=lambda: answered.append(sync(server, headers, verdict_since=0))
    )
    compiling.start()
    try:
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        deadline = time.monotonic() + 10
        while True:
            # A new transaction each time: the activity view is a snapshot per transaction.
            with server.services.engine.connect() as probe:
                if probe.execute(waiting).scalar_one():
                    break
            assert time.monotonic() < deadline, "the compiling request never waited"
            time.sleep(0.02)
        other.commit()
    finally:
        other.close()
        compiling.join(10)
    # The loser compiled again from what the winner committed: one number, no error.
    verdicts = answered[0]["verdicts"]
    assert verdicts["base"] == 0
    assert verdicts["changes"]["identities"]["set"] == {API: FIRST_IDENTITY}
    assert verdicts["changes"]["ipcache"]["set"] == {"10.213.0.2/32": FIRST_IDENTITY}


def test_one_compilation_serves_every_node(server: Server) -> None:
    nodes = [attest(server, join_token(server)["token"])[0] for _ in range(2)]
    entry(server, API, str(nodes[0].spiffe_id), "unix:uid:1001", ip_addresses=["10.213.0.2"])
    entry(server, DB, str(nodes[1].spiffe_id), "unix:uid:1002", ip_addresses=["10.213.0.3"])
    entry(server, WEB, "spiffe://example.org/elsewhere", "unix:uid:7", ip_addresses=["10.213.0.1"])
    headers = [node_headers(server, n) for n in nodes]
    # The shared part reads every quarantine; nothing else on the sync path does.
    compilations: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # (The sync path reads whole quarantines, once per sync revision: not this.)
        if "FROM identity_quarantines" in statement and ".reason" not in statement:
            compilations.append(statement)

    event.listen(server.services.engine, "before_cursor_execute", count)
    try:
        first = [sync(server, h, verdict_since=0)["verdicts"] for h in headers]
        assert len(compilations) == 1
        # Each node gets the shared sections and only its own destinations' verdicts.
        ids = first[0]["changes"]["identities"]["set"]
        assert first[1]["changes"]["identities"]["set"] == ids
        assert first[0]["changes"]["ipcache"] == first[1]["changes"]["ipcache"]
        assert policy_set(first[0]) == [(ids[API], ids[WEB], 8443, 6, True)]
        assert policy_set(first[1]) == [(ids[DB], ids[API], 5432, 6, True)]

        # A policy change: compiled once more, and each node gets its own delta.
        mesh = copy.deepcopy(server.services.policy.active.bundle.data["mesh"])
        mesh["allow"].append({"name": "web-db", "source": WEB, "destination": DB, "ports": [1]})
        set_mesh(server, mesh)
        second = [
            sync(server, h, verdict_since=f["revision"])["verdicts"]
            for h, f in zip(headers, first, strict=True)
        ]
        assert len(compilations) == 2
        assert second[0]["base"] == first[0]["revision"]
        assert second[0]["changes"]["policy"] == {"set": [], "remove": []}
        assert policy_set(second[1]) == [
            (ids[DB], ids[WEB], 1, 6, True),
            (ids[DB], ids[WEB], 1, 17, True),
        ]
    finally:
        event.remove(server.services.engine, "before_cursor_execute", count)


def test_a_parked_long_poll_wakes_with_the_policy_change(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    entry(server, API, str(node.spiffe_id), "unix:uid:1001", ip_addresses=["10.213.0.2"])
    entry(server, WEB, "spiffe://example.org/elsewhere", "unix:uid:7", ip_addresses=["10.213.0.1"])
    headers = node_headers(server, node)
    held = sync(server, headers, verdict_since=0)
    ids = held["verdicts"]["changes"]["identities"]["set"]
    mesh = copy.deepcopy(server.services.policy.active.bundle.data["mesh"])
    mesh["allow"].append({"name": "web-api-9", "source": WEB, "destination": API, "ports": [9]})
    body = answer_after_change(
        server,
        headers,
        lambda: set_mesh(server, mesh),
        since=held["revision"],
        revoked_since=held["revocation_revision"],
        verdict_since=held["verdicts"]["revision"],
        wait=20,
    )
    assert body["changed"] is True and body["revision"] == held["revision"]
    delta = body["verdicts"]
    assert delta["base"] == held["verdicts"]["revision"]
    assert policy_set(delta) == [
        (ids[API], ids[WEB], 9, 6, True),
        (ids[API], ids[WEB], 9, 17, True),
    ]
    assert delta["l7"]["revision"] == server.services.policy.active.revision
    assert server.services.agents.parked == 0


def test_a_data_write_changes_the_agents_verdicts(server: Server) -> None:
    # The mesh rules are data (`data.mesh.allow`): a Data API write is a policy change.
    node, _ = attest(server, join_token(server)["token"])
    entry(server, API, str(node.spiffe_id), "unix:uid:1001", ip_addresses=["10.213.0.2"])
    entry(server, WEB, "spiffe://example.org/elsewhere", "unix:uid:7", ip_addresses=["10.213.0.1"])
    headers = node_headers(server, node)
    held = sync(server, headers, verdict_since=0)
    ids = held["verdicts"]["changes"]["identities"]["set"]
    rule = {"name": "web-api-7", "source": WEB, "destination": API, "ports": [7]}

    def write() -> None:
        response = server.client.patch(
            "/v1/data/mesh/allow",
            json=[{"op": "add", "path": "/-", "value": rule}],
            headers=server.auth,
        )
        assert response.status_code == 204, response.text

    body = answer_after_change(
        server,
        headers,
        write,
        since=held["revision"],
        revoked_since=held["revocation_revision"],
        verdict_since=held["verdicts"]["revision"],
        wait=20,
    )
    delta = body["verdicts"]
    assert delta["base"] == held["verdicts"]["revision"]
    assert policy_set(delta) == [
        (ids[API], ids[WEB], 7, 6, True),
        (ids[API], ids[WEB], 7, 17, True),
    ]
    assert delta["l7"]["data"]["mesh"]["allow"][-1] == rule
    # Deleting the rules takes every allow away again.
    assert server.client.delete("/v1/data/mesh/allow", headers=server.auth).status_code == 204
    after = sync(server, headers, verdict_since=delta["revision"])["verdicts"]
    assert after["base"] == delta["revision"] and policy_set(after) == []
    assert after["changes"]["policy"]["remove"] == [
        [ids[API], ids[WEB], 7, 6],
        [ids[API], ids[WEB], 7, 17],
        [ids[API], ids[WEB], 8443, 6],
    ]


def test_the_next_long_poll_is_the_acknowledgement(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    entry(server, API, str(node.spiffe_id), "unix:uid:1001", ip_addresses=["10.213.0.2"])
    headers = node_headers(server, node)

    def lag() -> dict[str, Any]:
        rows = server.client.get("/v1/verdicts/agents", headers=server.auth).json()
        return dict(next(r for r in rows if r["node_id"] == str(node.spiffe_id)))

    assert lag()["revision"] == 0  # never enforced: nothing to lag behind
    full = sync(server, headers, verdict_since=0)
    assert lag()["applied_revision"] == 0 and lag()["lag"] == full["verdicts"]["revision"]
    # No acknowledgement call: the agent's next long-poll names what it applied.
    idle = sync(
        server,
        headers,
        since=full["revision"],
        revoked_since=full["revocation_revision"],
        verdict_since=full["verdicts"]["revision"],
    )
    assert idle["changed"] is False
    assert lag()["applied_revision"] == full["verdicts"]["revision"] and lag()["lag"] == 0
    (listed,) = server.client.get(
        "/v1/nodes", params={"spiffe_id": str(node.spiffe_id)}, headers=server.auth
    ).json()
    assert listed["applied_revision"] == full["revision"]
    # A revision trustd never made is not recorded as applied.
    sync(server, headers, since=full["revision"], verdict_since=full["verdicts"]["revision"] + 50)
    assert lag()["applied_revision"] == full["verdicts"]["revision"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_replicas_compile_each_change_once(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    entry(server, API, str(node.spiffe_id), "unix:uid:1001", ip_addresses=["10.213.0.2"])
    entry(server, WEB, "spiffe://example.org/elsewhere", "unix:uid:7", ip_addresses=["10.213.0.1"])
    here = server.services.verdicts
    # Another replica: its own compiler and memory, the same database.
    there = Verdicts(server.services.engine, SystemClock(), server.services.policy)

    def sources() -> Sources:
        with transaction(server.services.engine) as session:
            return fetch_sources(session)

    first = here.delta_for(str(node.spiffe_id), [API], sources(), 0)
    assert first is not None and here.compilations == 1
    # The other replica reads what this one stored.
    same = there.delta_for(str(node.spiffe_id), [API], sources(), 0)
    assert same == first and there.compilations == 0

    # A change, asked for on both replicas at once: one compiles, the other waits for it
    # and reads the result.
    mesh = copy.deepcopy(server.services.policy.active.bundle.data["mesh"])
    mesh["allow"].append({"name": "web-api-9", "source": WEB, "destination": API, "ports": [9]})
    set_mesh(server, mesh)
    now = sources()
    answers: dict[str, Any] = {}
    threads = [
        threading.Thread(
            target=lambda name=name, v=v: answers.__setitem__(
                name, v.delta_for(str(node.spiffe_id), [API], now, first.revision)
            )
        )
        for name, v in (("here", here), ("there", there))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert here.compilations + there.compilations == 2
    assert answers["here"] == answers["there"]
    delta = answers["here"]
    assert delta.base == first.revision and delta.revision == first.revision + 1
    ids = first.changes.identities.set
    assert [tuple(v) for v in delta.changes.policy.set] == [
        (ids[API], ids[WEB], 9, 6, True),
        (ids[API], ids[WEB], 9, 17, True),
    ]


def test_the_established_setting_travels_with_the_verdicts(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    entry(server, API, str(node.spiffe_id), "unix:uid:1001", ip_addresses=["10.213.0.2"])
    headers = node_headers(server, node)
    first = sync(server, headers, verdict_since=0)["verdicts"]
    # A full state says it: by default a deny spares established connections.
    assert first["cut_established"] is False
    mesh = copy.deepcopy(server.services.policy.active.bundle.data["mesh"])
    set_mesh(server, {**mesh, "established": "cut"})
    delta = sync(server, headers, verdict_since=first["revision"])["verdicts"]
    assert delta["base"] == first["revision"] and delta["cut_established"] is True
    # A change that leaves it alone does not repeat it.
    set_mesh(server, {**mesh, "established": "cut", "allow": []})
    later = sync(server, headers, verdict_since=delta["revision"])["verdicts"]
    assert later["base"] == delta["revision"] and later["cut_established"] is None
