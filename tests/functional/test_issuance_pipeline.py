"""The issuance pipeline end to end on both backends: one lifetime rule, one record path
(group commit or the caller's transaction), one metric label per credential kind."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client import REGISTRY
from sqlmodel import Session, func, select

from pki.ca import serial_hex
from pki.csr import create_csr
from pki.errors import TrustdError
from pki.keys import KeyType, generate_private_key
from pki.rotation import KeyKind as CaKeyKind
from tests.functional.conftest import Server, ServerFactory
from trustd.domain.certificates import CertificateKind, IssuedX509
from trustd.errors import InvalidRequest
from trustd.roles import Role
from trustd.services.auth import Principal
from trustd.services.ca import crl_url, ocsp_url
from trustd.services.issuance import IssuanceRequest
from trustd.store.audit import AuditEvent
from trustd.store.certificates import IssuedCertificate
from trustd.store.db import transaction


def _metric(name: str, kind: str) -> float:
    return REGISTRY.get_sample_value(name, {"kind": kind}) or 0.0


def _request(kind: CertificateKind, name: str, ttl: timedelta | None = None) -> IssuanceRequest:
    return IssuanceRequest(
        kind=kind,
        spiffe_id=f"spiffe://example.org/{name}",
        actor="test",
        csr=create_csr(generate_private_key(KeyType.EC_P256)).encode(),
        ttl=ttl,
    )


def _kinds(server: Server) -> dict[str, str]:
    with Session(server.services.engine) as session:
        return {c.serial: c.kind for c in session.exec(select(IssuedCertificate))}


class Refused(Exception):
    """The caller's own work failed after issuance, in the same transaction."""


def test_issue_records_through_the_group_commit_and_counts_by_kind(server: Server) -> None:
    before = _metric("trustd_svids_issued_total", "x509-svid")
    issued = asyncio.run(
        server.services.issuer.issue(_request(CertificateKind.X509_SVID, "web", timedelta(hours=2)))
    )
    serial = serial_hex(issued.certificate)
    assert _kinds(server)[serial] == "x509-svid"
    expiry = issued.certificate.not_valid_after_utc - server.services.clock.now()
    assert timedelta(hours=2) - timedelta(minutes=1) < expiry <= timedelta(hours=2)
    assert _metric("trustd_svids_issued_total", "x509-svid") == before + 1
    with Session(server.services.engine) as session:
        audit = session.exec(
            select(AuditEvent).where(AuditEvent.target == "spiffe://example.org/web")
        ).one()
    assert audit.action == "svid:x509:issued" and audit.details["serial"] == serial


def test_a_lifetime_over_the_ceiling_is_refused_and_nothing_is_stored(server: Server) -> None:
    before = _metric("trustd_issuance_failures_total", "x509-svid")
    too_long = server.settings.x509_svid_max_ttl + timedelta(seconds=1)
    with pytest.raises(InvalidRequest, match="exceeds the maximum"):
        asyncio.run(
            server.services.issuer.issue(_request(CertificateKind.X509_SVID, "long", too_long))
        )
    assert _kinds(server) == {}
    assert _metric("trustd_issuance_failures_total", "x509-svid") == before + 1


def test_issue_in_commits_with_the_callers_transaction(server: Server) -> None:
    issuer = server.services.issuer
    before = _metric("trustd_svids_issued_total", "node-svid")

    def issue_then_fail() -> None:
        with transaction(server.services.engine) as session:
            issuer.issue_in(session, _request(CertificateKind.NODE_SVID, "trustd/agent/x/1"))
            raise Refused

    with pytest.raises(Refused):
        issue_then_fail()
    # The certificate and its audit row rolled back with the caller's own rows, and it is
    # not counted as issued.
    assert _kinds(server) == {}
    assert _metric("trustd_svids_issued_total", "node-svid") == before
    with Session(server.services.engine) as session:
        assert (
            session.exec(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "svid:node:issued")
            ).one()
            == 0
        )
    with transaction(server.services.engine) as session:
        issued = issuer.issue_in(session, _request(CertificateKind.NODE_SVID, "trustd/agent/x/2"))
    assert _kinds(server) == {serial_hex(issued.certificate): "node-svid"}
    assert _metric("trustd_svids_issued_total", "node-svid") == before + 1


