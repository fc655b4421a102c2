"""Ten CA lifetimes on a fake clock, with issuance at every step: no SVID ever stops
verifying against the bundle an agent holds, and old keys leave the bundle only after the
last credential they signed has expired. Run with the CA keys sealed in the database, there
with an ML-DSA-65 chain rotating beside the EC one (an ML-DSA SVID issued at every step
too), and with them in a real PKCS#11 token (SoftHSM2), where every rotation generates in
the token (EC keys only).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from sqlmodel import Session, func, select

from pki.bundle import TrustBundle
from pki.clock import FakeClock
from pki.csr import create_csr
from pki.jwt_svid import validate_jwt_svid
from pki.keys import KeyType, generate_private_key
from pki.rotation import SlotStatus
from pki.spiffe_id import TrustDomain
from pki.x509_svid import verify_x509_svid
from tests.functional.conftest import make_settings
from tests.hsm_support import load_in_process, new_token
from trustd.bootstrap import initialise, migrate
from trustd.domain.certificates import CertificateKind
from trustd.services.auth import Principal, Role
from trustd.services.container import build_services
from trustd.services.issuance import IssuanceRequest
from trustd.store.audit import AuditEvent
from trustd.store.ca_keys import CaKey
from trustd.store.certificates import IssuedCertificate

TD = TrustDomain.parse("example.org")
STEP = timedelta(minutes=5)
INTERMEDIATE_TTL = timedelta(hours=2)
LIFETIMES = 10
# The agent fetches the bundle every refresh hint, like a SPIFFE bundle consumer.
AGENT_REFRESH_STEPS = 3
ADMIN = Principal("test", Role.ADMIN)


@dataclass(frozen=True)
class X509Issued:
    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]


@pytest.fixture(params=["file", "pkcs11"])
def key_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, object]:
    """The settings that put the CA keys in the backend under test."""
    if request.param == "file":
        return {"additional_ca_key_types": ["ml-dsa-65"]}
    token = new_token(tmp_path / "softhsm")
    load_in_process(token, monkeypatch)
    return {
        "ca_key_backend": "pkcs11",
        "pkcs11_module": token.module,
        "pkcs11_token_label": token.label,
        "pkcs11_pin": token.pin,
    }


@pytest.mark.fault
def test_ten_ca_lifetimes_without_a_gap(
    tmp_path: Path, database_url: str, key_backend: dict[str, object]
) -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    settings = make_settings(
        tmp_path,
        database_url,
        **key_backend,
        root_ttl=timedelta(hours=6),
        intermediate_ttl=INTERMEDIATE_TTL,
        jwt_key_ttl=INTERMEDIATE_TTL,
        x509_svid_ttl=timedelta(minutes=20),
        jwt_svid_ttl=timedelta(minutes=10),
        jwt_svid_max_ttl=timedelta(minutes=10),
        bundle_refresh_hint=STEP * AGENT_REFRESH_STEPS,
        bundle_reload_interval=STEP,
    )
    settings.data_dir.mkdir(parents=True)
    migrate(database_url)
    services = build_services(settings, clock)
    initialise(services)
    services.ca.load()
    key = generate_private_key(KeyType.EC_P256)
    csr = create_csr(key).encode()
    with_ml_dsa = "additional_ca_key_types" in key_backend
    pq_csr = create_csr(generate_private_key(KeyType.ML_DSA_65)).encode()

    def served_bundle() -> TrustBundle:
        # What an agent gets: the bundle through its wire format.
        return TrustBundle.from_jwks(services.ca.state.bundle.to_json().encode(), TD)

    # Three agents refresh on different phases, so some always hold a bundle almost one
    # refresh interval old.
    agent_bundles = [served_bundle() for _ in range(AGENT_REFRESH_STEPS)]
    x509_svids: list[X509Issued] = []
    jwt_svids: list[str] = []
    steps = int(LIFETIMES * INTERMEDIATE_TTL / STEP)
    for step in range(steps):
        clock.advance(STEP)
        services.rotation.tick()
        issued = asyncio.run(
            services.issuer.issue_x509_svid(ADMIN, f"spiffe://{TD.name}/w/{step}", csr)
        )
        x509_svids.append(X509Issued(issued.certificate, issued.intermediates))
        if with_ml_dsa and step % 2 == 0:
            # What an entry asking for ml-dsa-65 gets (`Agents.sign_svids`); every other
            # step, which keeps one or two live at every moment (20-minute SVIDs).
            pq = asyncio.run(
                services.issuer.issue(
                    IssuanceRequest(
                        kind=CertificateKind.X509_SVID,
                        spiffe_id=f"spiffe://{TD.name}/pq/{step}",
                        actor=ADMIN.name,
                        csr=pq_csr,
                        key_type=KeyType.ML_DSA_65,
                    )
                )
            )
            x509_svids.append(X509Issued(pq.certificate, pq.intermediates))
        jwt_svids.append(
            services.issuer.mint_jwt_svid(ADMIN, f"spiffe://{TD.name}/w/{step}", ["api"]).token
        )
        agent_bundles[step % AGENT_REFRESH_STEPS] = served_bundle()
        now = clock.now()
        for bundle in (*agent_bundles, served_bundle()):
            for svid in x509_svids:
                if svid.leaf.not_valid_after_utc > now:
                    verify_x509_svid(
                        svid.leaf, svid.intermediates, bundle.x509_authorities, TD, clock
                    )
            # The last two cover every unexpired JWT-SVID (10 minutes, 5-minute steps).
            for token in jwt_svids[-2:]:
                validate_jwt_svid(token, bundle.jwt_authorities, "api", clock, TD)
        x509_svids = [s for s in x509_svids if s.leaf.not_valid_after_utc > now]

    with Session(services.engine) as session:
        rows = session.exec(select(CaKey)).all()
        actions = Counter(
            (e.details.get("kind"), e.action)
            for e in session.exec(select(AuditEvent).where(AuditEvent.action.like("ca:%")))
        )
        retired = [r for r in rows if r.status == SlotStatus.RETIRED]
        for row in retired:
            if row.kind != "x509-intermediate":
                continue
            last = session.exec(
                select(func.max(IssuedCertificate.not_after)).where(
                    IssuedCertificate.issuer_kid == row.kid
                )
            ).one()
            # An intermediate left only after the last SVID it signed had expired.
            assert row.status_changed_at is not None
            assert last is None or last <= row.status_changed_at
    # The rotations really happened: about one intermediate and one JWT key per lifetime,
    # and the 6-hour root rotated (cross-signed) several times.
    assert actions[("x509-intermediate", "ca:authority:active")] >= LIFETIMES - 1
    assert actions[("jwt", "ca:authority:active")] >= LIFETIMES - 1
    assert actions[("x509-root", "ca:authority:active")] >= 2
    assert {r.kind for r in retired} == {"x509-root", "x509-intermediate", "jwt"}
    if with_ml_dsa:
        # The ML-DSA-65 chain rotated on its own schedule, cross-signed by its own roots.
        pq_rows = [r for r in rows if r.chain == "ml-dsa-65"]
        assert {r.key_type for r in pq_rows} == {"ml-dsa-65"}
        intermediates = [r for r in pq_rows if r.kind == "x509-intermediate"]
        assert len(intermediates) >= LIFETIMES
        assert {r.kind for r in pq_rows if r.status == SlotStatus.RETIRED} == {
            "x509-root",
            "x509-intermediate",
        }
        assert any(r.cross_certificate_pem for r in pq_rows if r.kind == "x509-root")
    assert any(r.cross_certificate_pem for r in rows if r.kind == "x509-root")
    # The bundle never keeps more than the keys still needed (per chain).
    assert len(services.ca.state.bundle.x509_authorities) <= 3 * (1 + with_ml_dsa)
    in_token = "ca_key_backend" in key_backend
    expected = "pkcs11" if in_token else "file"
    assert {r.key_backend for r in rows} == {expected}
    assert all(r.encrypted_key is None for r in rows) == in_token
    services.engine.dispose()
