"""Revocation events, the revocation sequence and the CRLs built from them, with the
functions that read and write them.

Revoking also reads and marks issued certificates, and rotation changes CA key slots: the
functions for those rows (sections at the end) work on the tables of
`trustd.store.certificates` and `trustd.store.ca_keys`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, LargeBinary, func, update
from sqlmodel import Field, Session, SQLModel, col, select

from pki.rotation import SlotStatus
from trustd.domain.certificates import CertificateStatus
from trustd.domain.revocations import (
    CertificateRecord,
    CrlRecord,
    OcspStatus,
    Revocation,
)
from trustd.domain.rotation import CaKeySlot
from trustd.store.ca_keys import CaKey
from trustd.store.certificates import IssuedCertificate
from trustd.store.types import UTCDateTime


class RevocationEvent(SQLModel, table=True):
    """One revoked certificate, in the order revocations were committed.

    `revision` comes from `RevocationState` inside the revoking transaction, whose row lock
    serialises revokers, so revisions become visible in increasing order and a reader that
    asks for "everything after N" never skips a revocation committed late.
    """

    __tablename__ = "revocation_events"
    __table_args__ = (
        Index("ix_revocation_events_issuer_kid_serial", "issuer_kid", "serial", unique=True),
        Index("ix_revocation_events_issuer_kid_revision", "issuer_kid", "revision"),
    )

    revision: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    serial: str = Field(max_length=64)
    # The CA key that issued the revoked certificate: the CRL it goes on.
    issuer_kid: str = Field(max_length=64, foreign_key="ca_keys.kid")
    spiffe_id: str | None = Field(default=None, max_length=2048, index=True)
    reason: str = Field(max_length=32)
    revoked_at: datetime = Field(sa_type=UTCDateTime)
    # The certificate's own expiry: RFC 5280 §3.3 lets the entry leave the CRL after it.
    not_after: datetime = Field(sa_type=UTCDateTime)
    revoked_by: str = Field(max_length=256)


class RevocationState(SQLModel, table=True):
    """One row: the newest revocation revision."""

    __tablename__ = "revocation_state"

    id: int = Field(default=1, primary_key=True)
    revision: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class CrlState(SQLModel, table=True):
    """The newest CRL of one issuing key, kept so every replica serves the same bytes."""

    __tablename__ = "crls"

    issuer_kid: str = Field(primary_key=True, max_length=64, foreign_key="ca_keys.kid")
    # RFC 5280 §5.2.3: monotonically increasing per issuer.
    number: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The revocation revision the CRL reflects; a newer revision makes it stale.
    revision: int = Field(sa_column=Column(BigInteger, nullable=False))
    entries: int
    this_update: datetime = Field(sa_type=UTCDateTime)
    next_update: datetime = Field(sa_type=UTCDateTime)
    der: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


# ---------------------------------------------------------------------- the revocation feed


def _revocation(row: RevocationEvent) -> Revocation:
    return Revocation(**row.model_dump())


def update_revocation_revision(session: Session, count: int) -> int:
    """Advance the revocation revision by *count* and return the newest revision.

    The counter row is locked until the caller's transaction ends, which orders concurrent
    revokers by commit (see `RevocationEvent`).
    """
    newest: int = session.execute(
        update(RevocationState)
        .where(col(RevocationState.id) == 1)
        .values(revision=col(RevocationState.revision) + count)
        .returning(col(RevocationState.revision))
    ).scalar_one()
    return newest


def create_revocations(session: Session, events: Sequence[Revocation]) -> None:
    """Append *events* to the revocation feed (their revisions come from
    `update_revocation_revision` in the same transaction)."""
    session.add_all(RevocationEvent(**asdict(event)) for event in events)


def fetch_revocation_revision(session: Session) -> int:
    """The newest revocation revision (0 before the first revocation)."""
    state = session.get(RevocationState, 1)
    return state.revision if state is not None else 0


def list_revocations_since(
    session: Session, revision: int, limit: int | None = None
) -> list[Revocation]:
    """Revocations with a revision greater than *revision*, oldest first."""
    query = (
        select(RevocationEvent)
        .where(col(RevocationEvent.revision) > revision)
        .order_by(col(RevocationEvent.revision))
    )
    if limit is not None:
        query = query.limit(limit)
    return [_revocation(row) for row in session.exec(query)]


def count_revocations(session: Session) -> int:
    """How many revocation events the feed holds."""
    return session.exec(select(func.count()).select_from(RevocationEvent)).one()


# ---------------------------------------------------------------------- CRLs


def _crl(row: CrlState) -> CrlRecord:
    return CrlRecord(**row.model_dump())


def fetch_crl(session: Session, issuer_kid: str, *, for_update: bool = False) -> CrlRecord | None:
    """The stored CRL of *issuer_kid*; with *for_update*, its row stays locked until the
    transaction ends (one replica regenerates it at a time)."""
    row = session.get(CrlState, issuer_kid, with_for_update=for_update)
    return _crl(row) if row is not None else None


def fetch_crl_revision(session: Session, issuer_kid: str) -> int:
    """The newest revocation revision of a certificate *issuer_kid* signed (0 if none)."""
    newest = session.exec(
        select(func.max(RevocationEvent.revision)).where(RevocationEvent.issuer_kid == issuer_kid)
    ).one()
    return newest or 0


def list_crl_entries(
    session: Session, issuer_kid: str, horizon: datetime
) -> Sequence[tuple[str, datetime, str, int]]:
    """Revocations of certificates *issuer_kid* signed that expire after *horizon*, as
    (serial, revoked_at, reason, revision)."""
    # Plain rows, neither ORM objects nor records: a CRL may list 100k entries, and each
    # object built per entry costs more than signing the list.
    query = select(
        col(RevocationEvent.serial),
        col(RevocationEvent.revoked_at),
        col(RevocationEvent.reason),
        col(RevocationEvent.revision),
    ).where(RevocationEvent.issuer_kid == issuer_kid, col(RevocationEvent.not_after) > horizon)
    return session.execute(query).all()


def update_crl(session: Session, crl: CrlRecord) -> None:
    """Store *crl* as the newest CRL of its issuer, replacing the previous one.

    Raises:
        IntegrityError: at commit, when another transaction stored the first CRL of that
            issuer meanwhile.
    """
    session.merge(CrlState(**asdict(crl)))


# ---------------------------------------------------------------------- issued certificates
#
# These read and mark rows of `issued_certificates` (trustd.store.certificates) for
# revocation, rotation and the OCSP responder.

_UPDATE_CHUNK = 1000


def _certificate(row: IssuedCertificate) -> CertificateRecord:
    return CertificateRecord(**row.model_dump())


def fetch_certificate(
    session: Session, serial: str, *, for_update: bool = False
) -> CertificateRecord | None:
    """The issued certificate with *serial* (lower-case hex); with *for_update*, its row
    stays locked until the transaction ends."""
    row = session.get(IssuedCertificate, serial, with_for_update=for_update)
    return _certificate(row) if row is not None else None


def fetch_ocsp_status(session: Session, serial: str) -> OcspStatus | None:
    """The issuer and revocation status of the certificate *serial*, without its PEM."""
    row = session.execute(
        select(
            col(IssuedCertificate.issuer_kid),
            col(IssuedCertificate.status),
            col(IssuedCertificate.revoked_at),
            col(IssuedCertificate.revocation_reason),
        ).where(IssuedCertificate.serial == serial)
    ).first()
    return OcspStatus(*row) if row is not None else None


def fetch_last_expiry(session: Session, issuer_kid: str) -> datetime | None:
    """When the last certificate *issuer_kid* signed expires (None if it signed none)."""
    return session.exec(
        select(func.max(IssuedCertificate.not_after)).where(
            IssuedCertificate.issuer_kid == issuer_kid
        )
    ).one()


def list_certificates_to_revoke(
    session: Session,
    now: datetime,
    *,
    spiffe_id: str | None = None,
    issuer_kid: str | None = None,
) -> list[CertificateRecord]:
    """The valid unexpired certificates of *spiffe_id* and/or signed by *issuer_kid*,
    ordered by serial and locked until the transaction ends (a concurrent revoker waits)."""
    query = select(IssuedCertificate).where(
        IssuedCertificate.status == CertificateStatus.VALID,
        IssuedCertificate.not_after > now,
    )
    if spiffe_id is not None:
        query = query.where(IssuedCertificate.spiffe_id == spiffe_id)
    if issuer_kid is not None:
        query = query.where(IssuedCertificate.issuer_kid == issuer_kid)
    rows = session.exec(query.order_by(col(IssuedCertificate.serial)).with_for_update())
    return [_certificate(row) for row in rows]


def update_certificates_revoked(
    session: Session, serials: Sequence[str], revoked_at: datetime, reason: str
) -> None:
    """Mark the certificates *serials* revoked at *revoked_at* for *reason*.

    Rows of these certificates already loaded in *session* see the change too.
    """
    for start in range(0, len(serials), _UPDATE_CHUNK):
        # Chunks keep each statement under the backends' bound-parameter limits.
        chunk = serials[start : start + _UPDATE_CHUNK]
        session.execute(
            update(IssuedCertificate)
            .where(col(IssuedCertificate.serial).in_(chunk))
            .values(
                status=CertificateStatus.REVOKED,
                revoked_at=revoked_at,
                revocation_reason=reason,
            )
        )


def list_certificates(
    session: Session,
    *,
    spiffe_id: str | None = None,
    status: CertificateStatus | None = None,
    issuer_kid: str | None = None,
    expiring_after: datetime | None = None,
    after: str | None = None,
    limit: int = 100,
) -> list[CertificateRecord]:
    """A page of issued certificates ordered by serial: those after the serial *after*,
    narrowed by every other argument given."""
    query = select(IssuedCertificate).order_by(col(IssuedCertificate.serial))
    if spiffe_id is not None:
        query = query.where(IssuedCertificate.spiffe_id == spiffe_id)
    if status is not None:
        query = query.where(IssuedCertificate.status == status)
    if issuer_kid is not None:
        query = query.where(IssuedCertificate.issuer_kid == issuer_kid)
    if expiring_after is not None:
        query = query.where(IssuedCertificate.not_after > expiring_after)
    if after is not None:
        query = query.where(col(IssuedCertificate.serial) > after)
    return [_certificate(row) for row in session.exec(query.limit(limit))]


# ---------------------------------------------------------------------- CA key slots
#
# Rotation's reads and status changes of `ca_keys` rows (trustd.store.ca_keys).


def _slot(row: CaKey) -> CaKeySlot:
    values = row.model_dump(exclude={"encrypted_key"})
    return CaKeySlot(**values)


def fetch_ca_key(session: Session, kid: str, *, for_update: bool = False) -> CaKeySlot | None:
    """The CA key *kid*; with *for_update*, its row stays locked until the transaction ends."""
    query = select(CaKey).where(CaKey.kid == kid)
    row = session.exec(query.with_for_update() if for_update else query).first()
    return _slot(row) if row is not None else None


def fetch_active_ca_key(session: Session, kind: str) -> CaKeySlot | None:
    """The active CA key of *kind*, locked until the transaction ends."""
    row = session.exec(
        select(CaKey).where(CaKey.kind == kind, CaKey.status == SlotStatus.ACTIVE).with_for_update()
    ).first()
    return _slot(row) if row is not None else None


def list_ca_keys(session: Session) -> list[CaKeySlot]:
    """Every CA key ever created, newest first (the rotation timeline)."""
    rows = session.exec(select(CaKey).order_by(col(CaKey.created_at).desc(), col(CaKey.id).desc()))
    return [_slot(row) for row in rows]


def update_ca_key_status(session: Session, kid: str, status: str, changed_at: datetime) -> None:
    """Set the status of the CA key *kid* (the caller checked the transition).

    Rows of that key already loaded in *session* see the change too, so a later read in the
    same transaction (the next rotation step) finds the new status.
    """
    session.execute(
        update(CaKey)
        .where(col(CaKey.kid) == kid)
        .values(status=status, status_changed_at=changed_at)
        .execution_options(synchronize_session="evaluate")
    )