def test_the_entry_lifetime_is_checked_by_the_issuance_rule(server: Server) -> None:
    parent = "spiffe://example.org/trustd/agent/join_token/n1"
    maximum = int(server.settings.x509_svid_max_ttl.total_seconds())
    response = server.client.post(
        "/v1/entries",
        json={
            "spiffe_id": "spiffe://example.org/web",
            "parent_id": parent,
            "selectors": ["unix:uid:1"],
            "x509_ttl": maximum + 1,
        },
        headers=server.auth,
    )
    assert response.status_code == 400
    assert (
        response.json()["detail"]
        == f"x509_ttl: ttl {maximum + 1}s exceeds the maximum of {maximum}s"
    )


def test_node_attestation_and_the_serving_certificate_go_through_the_pipeline(
    server: Server,
) -> None:
    before = _metric("trustd_svids_issued_total", "node-svid")
    token = server.client.post(
        "/v1/join-tokens", json={"selectors": []}, headers=server.auth
    ).json()
    attested = server.client.post(
        "/v1/attest",
        json={
            "attestor": "join_token",
            "evidence": {"token": token["token"]},
            "csr": create_csr(generate_private_key(KeyType.EC_P256)),
        },
    )
    assert attested.status_code == 201, attested.text
    assert _metric("trustd_svids_issued_total", "node-svid") == before + 1
    issued, _key = server.services.issuer.issue_serving_certificate(["localhost"], ["127.0.0.1"])
    kinds = sorted(_kinds(server).values())
    assert kinds == ["node-svid", "serving"]
    expiry = issued.certificate.not_valid_after_utc - server.services.clock.now()
    assert expiry <= server.settings.serving_cert_ttl


def test_svids_point_at_the_crl_of_their_issuing_key(server_factory: ServerFactory) -> None:
    server = server_factory(svid_crl_distribution_point=True)
    issued = asyncio.run(server.services.issuer.issue(_request(CertificateKind.X509_SVID, "web")))
    points = issued.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    names = [name.value for point in points for name in point.full_name or ()]
    assert names == [crl_url(server.settings, issued.issuer_kid)]
    assert names == [f"{server.settings.base_url}/v1/crl/{issued.issuer_kid}"]
    # The responder URL comes from the same module, for the profiles that name one.
    assert ocsp_url(server.settings) == f"{server.settings.base_url}/v1/ocsp"


def test_issue_all_in_refuses_bad_requests_alone(server: Server) -> None:
    requests = [
        _request(CertificateKind.X509_SVID, "a"),
        replace(_request(CertificateKind.X509_SVID, "b"), csr=b"not a CSR"),
        _request(CertificateKind.X509_SVID, "c", timedelta(days=30)),
        _request(CertificateKind.X509_SVID, "d"),
    ]
    with transaction(server.services.engine) as session:
        outcomes = server.services.issuer.issue_all_in(session, requests)
    assert isinstance(outcomes[1], TrustdError)
    assert isinstance(outcomes[2], InvalidRequest)
    issued = [o for o in outcomes if isinstance(o, IssuedX509)]
    assert [str(i.spiffe_id) for i in issued] == [
        "spiffe://example.org/a",
        "spiffe://example.org/d",
    ]
    assert _kinds(server) == {serial_hex(i.certificate): "x509-svid" for i in issued}


def test_serving_credential_follows_the_active_authority(server: Server) -> None:
    services = server.services
    serving = services.serving
    assert serving.stale()  # nothing issued yet
    first = serving.renew()
    assert not serving.stale()
    assert first.issued.issuer_kid == services.ca.state.authority_kid
    assert _kinds(server)[serial_hex(first.issued.certificate)] == "serving"

    # A new intermediate becomes active: what the old one signed is stale at once, before
    # the old key can be tainted and revoked.
    admin = Principal("test", Role.ADMIN)
    services.rotation.prepare(admin, CaKeyKind.X509_INTERMEDIATE)
    services.rotation.activate(admin, CaKeyKind.X509_INTERMEDIATE)
    assert serving.stale()
    assert serving.renew_if_stale()
    current = serving.current
    assert current is not None and current.issued.issuer_kid == services.ca.state.authority_kid
    assert current.issued.issuer_kid != first.issued.issuer_kid
    assert not serving.renew_if_stale()

    # Loaded into a live context with nothing written to the data directory. The app's
    # bundle follower may be rewriting bundle.pem (through bundle.tmp) meanwhile, after the
    # activation above: its temporary file is not what this checks.
    follower_tmp = server.settings.bundle_path.with_suffix(".tmp")

    def files() -> list[Path]:
        return sorted(p for p in server.settings.data_dir.rglob("*") if p != follower_tmp)

    before = files()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.install(context)
    assert files() == before
