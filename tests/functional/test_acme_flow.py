"""The ACME server end to end in-process: real database (SQLite and PostgreSQL), real CA,
real validation over loopback (DNS server, http-01 responder)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from sqlmodel import select

from tests.functional.acme_client import AcmeEnv, acme_env
from trustd.store.audit import AuditEvent
from trustd.store.certificates import IssuedCertificate
from trustd.store.db import transaction


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> Iterator[AcmeEnv]:
    with acme_env(tmp_path, database_url) as environment:
        environment.dns.add("svc.example.org", "A", "127.0.0.1")
        yield environment


def test_directory_and_nonces(env: AcmeEnv) -> None:
    directory = env.client.get("/acme/directory").json()
    for resource in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange"):
        assert directory[resource].startswith(env.base + "/acme/")
    assert directory["renewalInfo"] == env.base + "/acme/renewal-info"
    assert set(directory["meta"]["profiles"]) == {"tlsserver", "shortlived", "mtls"}
    assert directory["meta"]["externalAccountRequired"] is False
    head = env.client.head("/acme/new-nonce")
    get = env.client.get("/acme/new-nonce")
    assert (head.status_code, get.status_code) == (200, 204)
    for response in (head, get):
        assert response.headers["Cache-Control"] == "no-store"
        assert f'<{env.base}/acme/directory>;rel="index"' in response.headers["Link"]
    assert head.headers["Replay-Nonce"] != get.headers["Replay-Nonce"]


def test_full_flow_issues_a_recorded_tls_server_certificate(env: AcmeEnv) -> None:
    created = env.new_account(contact=["mailto:ops@example.org"])
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "valid"
    again = env.new_account()
    assert again.status_code == 200
    assert again.headers["Location"] == created.headers["Location"]

    order_url, order, _key = env.issue("svc.example.org", "127.0.0.1")
    assert order["status"] == "valid"
    # Validation reached the responder with the name (http-01) and the address (RFC 8738).
    hosts = {host for _, host in env.http01.requests}
    assert hosts == {f"svc.example.org:{env.http01.port}", f"127.0.0.1:{env.http01.port}"}

    response = env.post(order["certificate"], None)
    assert response.headers["Content-Type"] == "application/pem-certificate-chain"
    assert f'<{order["certificate"]}/1>;rel="alternate"' in response.headers["Link"]
    chain = x509.load_pem_x509_certificates(response.content)
    leaf, intermediate = chain
    assert intermediate == env.services.ca.state.authority.certificate
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["svc.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    kid = env.services.ca.state.authority_kid
    crl = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert crl[0].full_name == [x509.UniformResourceIdentifier(f"{env.base}/v1/crl/{kid}")]
    aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.OCSP, f"{env.base}/v1/ocsp")
    ]
    alternate = x509.load_pem_x509_certificates(env.post(order["certificate"] + "/1", None).content)
    assert alternate == [leaf, intermediate, env.services.ca.state.authority.root]

    serial = format(leaf.serial_number, "x")
    with transaction(env.services.engine) as session:
        row = session.get(IssuedCertificate, serial)
        audit = session.exec(
            select(AuditEvent).where(AuditEvent.action == "acme:certificate:issued")
        ).one()
    assert row is not None and row.kind == "acme" and row.spiffe_id is None
    assert row.issuer_kid == kid
    assert audit.target == serial

    listed = env.post(created.json()["orders"], None).json()
    assert listed == {"orders": [order_url]}
