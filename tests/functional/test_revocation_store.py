"""The revocation store functions on a migrated database, SQLite and PostgreSQL: what the
revocation, CRL, OCSP and rotation services rely on beyond what the HTTP tests reach."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from pki.rotation import SlotStatus
from trustd.bootstrap import migrate
from trustd.domain.certificates import CertificateStatus
from trustd.domain.revocations import CrlRecord, Revocation
from trustd.store.ca_keys import (
    CaKey,
    fetch_active_ca_key,
    fetch_ca_key,
    list_ca_key_timeline,
    update_ca_key_status,
)
from trustd.store.certificates import (
    IssuedCertificate,
    fetch_certificate,
    fetch_last_expiry,
    fetch_ocsp_status,
    list_certificates,
    list_certificates_to_revoke,
    update_certificates_revoked,
)
from trustd.store.db import create_db_engine, transaction
from trustd.store.revocations import (
    count_revocations,
    create_revocations,
    fetch_crl,
    fetch_crl_revision,
    fetch_revocation_revision,
    list_crl_entries,
    list_revocations_since,
    update_crl,
    update_revocation_revision,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    migrate(database_url)
    engine = create_db_engine(database_url)
    with transaction(engine) as session:
        for number, (kind, status) in enumerate(
            [("x509-root", "active"), ("x509-intermediate", "active"), ("x509-root", "old")]
        ):
            session.add(
                CaKey(
                    kid=f"k{number}",
                    kind=kind,
                    status=status,
                    key_type="ec-p256",
                    encrypted_key=b"secret",
                    public_key_pem="pem",
                    not_before=NOW - HOUR,
                    not_after=NOW + 100 * HOUR,
                    created_at=NOW + number * HOUR,
                    issuer_kid="k0" if kind == "x509-intermediate" else None,
                )
            )
    yield engine
    engine.dispose()


def _issue(session: Session, serial: str, spiffe_id: str, not_after: datetime) -> None:
    session.add(
        IssuedCertificate(
            serial=serial,
            kind="x509-svid",
            spiffe_id=spiffe_id,
            issuer_kid="k1",
            not_before=NOW - HOUR,
            not_after=not_after,
            certificate_pem="pem",
            requested_by="test",
            created_at=NOW - HOUR,
        )
    )


def test_certificates_to_revoke_and_marking_them(engine: Engine) -> None:
    with transaction(engine) as session:
        _issue(session, "0b", "spiffe://example.org/a", NOW + HOUR)
        _issue(session, "0a", "spiffe://example.org/a", NOW + 2 * HOUR)
        _issue(session, "0c", "spiffe://example.org/a", NOW - HOUR)  # expired
        _issue(session, "0d", "spiffe://example.org/b", NOW + HOUR)
    with transaction(engine) as session:
        live = list_certificates_to_revoke(session, NOW, spiffe_id="spiffe://example.org/a")
        assert [c.serial for c in live] == ["0a", "0b"]
        # A row already loaded in the session sees the revocation.
        loaded = session.get(IssuedCertificate, "0a")
        update_certificates_revoked(session, ["0a"], NOW, "keyCompromise")
        assert loaded is not None and loaded.status == CertificateStatus.REVOKED
    with transaction(engine) as session:
        assert [c.serial for c in list_certificates_to_revoke(session, NOW, issuer_kid="k1")] == [
            "0b",
            "0d",
        ]
        revoked = fetch_certificate(session, "0a")
        assert revoked is not None and revoked.status == CertificateStatus.REVOKED
        assert revoked.revoked_at == NOW and revoked.revocation_reason == "keyCompromise"
        status = fetch_ocsp_status(session, "0a")
        assert status is not None and (status.issuer_kid, status.status) == ("k1", "revoked")
        assert fetch_ocsp_status(session, "ff") is None and fetch_certificate(session, "ff") is None
        assert fetch_last_expiry(session, "k1") == NOW + 2 * HOUR
        assert fetch_last_expiry(session, "k0") is None
        page = list_certificates(session, status=CertificateStatus.VALID, after="0b", limit=10)
        assert [c.serial for c in page] == ["0c", "0d"]
        live_page = list_certificates(session, expiring_after=NOW, limit=1)
        assert [c.serial for c in live_page] == ["0a"]


def test_revoking_more_certificates_than_one_statement_binds(engine: Engine) -> None:
    serials = [f"{n:04x}" for n in range(2500)]
    with transaction(engine) as session:
        for serial in serials:
            _issue(session, serial, "spiffe://example.org/many", NOW + HOUR)
    with transaction(engine) as session:
        update_certificates_revoked(session, serials, NOW, "cACompromise")
    with transaction(engine) as session:
        assert list_certificates_to_revoke(session, NOW, issuer_kid="k1") == []
        assert len(list_certificates(session, status=CertificateStatus.REVOKED, limit=1000)) == 1000


def test_feed_revisions_and_crl_state(engine: Engine) -> None:
    with transaction(engine) as session:
        assert fetch_revocation_revision(session) == 0
        newest = update_revocation_revision(session, 3)
        assert newest == 3
        create_revocations(
            session,
            [
                Revocation(n, f"{n:02x}", "k1", None, "unspecified", NOW, NOW + n * HOUR, "t")
                for n in (1, 2, 3)
            ],
        )
    with transaction(engine) as session:
        assert fetch_revocation_revision(session) == 3 and count_revocations(session) == 3
        assert [e.revision for e in list_revocations_since(session, 1)] == [2, 3]
        assert [e.serial for e in list_revocations_since(session, 0, 1)] == ["01"]
        assert fetch_crl_revision(session, "k1") == 3 and fetch_crl_revision(session, "k0") == 0
        # RFC 5280 §3.3: entries leave once the certificate expired before the horizon.
        assert [e[0] for e in list_crl_entries(session, "k1", NOW + HOUR)] == ["02", "03"]
        assert fetch_crl(session, "k1") is None
        update_crl(session, CrlRecord("k1", 1, 3, 2, NOW, NOW + HOUR, b"crl-1"))
    with transaction(engine) as session:
        update_crl(session, CrlRecord("k1", 2, 3, 2, NOW, NOW + HOUR, b"crl-2"))
    with transaction(engine) as session:
        stored = fetch_crl(session, "k1", for_update=True)
        assert stored == CrlRecord("k1", 2, 3, 2, NOW, NOW + HOUR, b"crl-2")


def test_ca_key_slots(engine: Engine) -> None:
    with transaction(engine) as session:
        timeline = list_ca_key_timeline(session)
        assert [k.kid for k in timeline] == ["k2", "k1", "k0"]
        # The timeline is what the API shows: it carries no key material.
        assert all(k.encrypted_key is None for k in timeline)
        active = fetch_active_ca_key(session, "x509-root", for_update=True)
        assert active is not None and active.kid == "k0"
        assert fetch_ca_key(session, "nope") is None
        # A row loaded earlier in the transaction (the CA's own view) sees the new status,
        # as the next rotation step in the same transaction must.
        loaded = session.exec(select(CaKey).where(CaKey.kid == "k0")).one()
        update_ca_key_status(session, "k0", SlotStatus.OLD, NOW)
        assert loaded.status == SlotStatus.OLD
        assert fetch_active_ca_key(session, "x509-root") is None
    with transaction(engine) as session:
        slot = fetch_ca_key(session, "k0", for_update=True)
        assert slot is not None and (slot.status, slot.status_changed_at) == ("old", NOW)
        assert "encrypted_key" not in repr(slot)
