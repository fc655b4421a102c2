"""Every certificate trustd has issued: recorded before it is handed out."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from trustd.domain.certificates import CertificateKind, CertificateStatus
from trustd.store.types import UTCDateTime


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


__all__ = ["CertificateKind", "CertificateStatus", "IssuedCertificate"]
