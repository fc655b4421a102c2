"""Every certificate trustd has issued: recorded before it is handed out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Column, Text, func, insert, update
from sqlmodel import Field, Session, SQLModel, col, select

from trustd.domain.certificates import CertificateKind, CertificateRecord, CertificateStatus
from trustd.domain.revocations import OcspStatus
from trustd.store.types import Insertion, UTCDateTime


class IssuedCertificate(SQLModel, table=True):
    __tablename__ = "issued_certificates"

    serial: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)
    spiffe_id: str | None = Field(default=None, max_length=2048, index=True)
    issuer_kid: str = Field(max_length=64, foreign_key="ca_keys.kid", index=True)
    status: str = Field(max_length=16, default=CertificateStatus.VALID)
    not_before: datetime = Field(sa_type=UTCDateTime)
    not_after: datetime = Field(sa_type=UTCDateTime, index=True)
    certificate_pem: str = Field(sa_column=Column(Text, nullable=False))
    requested_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revocation_reason: str | None = Field(default=None, max_length=32)


__all__ = [
    "CertificateKind",
    "CertificateStatus",
    "IssuedCertificate",
    "certificate_insertion",
    "create_certificate",
]


# A prepared Core insert: issuance is the hot path and the ORM's unit of work costs more than
# the insert itself.
_INSERT = insert(IssuedCertificate.metadata.tables["issued_certificates"])


def certificate_insertion(
    *,
    serial: str,
    kind: str,
    spiffe_id: str | None,
    issuer_kid: str,
    not_before: datetime,
    not_after: datetime,
    certificate_pem: str,
    requested_by: str,
    created_at: datetime,
) -> Insertion:
    """The record of a newly issued (valid) certificate, as an insert to run in the issuing
    transaction or a group commit."""
    return (
        _INSERT,
        {
            "serial": serial,
            "kind": kind,
            "spiffe_id": spiffe_id,
            "issuer_kid": issuer_kid,
            "status": CertificateStatus.VALID,
            "not_before": not_before,
            "not_after": not_after,
            "certificate_pem": certificate_pem,
            "requested_by": requested_by,
            "created_at": created_at,
        },
    )


def create_certificate(session: Session, insertion: Insertion) -> None:
    """Add the certificate record `insertion` (see `certificate_insertion`) to `session`."""
    session.connection().execute(*insertion)


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


def list_latest_certificates(
    session: Session, spiffe_id: str, limit: int
) -> list[CertificateRecord]:
    """The newest *limit* certificates issued for *spiffe_id* (on the `spiffe_id` index)."""
    query = (
        select(IssuedCertificate)
        .where(IssuedCertificate.spiffe_id == spiffe_id)
        .order_by(col(IssuedCertificate.created_at).desc())
        .limit(limit)
    )
    return [_certificate(row) for row in session.exec(query)]
