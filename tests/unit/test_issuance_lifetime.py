"""The issuance pipeline's one lifetime rule: defaults and ceilings per credential kind,
applied before anything is signed, and the same rule for registration entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pki.clock import FakeClock
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId
from trustd.domain.certificates import CertificateKind
from trustd.errors import InvalidRequest
from trustd.services.audit import AuditLog
from trustd.services.ca import CertificateAuthority
from trustd.services.issuance import JWT_SVID, IssuanceRequest, Issuer, lifetime
from trustd.settings import Settings, load_settings
from trustd.store.db import create_db_engine


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        tls=False,
        x509_svid_ttl=timedelta(hours=1),
        x509_svid_max_ttl=timedelta(hours=24),
        jwt_svid_ttl=timedelta(minutes=5),
        jwt_svid_max_ttl=timedelta(hours=1),
        node_svid_ttl=timedelta(hours=2),
        serving_cert_ttl=timedelta(days=1),
    )


@pytest.mark.parametrize(
    ("kind", "default", "ceiling"),
    [
        (CertificateKind.X509_SVID, timedelta(hours=1), timedelta(hours=24)),
        (CertificateKind.NODE_SVID, timedelta(hours=2), timedelta(hours=2)),
        (CertificateKind.SERVING, timedelta(days=1), timedelta(days=1)),
        (JWT_SVID, timedelta(minutes=5), timedelta(hours=1)),
    ],
)
def test_each_kind_has_its_default_and_ceiling(
    settings: Settings, kind: CertificateKind, default: timedelta, ceiling: timedelta
) -> None:
    assert lifetime(settings, kind, None) == default
    assert lifetime(settings, kind, ceiling) == ceiling
    assert lifetime(settings, kind, timedelta(seconds=1)) == timedelta(seconds=1)
    with pytest.raises(
        InvalidRequest, match=f"exceeds the maximum of {int(ceiling.total_seconds())}s"
    ):
        lifetime(settings, kind, ceiling + timedelta(seconds=1))


@pytest.mark.parametrize("requested", [timedelta(0), timedelta(seconds=-1)])
def test_a_lifetime_must_be_positive(settings: Settings, requested: timedelta) -> None:
    with pytest.raises(InvalidRequest, match="ttl must be positive"):
        lifetime(settings, CertificateKind.X509_SVID, requested)


def _issuer(settings: Settings) -> Issuer:
    # The CA is never loaded: the lifetime is checked before anything is signed, so a
    # request refused for its lifetime cannot reach the signer.
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    audit = AuditLog(clock)
    engine = create_db_engine(f"sqlite:///{settings.data_dir / 'unused.db'}")
    ca = CertificateAuthority(settings, engine, clock, audit, b"k" * 32)
    return Issuer(settings, engine, ca, clock, audit)


def _request(kind: CertificateKind, ttl: timedelta | None) -> IssuanceRequest:
    return IssuanceRequest(
        kind=kind,
        spiffe_id=SpiffeId.parse("spiffe://example.org/w"),
        actor="test",
        public_key=generate_private_key(KeyType.EC_P256).public_key(),
        ttl=ttl,
    )


def test_the_pipeline_applies_the_rule_before_signing(settings: Settings) -> None:
    issuer = _issuer(settings)
    assert issuer.params(_request(CertificateKind.X509_SVID, None)).ttl == timedelta(hours=1)
    assert issuer.params(_request(CertificateKind.NODE_SVID, None)).ttl == timedelta(hours=2)
    with pytest.raises(InvalidRequest, match="exceeds the maximum"):
        issuer.params(_request(CertificateKind.X509_SVID, timedelta(hours=25)))
    # A node SVID's lifetime is the server's to choose, never the caller's.
    with pytest.raises(InvalidRequest, match="exceeds the maximum"):
        issuer.params(_request(CertificateKind.NODE_SVID, timedelta(hours=3)))


def test_a_request_names_its_key_once() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        IssuanceRequest(
            kind=CertificateKind.X509_SVID, spiffe_id="spiffe://example.org/w", actor="t"
        )
