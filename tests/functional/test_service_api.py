"""Bundle, health, metrics, admin tokens, CA status and failure behaviour over HTTP."""

from __future__ import annotations

from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from pki.bundle import TrustBundle
from pki.ca import fingerprint_sha256, load_pem_certificates
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import TrustDomain
from tests.conftest import PostgresDatabase
from tests.functional.conftest import Server, ServerFactory
from trustd.server import LocalAdmin
from trustd.store.certificates import IssuedCertificate


def test_bundle_is_a_spiffe_bundle(server: Server) -> None:
    response = server.client.get("/v1/bundle")
    assert response.status_code == 200
    document = response.json()
    uses = sorted(key["use"] for key in document["keys"])
    assert uses == ["jwt-svid", "x509-svid"]
    assert all("kid" in key for key in document["keys"] if key["use"] == "jwt-svid")
    assert document["spiffe_sequence"] >= 1
    assert document["spiffe_refresh_hint"] == 300
    bundle = TrustBundle.from_jwks(document, TrustDomain.parse("example.org"))
    pem = server.client.get("/v1/bundle", params={"format": "pem"})
    assert pem.headers["content-type"].startswith("application/x-pem-file")
    roots = load_pem_certificates(pem.text.encode())
    assert [fingerprint_sha256(c) for c in roots] == [
        fingerprint_sha256(c) for c in bundle.x509_authorities
    ]


def test_health_readiness_and_metrics(server: Server) -> None:
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.get("/readyz").json() == {"status": "ok"}
    csr = create_csr(generate_private_key(KeyType.EC_P256))
    server.client.post(
        "/v1/svid/x509",
        json={"spiffe_id": "spiffe://example.org/m", "csr": csr},
        headers=server.auth,
    )
    text = server.client.get("/metrics").text
    assert 'trustd_svids_issued_total{kind="x509-svid"}' in text
    assert "trustd_issuance_duration_seconds_bucket" in text
    assert "trustd_ca_expiry_timestamp_seconds" in text


def test_api_docs_are_served_from_this_server(server: Server) -> None:
    page = server.client.get("/docs")
    assert page.status_code == 200
    # Nothing from another origin, no inline script: the UI's CSP holds for the docs too.
    assert "https://" not in page.text and "<script>" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        fetched = server.client.get(asset)
        assert fetched.status_code == 200 and len(fetched.content) > 10_000, asset
    assert server.client.get("/ui/static/docs.js").status_code == 200
    icon = server.client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.content[:4] == b"\x00\x00\x01\x00"
    assert server.client.get("/redoc").status_code == 404


def test_metrics_beyond_loopback_need_a_token_or_their_own_listener(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(listen="0.0.0.0:8443")
    refused = server.client.get("/metrics")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert "metrics_listen or metrics_token" in refused.json()["detail"]
    # An admin token is not the metrics token: scraping is its own credential.
    assert server.client.get("/metrics", headers=server.auth).status_code == 403


def test_openapi_document_lists_the_api(server: Server) -> None:
    document = server.client.get("/openapi.json").json()
    assert {"/v1/bundle", "/v1/svid/x509", "/v1/svid/jwt", "/v1/admin/tokens"} <= set(
        document["paths"]
    )
    assert "HTTPBearer" in document["components"]["securitySchemes"]


def test_unknown_path_is_a_problem_and_request_ids_are_echoed(server: Server) -> None:
    response = server.client.get("/v1/nope", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "abc-123"
    generated = server.client.get("/healthz", headers={"X-Request-ID": "bad id\n"})
    assert generated.headers["x-request-id"] != "bad id\n"


def test_admin_tokens_lifecycle(server: Server) -> None:
    created = server.client.post(
        "/v1/admin/tokens", json={"name": "ci", "role": "admin"}, headers=server.auth
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    listed = server.client.get("/v1/admin/tokens", headers=headers).json()
    assert {t["name"] for t in listed} == {"bootstrap", "ci"}
    assert all("token" not in t and "token_hash" not in t for t in listed)
    token_id = created.json()["id"]
    assert (
        server.client.delete(f"/v1/admin/tokens/{token_id}", headers=server.auth).status_code == 204
    )
    refused = server.client.get("/v1/admin/tokens", headers=headers)
    assert refused.status_code == 401
    missing = server.client.delete("/v1/admin/tokens/nope", headers=server.auth)
    assert missing.status_code == 404


def test_admin_tokens_always_expire(server: Server) -> None:
    default = server.client.post(
        "/v1/admin/tokens", json={"name": "ci", "role": "viewer"}, headers=server.auth
    )
    assert default.status_code == 201, default.text
    expires = datetime.fromisoformat(default.json()["expires_at"])
    created = datetime.fromisoformat(default.json()["created_at"])
    assert expires - created == server.services.settings.admin_token_ttl
    before = server.client.get("/v1/admin/tokens", headers=server.auth).json()
    too_long = server.client.post(
        "/v1/admin/tokens",
        json={"name": "forever", "ttl": 31 * 86400},
        headers=server.auth,
    )
    assert too_long.status_code == 400
    assert too_long.headers["content-type"] == "application/problem+json"
    assert "admin_token_max_ttl" in too_long.json()["detail"]
    assert server.client.get("/v1/admin/tokens", headers=server.auth).json() == before


def test_viewer_tokens_cannot_issue(server: Server) -> None:
    created = server.client.post(
        "/v1/admin/tokens", json={"name": "ro", "role": "viewer"}, headers=server.auth
    ).json()
    response = server.client.post(
        "/v1/svid/jwt",
        json={"spiffe_id": "spiffe://example.org/a", "audience": ["x"]},
        headers={"Authorization": f"Bearer {created['token']}"},
    )
    assert response.status_code == 403
    assert response.json()["type"] == "urn:trustd:problem:permission-denied"


def test_ca_show_lists_active_authorities(server: Server) -> None:
    ca = server.client.get("/v1/admin/ca", headers=server.auth).json()
    assert ca["trust_domain"] == "example.org"
    kinds = sorted(a["kind"] for a in ca["authorities"])
    assert kinds == ["jwt", "x509-intermediate", "x509-root"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_database_outage_returns_503_and_issues_nothing(
    server: Server, postgres_db: PostgresDatabase
) -> None:
    csr = create_csr(generate_private_key(KeyType.EC_P256))
    body = {"spiffe_id": "spiffe://example.org/outage", "csr": csr}
    postgres_db.set_connections_allowed(False)
    try:
        # Through the admin socket no token lookup comes first, so the request reaches
        # signing and fails at the commit that must precede the response.
        local = TestClient(LocalAdmin(server.client.app), raise_server_exceptions=False)
        response = local.post("/v1/svid/x509", json=body)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        token_check = server.client.post("/v1/svid/x509", json=body, headers=server.auth)
        assert token_check.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert server.client.get("/readyz").status_code == 503
    finally:
        postgres_db.set_connections_allowed(True)
    with Session(server.services.engine) as session:
        count = session.exec(
            select(func.count())
            .select_from(IssuedCertificate)
            .where(IssuedCertificate.spiffe_id == "spiffe://example.org/outage")
        ).one()
    assert count == 0
    assert server.client.get("/readyz").status_code == 200
