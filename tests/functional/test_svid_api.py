"""X509-SVID and JWT-SVID issuance through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlmodel import Session, func, select

from pki.bundle import TrustBundle
from pki.ca import load_pem_certificates
from pki.clock import SystemClock
from pki.jwt_svid import validate_jwt_svid
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import verify_x509_svid
from tests.functional.conftest import Server
from trustd.api.problems import PROBLEM_JSON
from trustd.api.schemas import X509SvidResponse
from trustd.roles import Role
from trustd.services.auth import Principal
from trustd.store.audit import AuditEvent
from trustd.store.certificates import IssuedCertificate

TD = TrustDomain.parse("example.org")


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    # The CSR asks for names of its own; trustd must ignore them (X509-SVID §4).
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://example.org/admin")]
            ),
            critical=False,
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _count(server: Server, model: type[IssuedCertificate] | type[AuditEvent]) -> int:
    with Session(server.services.engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def _assert_problem(response: Any, status: int, type_suffix: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    if type_suffix:
        assert body["type"] == f"urn:trustd:problem:{type_suffix}"
    return dict(body)


def test_x509_svid_is_issued_for_the_requested_id_and_recorded(server: Server) -> None:
    response = server.client.post(
        "/v1/svid/x509",
        json={"spiffe_id": "spiffe://example.org/web", "csr": _csr(), "ttl": 600},
        headers=server.auth,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    leaf = load_pem_certificates(body["certificate"].encode())[0]
    intermediates = [load_pem_certificates(p.encode())[0] for p in body["intermediates"]]
    roots = load_pem_certificates(body["bundle"].encode())
    spiffe_id = verify_x509_svid(leaf, intermediates, roots, TD, SystemClock())
    assert spiffe_id == SpiffeId.parse("spiffe://example.org/web")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/web"]
    assert leaf.subject == x509.Name([])
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(seconds=630)

    with Session(server.services.engine) as session:
        row = session.get(IssuedCertificate, body["serial"])
        assert row is not None
        assert row.spiffe_id == "spiffe://example.org/web"
        assert row.status == "valid"
        assert row.requested_by.startswith("token:")
        audit = session.exec(
            select(AuditEvent).where(AuditEvent.action == "svid:x509:issued")
        ).one()
        assert audit.target == "spiffe://example.org/web"
        assert audit.details["serial"] == body["serial"]


def test_x509_response_is_the_documented_schema_and_follows_the_bundle(server: Server) -> None:
    def issue() -> dict[str, Any]:
        response = server.client.post(
            "/v1/svid/x509",
            json={"spiffe_id": "spiffe://example.org/web", "csr": _csr()},
            headers=server.auth,
        )
        assert response.status_code == 201, response.text
        assert response.headers["content-type"] == "application/json"
        # The document is serialised without FastAPI's response_model pass; it must still be
        # exactly what the OpenAPI schema promises (RFC 3339 UTC times, no extra fields).
        document = X509SvidResponse.model_validate_json(response.content)
        body: dict[str, Any] = response.json()
        assert body == document.model_dump(mode="json")
        assert body["not_before"].endswith("Z") and body["not_after"].endswith("Z")
        return body

    before = issue()
    assert len(load_pem_certificates(before["bundle"].encode())) == 1
    # A prepared root is published in the bundle at once: the next response carries it.
    prepared = server.client.post(
        "/v1/admin/ca/prepare", json={"kind": "x509-root"}, headers=server.auth
    )
    assert prepared.status_code == 200, prepared.text
    after = issue()
    assert after["bundle"] == server.services.ca.state.bundle.to_pem()
    assert len(load_pem_certificates(after["bundle"].encode())) == 2
    assert after["intermediates"] == before["intermediates"]


def test_dns_names_come_from_the_request(server: Server) -> None:
    response = server.client.post(
        "/v1/svid/x509",
        json={
            "spiffe_id": "spiffe://example.org/api",
            "csr": _csr(),
            "dns_names": ["api.internal"],
        },
        headers=server.auth,
    )
    assert response.status_code == 201, response.text
    leaf = load_pem_certificates(response.json()["certificate"].encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.DNSName) == ["api.internal"]


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"spiffe_id": "spiffe://example.org/a", "csr": "not a csr"}, 400, "invalid-csr"),
        ({"spiffe_id": "spiffe://other.org/a", "csr": None}, 400, "invalid-spiffe-id"),
        ({"spiffe_id": "spiffe://example.org/a/../b", "csr": None}, 400, "invalid-spiffe-id"),
        ({"spiffe_id": "https://example.org/a", "csr": None}, 400, "invalid-spiffe-id"),
        ({"spiffe_id": "spiffe://example.org", "csr": None}, 400, None),
        (
            {"spiffe_id": "spiffe://example.org/a", "csr": None, "ttl": 10**7},
            400,
            "invalid-request",
        ),
        ({"spiffe_id": "spiffe://example.org/a", "csr": None, "dns_names": ["-bad-"]}, 400, None),
        ({"spiffe_id": "spiffe://example.org/a", "csr": "x" * 20000}, 422, "invalid-request"),
        ({"spiffe_id": "spiffe://example.org/a", "csr": None, "extra": 1}, 422, "invalid-request"),
        ({"csr": None}, 422, "invalid-request"),
    ],
)
def test_bad_x509_requests_get_a_problem_and_issue_nothing(
    server: Server, body: dict[str, object], status: int, problem: str | None
) -> None:
    if body.get("csr", "") is None:
        body = {**body, "csr": _csr()}
    before = _count(server, IssuedCertificate)
    # The first request looks the token up (the route answers); the second comes from a
    # caller admitted without the database, whose requests the lean path (`IssuancePath`)
    # answers or hands to the route: the answer must not depend on which.
    first = server.client.post("/v1/svid/x509", json=body, headers=server.auth)
    _assert_problem(first, status, problem)
    again = server.client.post("/v1/svid/x509", json=body, headers=server.auth)
    assert (again.status_code, again.headers["content-type"]) == (status, PROBLEM_JSON)
    assert again.json() == first.json()
    assert _count(server, IssuedCertificate) == before


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        # Not JSON media types: the route reads the body as bytes, not a document.
        ("text/plain", None),
        ("application/x-www-form-urlencoded", None),
        # A JSON media type with parameters, and a body that is not JSON at all.
        ("application/json; charset=utf-8", b"{not json"),
    ],
)
def test_x509_bodies_the_route_must_judge_get_its_problem(
    server: Server, content_type: str, content: bytes | None
) -> None:
    body = {"spiffe_id": "spiffe://example.org/a", "csr": _csr()}
    warm = server.client.post("/v1/svid/x509", json=body, headers=server.auth)
    assert warm.status_code == 201, warm.text
    before = _count(server, IssuedCertificate)
    response = server.client.post(
        "/v1/svid/x509",
        content=content if content is not None else json.dumps(body).encode(),
        headers={**server.auth, "Content-Type": content_type},
    )
    _assert_problem(response, 422, "invalid-request")
    assert _count(server, IssuedCertificate) == before


def test_a_remembered_caller_without_the_permission_is_refused_and_audited(
    server: Server,
) -> None:
    created = server.services.tokens.create(
        Principal("test", Role.ADMIN), "viewer", Role.VIEWER, timedelta(hours=1)
    )
    viewer = {"Authorization": f"Bearer {created.secret}"}
    # Accepted, then remembered: the lean path knows the caller without the database.
    assert server.client.get("/v1/entries", headers=viewer).status_code == 200
    body = {"spiffe_id": "spiffe://example.org/a", "csr": _csr()}
    for _ in range(2):
        refused = server.client.post("/v1/svid/x509", json=body, headers=viewer)
        _assert_problem(refused, 403, "permission-denied")
    assert _count(server, IssuedCertificate) == 0
    with Session(server.services.engine) as session:
        denied = session.exec(
            select(AuditEvent).where(AuditEvent.action == "admin:permission:denied")
        ).all()
    assert [(d.actor, d.target) for d in denied] == [
        (f"token:{created.token.id}", "POST /v1/svid/x509")
    ] * 2


def test_each_issued_x509_svid_is_recorded_with_its_request_id(server: Server) -> None:
    body = {"spiffe_id": "spiffe://example.org/web", "csr": _csr()}
    serials = []
    for number in range(3):
        response = server.client.post(
            "/v1/svid/x509",
            json=body,
            headers={**server.auth, "X-Request-ID": f"issue-{number}"},
        )
        assert response.status_code == 201, response.text
        assert response.headers["x-request-id"] == f"issue-{number}"
        serials.append(response.json()["serial"])
    with Session(server.services.engine) as session:
        audits = session.exec(
            select(AuditEvent)
            .where(AuditEvent.action == "svid:x509:issued")
            .order_by(AuditEvent.seq)  # type: ignore[arg-type]
        ).all()
        rows = [session.get(IssuedCertificate, serial) for serial in serials]
    assert [(a.details["serial"], a.request_id) for a in audits] == [
        (serial, f"issue-{n}") for n, serial in enumerate(serials)
    ]
    assert all(row is not None and row.requested_by.startswith("token:") for row in rows)


def test_weak_csr_key_is_refused(server: Server) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    before = _count(server, IssuedCertificate)
    response = server.client.post(
        "/v1/svid/x509",
        json={"spiffe_id": "spiffe://example.org/a", "csr": _csr(weak)},
        headers=server.auth,
    )
    _assert_problem(response, 400, "weak-key")
    assert _count(server, IssuedCertificate) == before


def test_oversized_body_is_refused_before_parsing(server: Server) -> None:
    response = server.client.post(
        "/v1/svid/x509",
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={**server.auth, "Content-Type": "application/json"},
    )
    _assert_problem(response, 413, "payload-too-large")


def test_admin_calls_need_a_valid_token(server: Server) -> None:
    body = {"spiffe_id": "spiffe://example.org/a", "csr": _csr()}
    audit_before = _count(server, AuditEvent)
    missing = server.client.post("/v1/svid/x509", json=body)
    problem = _assert_problem(missing, 401, "unauthenticated")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "token" in str(problem["detail"])

    token_id = server.admin_token.split(".")[1]
    wrong = server.client.post(
        "/v1/svid/x509", json=body, headers={"Authorization": f"Bearer trustd.{token_id}.wrong"}
    )
    _assert_problem(wrong, 401, "unauthenticated")
    malformed = server.client.post(
        "/v1/svid/x509", json=body, headers={"Authorization": "Bearer nonsense"}
    )
    _assert_problem(malformed, 401, "unauthenticated")
    assert _count(server, IssuedCertificate) == 0
    with Session(server.services.engine) as session:
        denied = session.exec(
            select(AuditEvent).where(AuditEvent.action == "admin:token:denied")
        ).all()
    assert [d.details["reason"] for d in denied] == ["wrong secret"]
    assert _count(server, AuditEvent) == audit_before + 1


def test_jwt_svid_is_minted_and_validates_against_the_bundle(server: Server) -> None:
    response = server.client.post(
        "/v1/svid/jwt",
        json={"spiffe_id": "spiffe://example.org/web", "audience": ["api"]},
        headers=server.auth,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    bundle = TrustBundle.from_jwks(server.client.get("/v1/bundle").json(), TD)
    svid = validate_jwt_svid(body["token"], bundle.jwt_authorities, "api", SystemClock(), TD)
    assert str(svid.spiffe_id) == "spiffe://example.org/web"
    assert svid.kid == body["kid"]
    with Session(server.services.engine) as session:
        audit = session.exec(select(AuditEvent).where(AuditEvent.action == "svid:jwt:issued")).one()
        assert body["token"] not in str(audit.details)


@pytest.mark.parametrize(
    "body",
    [
        {"spiffe_id": "spiffe://example.org/web"},
        {"spiffe_id": "spiffe://example.org/web", "audience": []},
        {"spiffe_id": "spiffe://example.org/web", "audience": [""]},
        {"spiffe_id": "spiffe://elsewhere.org/web", "audience": ["api"]},
        {"spiffe_id": "spiffe://example.org/web", "audience": ["api"], "ttl": 86400},
    ],
)
def test_bad_jwt_requests_are_refused(server: Server, body: dict[str, object]) -> None:
    response = server.client.post("/v1/svid/jwt", json=body, headers=server.auth)
    assert response.status_code in (400, 422)
    _assert_problem(response, response.status_code)
