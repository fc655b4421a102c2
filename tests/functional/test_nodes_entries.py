"""Node attestation, registration entries and the agent channel over HTTP, on both backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import Session, func, select

from pki.bundle import TrustBundle
from pki.ca import load_pem_certificates
from pki.clock import SystemClock
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import verify_x509_svid
from tests.functional.conftest import Server
from trustd.agent.client import NodeIdentity, ServerClient
from trustd.store.audit import AuditEvent
from trustd.store.certificates import IssuedCertificate
from trustd.store.entries import RegistrationEntry
from trustd.store.nodes import Node

TD = TrustDomain.parse("example.org")


def _count(server: Server, model: Any, *where: Any) -> int:
    with Session(server.services.engine) as session:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())


def join_token(server: Server, *selectors: str) -> dict[str, Any]:
    response = server.client.post(
        "/v1/join-tokens", json={"selectors": list(selectors)}, headers=server.auth
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def attest(server: Server, token: str) -> tuple[NodeIdentity, dict[str, Any]]:
    key = generate_private_key(KeyType.EC_P256)
    response = server.client.post(
        "/v1/attest",
        json={"attestor": "join_token", "evidence": {"token": token}, "csr": create_csr(key)},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    chain = tuple(
        load_pem_certificates(
            (body["svid"]["certificate"] + "".join(body["svid"]["intermediates"])).encode()
        )
    )
    return NodeIdentity(SpiffeId.parse(body["spiffe_id"]), chain, key), body


def node_headers(server: Server, identity: NodeIdentity) -> dict[str, str]:
    bundle = TrustBundle.from_jwks(server.client.get("/v1/bundle").json(), TD)
    credential = ServerClient("https://unused", bundle, SystemClock()).credential(identity)
    return {"Authorization": f"Bearer {credential}"}


def entry(server: Server, spiffe_id: str, parent_id: str, *selectors: str, **extra: Any) -> Any:
    return server.client.post(
        "/v1/entries",
        json={
            "spiffe_id": spiffe_id,
            "parent_id": parent_id,
            "selectors": list(selectors),
            **extra,
        },
        headers=server.auth,
    )


def test_join_token_attestation_issues_a_node_svid_once(server: Server) -> None:
    token = join_token(server, "region:eu")
    identity, body = attest(server, token["token"])
    assert str(identity.spiffe_id) == token["spiffe_id"]
    assert token["spiffe_id"] == f"spiffe://example.org/trustd/agent/join_token/{token['id']}"
    roots = TrustBundle.from_jwks(body["bundle"], TD).x509_authorities
    assert verify_x509_svid(identity.chain[0], identity.chain[1:], roots, TD, SystemClock())
    nodes = server.client.get("/v1/nodes", headers=server.auth).json()
    assert [n["spiffe_id"] for n in nodes] == [token["spiffe_id"]]
    assert set(nodes[0]["selectors"]) == {f"join_token:id:{token['id']}", "region:eu"}

    # The token is single-use: a replay is refused, audited, and changes nothing else.
    again = server.client.post(
        "/v1/attest",
        json={
            "attestor": "join_token",
            "evidence": {"token": token["token"]},
            "csr": create_csr(generate_private_key(KeyType.EC_P256)),
        },
    )
    assert again.status_code == 401
    assert again.headers["content-type"] == "application/problem+json"
    assert "already used" in again.json()["detail"]
    assert _count(server, Node) == 1
    assert _count(server, IssuedCertificate, IssuedCertificate.kind == "node-svid") == 1
    assert _count(server, AuditEvent, AuditEvent.action == "node:agent:attestation_refused") == 1


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"attestor": "join_token", "evidence": {"token": "nope.nope"}}, "not valid"),
        ({"attestor": "join_token", "evidence": {"token": "no-dot"}}, "<id>.<secret>"),
        ({"attestor": "join_token", "evidence": {}}, "token"),
        ({"attestor": "tpm", "evidence": {}}, "not enabled"),
    ],
)
def test_bad_evidence_is_refused(server: Server, body: dict[str, Any], detail: str) -> None:
    body = {**body, "csr": create_csr(generate_private_key(KeyType.EC_P256))}
    response = server.client.post("/v1/attest", json=body)
    assert response.status_code == 401
    assert detail in response.json()["detail"]
    assert _count(server, Node) == 0


def test_entries_crud_and_validation(server: Server) -> None:
    parent = "spiffe://example.org/trustd/agent/join_token/n1"
    created = entry(server, "spiffe://example.org/web", parent, "unix:uid:1000", x509_ttl=600)
    assert created.status_code == 201, created.text
    web = created.json()
    assert web["selectors"] == ["unix:uid:1000"]
    assert web["x509_ttl"] == 600

    duplicate = entry(server, "spiffe://example.org/web", parent, "unix:uid:1000")
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["detail"]
    for bad, status in [
        (entry(server, "spiffe://other.org/web", parent, "unix:uid:1"), 400),
        (entry(server, "spiffe://example.org/web", parent, "nocolon"), 400),
        (entry(server, "spiffe://example.org/web", parent, "unix:uid:1", x509_ttl=10**6), 400),
        (entry(server, "spiffe://example.org/web", parent, "unix:uid:1", dns_names=["-x-"]), 400),
        (entry(server, "spiffe://example.org/web", parent), 422),
    ]:
        assert bad.status_code == status, bad.text
        assert bad.headers["content-type"] == "application/problem+json"
    assert _count(server, RegistrationEntry) == 1

    # A batch with one bad entry stores none.
    batch = server.client.post(
        "/v1/entries/batch",
        json={
            "entries": [
                {
                    "spiffe_id": "spiffe://example.org/a",
                    "parent_id": parent,
                    "selectors": ["unix:uid:1"],
                },
                {"spiffe_id": "spiffe://example.org/b", "parent_id": parent, "selectors": ["bad"]},
            ]
        },
        headers=server.auth,
    )
    assert batch.status_code == 400
    assert "entry 1" in batch.json()["detail"] or "selector" in batch.json()["detail"]
    assert _count(server, RegistrationEntry) == 1

    entry(server, "spiffe://example.org/db", parent, "unix:uid:1001", "unix:gid:50")
    page = server.client.get(
        "/v1/entries", params={"selector": "unix:gid:50"}, headers=server.auth
    ).json()
    assert [e["spiffe_id"] for e in page["entries"]] == ["spiffe://example.org/db"]
    assert page["total"] == 1

    patched = server.client.patch(
        f"/v1/entries/{web['id']}", json={"hint": "frontend"}, headers=server.auth
    )
    assert patched.json()["hint"] == "frontend"
    assert patched.json()["revision"] > web["revision"]
    assert server.client.delete(f"/v1/entries/{web['id']}", headers=server.auth).status_code == 204
    assert server.client.get(f"/v1/entries/{web['id']}", headers=server.auth).status_code == 404


def test_sync_gives_each_node_its_entries_and_svids(server: Server) -> None:
    node_a, _ = attest(server, join_token(server)["token"])
    node_b, _ = attest(server, join_token(server, "cluster:web")["token"])
    entry(server, "spiffe://example.org/web", str(node_a.spiffe_id), "unix:uid:1000")
    entry(server, "spiffe://example.org/db", str(node_b.spiffe_id), "unix:uid:1001")
    # A node alias: every node with cluster:web gets what is parented by the alias.
    entry(
        server,
        "spiffe://example.org/cluster/web",
        "spiffe://example.org/trustd/server",
        "cluster:web",
    )
    entry(server, "spiffe://example.org/api", "spiffe://example.org/cluster/web", "unix:uid:1002")

    headers_a = node_headers(server, node_a)
    sync_a = server.client.get("/v1/agents/sync", params={"since": 0}, headers=headers_a).json()
    assert sync_a["changed"]
    assert [e["spiffe_id"] for e in sync_a["entries"]] == ["spiffe://example.org/web"]
    assert sync_a["bundle"]["spiffe_sequence"] >= 1
    headers_b = node_headers(server, node_b)
    sync_b = server.client.get("/v1/agents/sync", params={"since": 0}, headers=headers_b).json()
    assert sorted(e["spiffe_id"] for e in sync_b["entries"]) == [
        "spiffe://example.org/api",
        "spiffe://example.org/db",
    ]

    # Nothing new: the long-poll holds, then says so.
    idle = server.client.get(
        "/v1/agents/sync", params={"since": sync_a["revision"], "wait": 0.2}, headers=headers_a
    ).json()
    assert idle["changed"] is False
    assert idle["revision"] == sync_a["revision"]
    assert idle["entries"] == []
    assert idle["bundle"] is None

    # Workload keys are made by the agent; the server signs the entry's identity.
    web_id = sync_a["entries"][0]["id"]
    db_id = (
        sync_b["entries"][1]["id"]
        if sync_b["entries"][1]["spiffe_id"].endswith("db")
        else sync_b["entries"][0]["id"]
    )
    signed = server.client.post(
        "/v1/agents/svids",
        json={
            "csrs": [
                {"entry_id": web_id, "csr": create_csr(generate_private_key(KeyType.EC_P256))},
                {"entry_id": db_id, "csr": create_csr(generate_private_key(KeyType.EC_P256))},
            ]
        },
        headers=headers_a,
    ).json()
    assert [s["spiffe_id"] for s in signed["svids"]] == ["spiffe://example.org/web"]
    assert signed["refused"] == [
        {"entry_id": db_id, "detail": "this node may not serve that entry"}
    ]
    leaf = load_pem_certificates(signed["svids"][0]["certificate"].encode())[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(seconds=3630)

    ack = server.client.post(
        "/v1/agents/ack", json={"revision": sync_a["revision"]}, headers=headers_a
    )
    assert ack.status_code == 204
    nodes = {n["spiffe_id"]: n for n in server.client.get("/v1/nodes", headers=server.auth).json()}
    assert nodes[str(node_a.spiffe_id)]["applied_revision"] == sync_a["revision"]

    jwt = server.client.post(
        "/v1/agents/jwt", json={"entry_id": web_id, "audience": ["api"]}, headers=headers_a
    )
    assert jwt.status_code == 200
    assert jwt.json()["spiffe_id"] == "spiffe://example.org/web"
    assert (
        server.client.post(
            "/v1/agents/jwt", json={"entry_id": db_id, "audience": ["api"]}, headers=headers_a
        ).status_code
        == 403
    )


def answer_after_change(
    server: Server, headers: dict[str, str], change: Callable[[], object], **params: Any
) -> dict[str, Any]:
    """The answer to a long-poll (`params`) that `change` woke: the change is made only once
    the server reports the poll parked, so an answer given before waiting fails the test."""
    answers: list[dict[str, Any]] = []

    def poll() -> None:
        response = server.client.get("/v1/agents/sync", params=params, headers=headers)
        assert response.status_code == 200, response.text
        answers.append(response.json())

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while server.services.agents.parked < 1:
            assert not answers, f"the long-poll answered without waiting: {answers[0]}"
            assert time.monotonic() < deadline, "the long-poll never waited"
            time.sleep(0.01)
        change()
    finally:
        thread.join(10)
    assert answers, "the long-poll did not answer after the change"
    return answers[0]


def test_long_poll_wakes_within_a_second_of_a_change(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    headers = node_headers(server, node)
    first = server.client.get("/v1/agents/sync", params={"since": 0}, headers=headers).json()
    body = answer_after_change(
        server,
        headers,
        lambda: entry(server, "spiffe://example.org/late", str(node.spiffe_id), "unix:uid:7"),
        since=first["revision"],
        wait=20,
    )
    assert body["changed"]
    assert [e["spiffe_id"] for e in body["entries"]] == ["spiffe://example.org/late"]


def test_evicted_and_banned_nodes_lose_their_credentials(server: Server) -> None:
    token = join_token(server)
    node, _ = attest(server, token["token"])
    headers = node_headers(server, node)
    assert (
        server.client.get("/v1/agents/sync", params={"wait": 0}, headers=headers).status_code == 200
    )
    evicted = server.client.post(
        "/v1/nodes/evict", json={"spiffe_id": str(node.spiffe_id)}, headers=server.auth
    )
    assert evicted.json()["status"] == "evicted"
    refused = server.client.get("/v1/agents/sync", params={"wait": 0}, headers=headers)
    assert refused.status_code == 401
    assert "attest again" in refused.json()["detail"]

    banned = server.client.post(
        "/v1/nodes/ban", json={"spiffe_id": str(node.spiffe_id)}, headers=server.auth
    )
    assert banned.json()["status"] == "banned"
    assert (
        server.client.post(
            "/v1/nodes/evict", json={"spiffe_id": str(node.spiffe_id)}, headers=server.auth
        ).status_code
        == 403
    )
    missing = server.client.post(
        "/v1/nodes/ban", json={"spiffe_id": "spiffe://example.org/nope"}, headers=server.auth
    )
    assert missing.status_code == 404


def test_forged_node_credentials_are_refused(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    # Same serial, another key: the signature does not verify.
    forged = NodeIdentity(node.spiffe_id, node.chain, generate_private_key(KeyType.EC_P256))
    response = server.client.get(
        "/v1/agents/sync", params={"wait": 0}, headers=node_headers(server, forged)
    )
    assert response.status_code == 401
    for bad in ["not-a-jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."]:
        r = server.client.get(
            "/v1/agents/sync", params={"wait": 0}, headers={"Authorization": f"Bearer {bad}"}
        )
        assert r.status_code == 401
    assert server.client.get("/v1/agents/sync").status_code == 401


def test_revocations_reach_agents_through_sync(server: Server) -> None:
    node, _ = attest(server, join_token(server)["token"])
    headers = node_headers(server, node)
    entry(server, "spiffe://example.org/web", str(node.spiffe_id), "unix:uid:1000")
    first = server.client.get("/v1/agents/sync", params={"since": 0}, headers=headers).json()
    web_id = first["entries"][0]["id"]

    def sign() -> str:
        csr = create_csr(generate_private_key(KeyType.EC_P256))
        svid = server.client.post(
            "/v1/agents/svids", json={"csrs": [{"entry_id": web_id, "csr": csr}]}, headers=headers
        ).json()["svids"][0]
        return format(load_pem_certificates(svid["certificate"].encode())[0].serial_number, "x")

    def revoke(serial: str) -> None:
        response = server.client.post(
            "/v1/admin/certificates/revoke",
            # Revoked only: web must still get SVIDs to revoke next.
            json={"serial": serial, "reason": "keyCompromise", "quarantine": False},
            headers=server.auth,
        )
        assert response.status_code == 200, response.text

    # A new agent starts following the feed where it stands; one revocation moves it on.
    revoke(sign())
    cursor = server.client.get("/v1/agents/sync", params={"since": 0}, headers=headers).json()[
        "revocation_revision"
    ]
    assert cursor > first["revocation_revision"]
    serial = sign()
    body = answer_after_change(
        server,
        headers,
        lambda: revoke(serial),
        since=first["revision"],
        revoked_since=cursor,
        wait=20,
    )
    assert body["changed"]
    assert [r["serial"] for r in body["revocations"]] == [serial]
    assert body["revocations"][0]["spiffe_id"] == "spiffe://example.org/web"
    assert body["revocation_revision"] > cursor
