"""The audit log's hash chain on real PostgreSQL and SQLite: appended under the head row's
lock by concurrent requests (issuance's group commit included), verified and exported by
the admin API, and broken by one edited or deleted row."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from tests.functional.conftest import Server
from trustd.domain.audit import GENESIS_HASH, ChainedAuditEvent, ChainHead, ChainVerifier
from trustd.store.db import transaction


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _issue(server: Server, name: str) -> None:
    response = server.client.post(
        "/v1/svid/x509",
        json={"spiffe_id": f"spiffe://example.org/{name}", "csr": _csr(), "ttl": 600},
        headers=server.auth,
    )
    assert response.status_code == 201, response.text


def _token(server: Server, name: str) -> None:
    response = server.client.post(
        "/v1/admin/tokens", json={"name": name, "role": "viewer"}, headers=server.auth
    )
    assert response.status_code == 201, response.text


def _verify(server: Server) -> dict[str, Any]:
    response = server.client.get("/v1/admin/audit/verify", headers=server.auth)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _export(server: Server, after: int = 0) -> tuple[ChainHead, list[dict[str, Any]]]:
    response = server.client.get(
        "/v1/admin/audit/export", params={"after": after}, headers=server.auth
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    head = ChainHead(
        int(response.headers["Trustd-Audit-Head-Seq"]), response.headers["Trustd-Audit-Head-Hash"]
    )
    return head, [json.loads(line) for line in response.text.splitlines()]


def _sql(server: Server, statement: str) -> None:
    with transaction(server.services.engine) as session:
        session.connection().execute(text(statement))


def test_concurrent_actions_make_one_unbroken_chain(server: Server) -> None:
    # Issuance (group commit, several rows per transaction) and admin writes (one event in
    # the action's own transaction) from 8 threads at once: each takes its turn on the head.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _issue(server, f"w{i}"), range(24)))
        list(pool.map(lambda i: _token(server, f"t{i}"), range(8)))
    report = _verify(server)
    assert report["intact"] is True and report["broken"] is None
    assert report["events"] == report["head_seq"] >= 32

    head, lines = _export(server)
    assert head.seq == report["head_seq"] and head.hash == report["head_hash"]
    assert [line["seq"] for line in lines] == list(range(1, head.seq + 1))
    assert lines[0]["prev_hash"] == GENESIS_HASH
    verifier = ChainVerifier()
    for line in lines:
        verifier.feed(ChainedAuditEvent.from_document(line))
    verifier.finish(head)
    issued = [line for line in lines if line["action"] == "svid:x509:issued"]
    assert len(issued) == 24 and all(line["details"]["serial"] for line in issued)

    # An incremental export continues from the last hash a SIEM holds.
    _, rest = _export(server, after=head.seq - 3)
    assert [line["seq"] for line in rest] == [head.seq - 2, head.seq - 1, head.seq]
    assert rest[0]["prev_hash"] == lines[head.seq - 4]["hash"]


def test_a_refused_action_leaves_no_gap(server: Server) -> None:
    _token(server, "first")
    before = _verify(server)
    # Refused before anything is written (the role does not exist): no event, no seq used.
    response = server.client.post(
        "/v1/admin/tokens", json={"name": "x", "role": "superuser"}, headers=server.auth
    )
    assert response.status_code == 422
    _token(server, "second")
    after = _verify(server)
    assert after["intact"] is True
    assert after["head_seq"] == before["head_seq"] + 1


def test_one_edited_row_breaks_the_chain_at_that_event(server: Server) -> None:
    for i in range(3):
        _issue(server, f"w{i}")
    assert _verify(server)["intact"] is True
    _, lines = _export(server)
    edited = next(line for line in lines if line["action"] == "svid:x509:issued")
    # What someone with write access to the database would do: retarget one event.
    _sql(
        server,
        f"UPDATE audit_events SET target = 'spiffe://example.org/other' "
        f"WHERE seq = {edited['seq']}",
    )
    report = _verify(server)
    assert report["intact"] is False
    assert report["broken"]["seq"] == edited["seq"]
    assert report["broken"]["id"] == edited["id"]
    assert "changed" in report["broken"]["reason"]


def test_a_rehashed_edit_still_breaks_the_next_event(server: Server) -> None:
    for i in range(3):
        _issue(server, f"w{i}")
    _, lines = _export(server)
    first = lines[1]
    forged = ChainedAuditEvent.from_document({**first, "actor": "someone-else"})
    new_hash = forged.computed_hash()
    _sql(
        server,
        f"UPDATE audit_events SET actor = 'someone-else', hash = '{new_hash}' "
        f"WHERE seq = {first['seq']}",
    )
    report = _verify(server)
    assert report["broken"]["seq"] == first["seq"] + 1
    assert "prev_hash" in report["broken"]["reason"]


def test_deleted_rows_break_the_chain(server: Server) -> None:
    for i in range(3):
        _issue(server, f"w{i}")
    head, _ = _export(server)
    _sql(server, "DELETE FROM audit_events WHERE seq = 2")
    report = _verify(server)
    assert report["intact"] is False and report["broken"]["seq"] == 2
    assert "missing" in report["broken"]["reason"]

    # Cutting events off the end is caught against the head row.
    _sql(server, "DELETE FROM audit_events WHERE seq >= 2")
    report = _verify(server)
    assert report["intact"] is False and report["broken"]["seq"] == 2
    assert f"head is event {head.seq}" in report["broken"]["reason"]


def test_a_viewer_may_read_the_chain_and_nobody_anonymous(server: Server) -> None:
    created = server.client.post(
        "/v1/admin/tokens", json={"name": "v", "role": "viewer"}, headers=server.auth
    ).json()
    viewer = {"Authorization": f"Bearer {created['token']}"}
    assert server.client.get("/v1/admin/audit/verify", headers=viewer).status_code == 200
    assert server.client.get("/v1/admin/audit/export", headers=viewer).status_code == 200
    anonymous = server.client.get("/v1/admin/audit/export")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
