"""Quarantine through HTTP, on SQLite and PostgreSQL: quarantining and releasing an identity,
what the agents get on the sync channel (the quarantine, the denied identity in the
verdicts, no SVID), revoking a certificate without and with a quarantine, expiry, and
refusals that change nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session, func, select

from pki.ca import load_pem_certificates, serial_hex
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.functional.conftest import Server
from tests.functional.test_nodes_entries import attest, entry, join_token, node_headers
from tests.functional.test_revocation_api import _problem
from trustd.leader import LostLeadership
from trustd.roles import Role
from trustd.store.audit import AuditEvent
from trustd.store.quarantines import IdentityQuarantine
from trustd.store.sync import fetch_revision

X = "spiffe://example.org/ns/quarantine/x"
WEB = "spiffe://example.org/ns/web/frontend"


def _state(server: Server) -> tuple[int, int, int]:
    """Quarantine rows, audit rows, sync revision: what a refused request must leave."""
    with Session(server.services.engine) as session:
        rows = session.exec(select(func.count()).select_from(IdentityQuarantine)).one()
        audits = session.exec(select(func.count()).select_from(AuditEvent)).one()
        return rows, audits, fetch_revision(session)


def _audits(server: Server, action: str) -> list[AuditEvent]:
    with Session(server.services.engine) as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.action == action)))


class Node:
    def __init__(self, server: Server) -> None:
        identity, _ = attest(server, join_token(server)["token"])
        self.server = server
        self.spiffe_id = str(identity.spiffe_id)
        self.headers = node_headers(server, identity)

    def sync(self, **params: Any) -> dict[str, Any]:
        response = self.server.client.get(
            "/v1/agents/sync", params={"wait": 0, "since": 0, **params}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def sign(self, entry_id: str) -> dict[str, Any]:
        csr = create_csr(generate_private_key(KeyType.EC_P256))
        response = self.server.client.post(
            "/v1/agents/svids",
            json={"csrs": [{"entry_id": entry_id, "csr": csr}]},
            headers=self.headers,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())


def _denied(node: Node) -> tuple[set[int], dict[str, int]]:
    """The identity numbers the node's verdicts deny whatever the policy, and the numbers;
    the node then says it applied them (its next long-poll's cursor)."""
    verdicts = node.sync(verdict_since=0)["verdicts"]
    node.sync(verdict_since=verdicts["revision"])
    changes = verdicts["changes"]
    return set(changes["revoked"]["set"]), changes["identities"]["set"]


def test_quarantine_reaches_agents_and_release_undoes_it(server: Server) -> None:
    node = Node(server)
    for spiffe_id, uid in ((X, 1001), (WEB, 1002)):
        created = entry(server, spiffe_id, node.spiffe_id, f"unix:uid:{uid}")
        assert created.status_code == 201, created.text
    entries = {e["spiffe_id"]: e["id"] for e in node.sync()["entries"]}
    assert node.sign(entries[X])["svids"]
    assert _denied(node)[0] == set()

    until = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    made = server.client.post(
        "/v1/admin/identities/quarantine",
        json={"spiffe_id": X, "reason": "lateral movement seen", "until": until.isoformat()},
        headers=server.auth,
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert (body["spiffe_id"], body["reason"]) == (X, "lateral movement seen")
    assert datetime.fromisoformat(body["until"]) == until
    assert body["quarantined_by"].startswith("token:")

    # Listed with who, why and until when.
    listed = server.client.get("/v1/admin/identities/quarantined", headers=server.auth).json()
    assert [q["spiffe_id"] for q in listed] == [X]

    # Agents get it on the sync channel, with the reason; the kernel section denies X only.
    answer = node.sync()
    assert answer["quarantines"] == [
        {"spiffe_id": X, "reason": "lateral movement seen", "until": body["until"]}
    ]
    denied, numbers = _denied(node)
    assert denied == {numbers[X]}
    # No SVID is minted for X, whichever node asks; WEB is served as before.
    refused = node.sign(entries[X])
    assert refused["svids"] == []
    assert "quarantined" in refused["refused"][0]["detail"]
    assert "lateral movement seen" in refused["refused"][0]["detail"]
    assert node.sign(entries[WEB])["svids"]
    jwt = server.client.post(
        "/v1/agents/jwt",
        json={"entry_id": entries[X], "audience": ["a"]},
        headers=node.headers,
    )
    assert "quarantined" in _problem(jwt, 403)["detail"]

    # The identity's page: its SVIDs, the quarantine, and the node that applied it.
    shown = server.client.get(
        "/v1/admin/identities", params={"spiffe_id": X}, headers=server.auth
    ).json()
    assert shown["entries"] == 1 and len(shown["svids"]) == 1 and shown["revoked"] == []
    assert shown["quarantine"]["reason"] == "lateral movement seen"
    assert shown["quarantine"]["verdict_revision"] is not None
    assert shown["applied_by"] == [node.spiffe_id]

    [audit] = _audits(server, "identity:quarantine:created")
    assert audit.target == X and audit.details["reason"] == "lateral movement seen"

    released = server.client.post(
        "/v1/admin/identities/release", json={"spiffe_id": X}, headers=server.auth
    )
    assert released.status_code == 200, released.text
    assert released.json()["quarantine"]["spiffe_id"] == X
    assert node.sync()["quarantines"] == []
    assert _denied(node)[0] == set()
    assert node.sign(entries[X])["svids"]
    assert server.client.get("/v1/admin/identities/quarantined", headers=server.auth).json() == []
    assert [a.target for a in _audits(server, "identity:quarantine:released")] == [X]


def test_refusals_are_problems_and_change_nothing(server: Server) -> None:
    made = server.client.post(
        "/v1/admin/identities/quarantine",
        json={"spiffe_id": X, "reason": "incident 42"},
        headers=server.auth,
    )
    assert made.status_code == 201, made.text
    before = _state(server)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    for body, status in (
        ({"spiffe_id": X, "reason": "again"}, 409),
        ({"spiffe_id": WEB, "reason": "late", "until": past}, 400),
        ({"spiffe_id": WEB, "reason": "   "}, 400),
        ({"spiffe_id": "not-a-spiffe-id", "reason": "x"}, 400),
        ({"spiffe_id": "spiffe://example.org/trustd/server", "reason": "x"}, 400),
        ({"spiffe_id": WEB, "reason": ""}, 422),
        ({"spiffe_id": WEB}, 422),
    ):
        response = server.client.post(
            "/v1/admin/identities/quarantine", json=body, headers=server.auth
        )
        _problem(response, status)
    released = server.client.post(
        "/v1/admin/identities/release", json={"spiffe_id": WEB}, headers=server.auth
    )
    _problem(released, 404)
    assert _state(server) == before

    # A viewer reads quarantines but may not make them; an operator may.
    for role, status in ((Role.VIEWER, 403), (Role.OPERATOR, 201)):
        created = server.client.post(
            "/v1/admin/tokens", json={"name": role.value, "role": role.value}, headers=server.auth
        ).json()
        headers = {"Authorization": f"Bearer {created['token']}"}
        assert server.client.get("/v1/admin/identities/quarantined", headers=headers).is_success
        response = server.client.post(
            "/v1/admin/identities/quarantine",
            json={"spiffe_id": f"{WEB}/{role.value}", "reason": "drill"},
            headers=headers,
        )
        assert response.status_code == status, response.text


def test_revoking_a_certificate_quarantines_only_for_key_compromise(server: Server) -> None:
    node = Node(server)
    entry(server, X, node.spiffe_id, "unix:uid:1001")
    [x_entry] = node.sync()["entries"]

    def revoke(**body: Any) -> dict[str, Any]:
        pem = node.sign(x_entry["id"])["svids"][0]["certificate"]
        serial = serial_hex(load_pem_certificates(pem.encode())[0])
        response = server.client.post(
            "/v1/admin/certificates/revoke", json={"serial": serial, **body}, headers=server.auth
        )
        assert response.status_code == 200, response.text
        return {"serial": serial, **response.json()}

    # Superseded: the certificate is revoked, the identity goes on (its agent gets a new
    # SVID, and the kernel does not deny it).
    first = revoke(reason="superseded")
    assert first["quarantined"] is None
    assert _denied(node)[0] == set()
    # keyCompromise without a quarantine, when asked.
    second = revoke(reason="keyCompromise", quarantine=False)
    assert second["quarantined"] is None
    assert _denied(node)[0] == set()
    # keyCompromise quarantines by default, and the answer says so.
    third = revoke(reason="keyCompromise")
    assert third["quarantined"]["spiffe_id"] == X
    assert third["serial"] in third["quarantined"]["reason"]
    denied, numbers = _denied(node)
    assert denied == {numbers[X]}
    shown = server.client.get(
        "/v1/admin/identities", params={"spiffe_id": X}, headers=server.auth
    ).json()
    revoked = {c["serial"] for c in shown["revoked"]}
    assert revoked == {first["serial"], second["serial"], third["serial"]}
    assert shown["svids"] == []

    # A revocation refused (already revoked) makes no quarantine either.
    server.client.post("/v1/admin/identities/release", json={"spiffe_id": X}, headers=server.auth)
    before = _state(server)
    again = server.client.post(
        "/v1/admin/certificates/revoke",
        json={"serial": third["serial"], "reason": "keyCompromise"},
        headers=server.auth,
    )
    _problem(again, 409)
    assert _state(server) == before


def test_until_is_honoured_by_the_periodic_duty(server: Server) -> None:
    node = Node(server)
    entry(server, X, node.spiffe_id, "unix:uid:1001")
    until = datetime.now(UTC) + timedelta(seconds=1)
    made = server.client.post(
        "/v1/admin/identities/quarantine",
        json={"spiffe_id": X, "reason": "cool-off", "until": until.isoformat()},
        headers=server.auth,
    )
    assert made.status_code == 201, made.text
    assert server.services.quarantines.expire() == 0
    assert _denied(node)[0]
    revision = _state(server)[2]
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.05)
    # Past `until` it is no longer in force, even before the duty removes it.
    assert server.client.get("/v1/admin/identities/quarantined", headers=server.auth).json() == []
    assert server.services.quarantines.expire() == 1
    # The release advanced the sync revision: agents are told, the verdicts follow.
    assert _state(server)[2] == revision + 1
    assert node.sync()["quarantines"] == []
    assert _denied(node)[0] == set()
    [expired] = _audits(server, "identity:quarantine:expired")
    assert expired.target == X and expired.actor == "trustd"


def test_a_stale_leaders_expiry_changes_nothing(server: Server) -> None:
    node = Node(server)
    entry(server, X, node.spiffe_id, "unix:uid:1001")
    until = datetime.now(UTC) + timedelta(seconds=2)
    made = server.client.post(
        "/v1/admin/identities/quarantine",
        json={"spiffe_id": X, "reason": "cool-off", "until": until.isoformat()},
        headers=server.auth,
    )
    assert made.status_code == 201, made.text
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.05)
    fence = server.services.rotation.leader.fence
    stale, newest = fence.claim(), fence.claim()
    before = _state(server)
    # A leader that stalled past its lease while a successor took over: its duty rolls back.
    with pytest.raises(LostLeadership):
        server.services.quarantines.expire(fence.checker(stale))
    assert _state(server) == before
    assert _audits(server, "identity:quarantine:expired") == []
    assert server.services.quarantines.expire(fence.checker(newest)) == 1
    assert len(_audits(server, "identity:quarantine:expired")) == 1


