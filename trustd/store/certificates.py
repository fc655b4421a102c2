"""Every certificate trustd has issued: recorded before it is handed out."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text, insert
from sqlmodel import Field, Session, SQLModel

from trustd.domain.certificates import CertificateKind, CertificateStatus
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
