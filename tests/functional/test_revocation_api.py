"""Revocation, CRLs, OCSP and manual CA key control through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from sqlmodel import Session, func, select

from pki.ca import load_pem_certificates
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from pki.revocation import RevocationReason
from tests.functional.conftest import Server
from trustd.services.auth import Principal, Role
from trustd.services.container import build_services
from trustd.store.audit import AuditEvent
from trustd.store.ca_keys import CaKey
from trustd.store.revocations import RevocationEvent

ID = "spiffe://example.org/web"


def _issue(server: Server, spiffe_id: str = ID) -> tuple[x509.Certificate, x509.Certificate]:
    csr = create_csr(generate_private_key(KeyType.EC_P256))
    response = server.client.post(
        "/v1/svid/x509", json={"spiffe_id": spiffe_id, "csr": csr}, headers=server.auth
    )
    assert response.status_code == 201, response.text
    body = response.json()
    leaf = load_pem_certificates(body["certificate"].encode())[0]
    return leaf, load_pem_certificates(body["intermediates"][0].encode())[0]


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def _counts(server: Server) -> tuple[int, int, list[str]]:
    with Session(server.services.engine) as session:
        events = session.exec(select(func.count()).select_from(RevocationEvent)).one()
        audits = session.exec(select(func.count()).select_from(AuditEvent)).one()
        statuses = sorted(f"{r.kid}:{r.status}" for r in session.exec(select(CaKey)))
    return events, audits, statuses


def _ocsp_request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    # RFC 5019 §2.1.1: clients name the certificate by SHA-1 CertID hashes.
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())  # noqa: S303
    request = request.build()
    return request.public_bytes(serialization.Encoding.DER)


def _ocsp(server: Server, der: bytes, *, get: bool = False) -> ocsp.OCSPResponse:
    if get:
        response = server.client.get(f"/v1/ocsp/{base64.b64encode(der).decode()}")
    else:
        response = server.client.post(
            "/v1/ocsp", content=der, headers={"Content-Type": "application/ocsp-request"}
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/ocsp-response"
    return ocsp.load_der_ocsp_response(response.content)


def _crl(server: Server, kid: str) -> x509.CertificateRevocationList:
    response = server.client.get(f"/v1/crl/{kid}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(response.content)


def test_revoke_by_serial_reaches_crl_ocsp_and_the_feed(server: Server) -> None:
    leaf, issuer = _issue(server)
    other, _ = _issue(server, "spiffe://example.org/db")
    kid = server.services.ca.state.authority_kid
    dp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name == [
        x509.UniformResourceIdentifier(f"{server.settings.base_url}/v1/crl/{kid}")
    ]
    before = _crl(server, kid)
    assert before.get_revoked_certificate_by_serial_number(leaf.serial_number) is None
    assert _ocsp(server, _ocsp_request(leaf, issuer)).certificate_status is ocsp.OCSPCertStatus.GOOD

    serial = format(leaf.serial_number, "x")
    response = server.client.post(
        "/v1/admin/certificates/revoke",
        json={"serial": serial, "reason": "keyCompromise"},
        headers=server.auth,
    )
    assert response.status_code == 200, response.text
    assert response.json()["serials"] == [serial]
    revision = response.json()["revision"]

    shown = server.client.get(f"/v1/admin/certificates/{serial}", headers=server.auth).json()
    assert shown["status"] == "revoked" and shown["revocation_reason"] == "keyCompromise"
    crl = _crl(server, kid)
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]

    for get in (False, True):
        answer = _ocsp(server, _ocsp_request(leaf, issuer), get=get)
        assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert answer.revocation_reason is x509.ReasonFlags.key_compromise
        assert answer.serial_number == leaf.serial_number
    good = _ocsp(server, _ocsp_request(other, issuer), get=True)
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD

    feed = server.client.get(
        "/v1/admin/revocations", params={"since": revision - 1}, headers=server.auth
    ).json()
    assert feed["revision"] == revision
    assert [e["serial"] for e in feed["events"]] == [serial]
    # One revocation time: the certificate's record (OCSP) and the feed entry (CRL, agents).
    assert feed["events"][0]["revoked_at"] == shown["revoked_at"]
    empty = server.client.get(
        "/v1/admin/revocations", params={"since": revision}, headers=server.auth
    ).json()
    assert empty == {"revision": revision, "events": []}
    with Session(server.services.engine) as session:
        audit = session.exec(
            select(AuditEvent).where(AuditEvent.action == "certificate:revocation:created")
        ).one()
    assert audit.target == serial and audit.details["reason"] == "keyCompromise"


def test_revoke_every_svid_of_a_spiffe_id(server: Server) -> None:
    first, _ = _issue(server)
    second, _ = _issue(server)
    keep, _ = _issue(server, "spiffe://example.org/other")
    response = server.client.post(
        "/v1/admin/certificates/revoke", json={"spiffe_id": ID}, headers=server.auth
    )
    assert response.status_code == 200, response.text
    assert sorted(response.json()["serials"]) == sorted(
        format(c.serial_number, "x") for c in (first, second)
    )
    listed = server.client.get(
        "/v1/admin/certificates", params={"status": "valid"}, headers=server.auth
    ).json()
    assert format(keep.serial_number, "x") in [c["serial"] for c in listed]
    assert all(c["spiffe_id"] != ID for c in listed)


def test_bad_revocations_change_nothing(server: Server) -> None:
    leaf, _ = _issue(server)
    before = _counts(server)
    revoke = "/v1/admin/certificates/revoke"
    body = _problem(server.client.post(revoke, json={"serial": "abc123"}, headers=server.auth), 404)
    assert "abc123" in body["detail"]
    _problem(server.client.post(revoke, json={}, headers=server.auth), 400)
    _problem(
        server.client.post(
            revoke,
            json={"serial": format(leaf.serial_number, "x"), "spiffe_id": ID},
            headers=server.auth,
        ),
        400,
    )
    _problem(
        server.client.post(
            revoke, json={"spiffe_id": "spiffe://example.org/nobody"}, headers=server.auth
        ),
        404,
    )
    _problem(
        server.client.post(
            revoke, json={"serial": "ab", "reason": "removeFromCRL"}, headers=server.auth
        ),
        422,
    )
    _problem(server.client.post(revoke, json={"serial": "ab"}), 401)
    _problem(server.client.get("/v1/crl/" + "ab" * 32), 404)
    assert _counts(server) == before

    # Revoking twice: the second is refused.
    ok = server.client.post(
        revoke, json={"serial": format(leaf.serial_number, "x")}, headers=server.auth
    )
    assert ok.status_code == 200
    after = _counts(server)
    _problem(
        server.client.post(
            revoke, json={"serial": format(leaf.serial_number, "x")}, headers=server.auth
        ),
        409,
    )
    assert _counts(server) == after


def test_ocsp_protocol_errors(server: Server) -> None:
    leaf, issuer = _issue(server)
    for get in (False, True):
        assert _ocsp(server, b"\x30\x03garbage", get=get).response_status is (
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        )
    response = server.client.get("/v1/ocsp/not*base64")
    assert ocsp.load_der_ocsp_response(response.content).response_status is (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    # A CertID naming a CA this responder does not serve (here: the leaf as "issuer").
    foreign = _ocsp_request(issuer, leaf)
    assert _ocsp(server, foreign).response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
    # A nonce is echoed (RFC 8954).
    nonce = x509.OCSPNonce(b"0123456789abcdef")
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, issuer, hashes.SHA256())
        .add_extension(nonce, critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    answer = _ocsp(server, request)
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value == nonce


def test_manual_rotation_taint_reissue_and_key_revocation(server: Server) -> None:
    auth = server.auth
    client = server.client
    first_kid = server.services.ca.state.authority_kid
    leaf, _ = _issue(server)
    before = _counts(server)
    # Bad input: never prepared, the only key, unknown key.
    body = _problem(
        client.post("/v1/admin/ca/activate", json={"kind": "x509-intermediate"}, headers=auth), 409
    )
    assert "prepare one first" in body["detail"]
    body = _problem(client.post(f"/v1/admin/ca/keys/{first_kid}/taint", headers=auth), 409)
    assert "activate a replacement first" in body["detail"]
    _problem(client.post(f"/v1/admin/ca/keys/{'0' * 64}/taint", headers=auth), 404)
    _problem(client.post(f"/v1/admin/ca/keys/{first_kid}/revoke", json={}, headers=auth), 409)
    _problem(client.post("/v1/admin/ca/prepare", json={"kind": "x509-leaf"}, headers=auth), 422)
    assert _counts(server) == before

    sequence = server.services.ca.state.bundle.sequence
    prepared = client.post("/v1/admin/ca/prepare", json={"kind": "x509-intermediate"}, headers=auth)
    assert prepared.status_code == 200, prepared.text
    assert prepared.json()["status"] == "prepared"
    assert prepared.json()["bundle_sequence"] > sequence
    _problem(
        client.post("/v1/admin/ca/prepare", json={"kind": "x509-intermediate"}, headers=auth), 409
    )
    activated = client.post(
        "/v1/admin/ca/activate", json={"kind": "x509-intermediate"}, headers=auth
    ).json()
    assert activated["kid"] == prepared.json()["kid"] and activated["status"] == "active"
    assert server.services.ca.state.authority_kid == activated["kid"]
    new_leaf, new_issuer = _issue(server)
    assert new_leaf.issuer == new_issuer.subject != leaf.issuer

    tainted = client.post(f"/v1/admin/ca/keys/{first_kid}/taint", headers=auth)
    assert tainted.status_code == 200 and tainted.json()["status"] == "tainted"
    batch = client.get(
        f"/v1/admin/ca/keys/{first_kid}/reissue", params={"limit": 10}, headers=auth
    ).json()
    assert [c["serial"] for c in batch] == [format(leaf.serial_number, "x")]
    _problem(client.get(f"/v1/admin/ca/keys/{activated['kid']}/reissue", headers=auth), 409)

    revoked = client.post(
        f"/v1/admin/ca/keys/{first_kid}/revoke", json={"reason": "cACompromise"}, headers=auth
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    shown = client.get(
        f"/v1/admin/certificates/{format(leaf.serial_number, 'x')}", headers=auth
    ).json()
    assert shown["status"] == "revoked" and shown["revocation_reason"] == "cACompromise"
    # The revoked intermediate is on its root's CRL and has no CRL of its own any more.
    root_kid = next(
        k["kid"]
        for k in client.get("/v1/admin/ca", headers=auth).json()["authorities"]
        if k["kind"] == "x509-root"
    )
    root_crl = _crl(server, root_kid)
    with Session(server.services.engine) as session:
        row = session.exec(select(CaKey).where(CaKey.kid == first_kid)).one()
    assert row.certificate_pem is not None
    serial = load_pem_certificates(row.certificate_pem.encode())[0].serial_number
    assert root_crl.get_revoked_certificate_by_serial_number(serial) is not None
    _problem(client.get(f"/v1/crl/{first_kid}"), 404)
    timeline = client.get("/v1/admin/ca/keys", headers=auth).json()
    assert {k["kid"]: k["status"] for k in timeline}[first_kid] == "revoked"


def test_jwt_key_rotation_changes_the_bundle(server: Server) -> None:
    auth = server.auth
    old_kid = server.services.ca.state.jwt_signer.kid
    prepared = server.client.post("/v1/admin/ca/prepare", json={"kind": "jwt"}, headers=auth)
    new_kid = prepared.json()["kid"]
    keys = server.client.get("/v1/bundle").json()["keys"]
    # Published before it signs anything.
    assert {k.get("kid") for k in keys} >= {old_kid, new_kid}
    server.client.post("/v1/admin/ca/activate", json={"kind": "jwt"}, headers=auth)
    minted = server.client.post(
        "/v1/svid/jwt", json={"spiffe_id": ID, "audience": ["a"]}, headers=auth
    ).json()
    assert minted["kid"] == new_kid
    keys = server.client.get("/v1/bundle").json()["keys"]
    assert {k.get("kid") for k in keys} >= {old_kid, new_kid}


def test_revocation_feed_for_agents_never_skips_a_revision(server: Server) -> None:
    feed = server.services.revocations
    start = feed.since(0).revision
    assert feed.since(start).events == ()
    # A second replica (its own services, same database) revokes: this replica's memory
    # must catch up when told the announced revision, and not before it is asked.
    other = build_services(server.settings)
    try:
        serials = []
        for name in ("a", "b", "c"):
            leaf, _ = _issue(server, f"spiffe://example.org/{name}")
            serials.append(format(leaf.serial_number, "x"))
        revisions = [
            other.revocations.revoke(
                Principal("t", Role.ADMIN), serial=s, reason=RevocationReason.SUPERSEDED
            ).revision
            for s in serials
        ]
    finally:
        other.engine.dispose()
    assert revisions == [start + 1, start + 2, start + 3]
    page = feed.since(start, limit=2, announced=revisions[-1])
    assert [e.serial for e in page.events] == serials[:2]
    assert page.revision == start + 2
    rest = feed.since(page.revision, announced=revisions[-1])
    assert [e.serial for e in rest.events] == serials[2:]
    assert rest.revision == start + 3
    assert feed.since(rest.revision).events == ()
    # Older questions than the memory holds still get every event, from the database.
    assert [e.serial for e in feed.since(0).events][-3:] == serials