def test_a_nodes_scope_is_set_shown_and_sent_to_its_agent(server: Server) -> None:
    node = Node(server)
    shown = server.client.get(
        "/v1/nodes", params={"spiffe_id": node.spiffe_id}, headers=server.auth
    ).json()[0]
    # The default: unmanaged destinations are not judged.
    assert (shown["unmanaged"], shown["always_allowed"]) == ("allow", [])
    assert node.sync()["scope"] == {"unmanaged": "allow", "always_allowed": []}

    response = server.client.post(
        "/v1/nodes/scope",
        json={
            "spiffe_id": node.spiffe_id,
            "unmanaged": "deny",
            "always_allowed": ["2001:db8::53", "10.0.0.53", "192.0.2.0/24"],
        },
        headers=server.auth,
    )
    assert response.status_code == 200, response.text
    assert response.json()["always_allowed"] == ["10.0.0.53/32", "192.0.2.0/24", "2001:db8::53/128"]
    assert node.sync()["scope"] == {
        "unmanaged": "deny",
        "always_allowed": ["10.0.0.53/32", "192.0.2.0/24", "2001:db8::53/128"],
    }
    [audit] = _audits(server, "node:scope:updated")
    assert audit.target == node.spiffe_id and audit.details["unmanaged"] == "deny"

    before = _state(server)
    for body, status in (
        ({"spiffe_id": node.spiffe_id, "always_allowed": ["10.0.0.1/8"]}, 400),
        ({"spiffe_id": node.spiffe_id, "always_allowed": ["2001:db8::1/32"]}, 400),
        ({"spiffe_id": node.spiffe_id, "unmanaged": "maybe"}, 422),
        ({"spiffe_id": "spiffe://example.org/nowhere"}, 404),
    ):
        _problem(server.client.post("/v1/nodes/scope", json=body, headers=server.auth), status)
    assert _state(server) == before
    assert node.sync()["scope"]["unmanaged"] == "deny"
