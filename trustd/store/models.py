"""Tables. The schema changes only through Alembic migrations (`alembic/versions`)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary, MetaData, Text
from sqlmodel import Field, SQLModel

from trustd.store.types import UTCDateTime

# Deterministic constraint names so migrations render the same on SQLite and PostgreSQL.
SQLModel.metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class CaKeyKind(StrEnum):
    X509_ROOT = "x509-root"
    X509_INTERMEDIATE = "x509-intermediate"
    JWT = "jwt"


class CaKeyStatus(StrEnum):
    ACTIVE = "active"


class CertificateKind(StrEnum):
    X509_SVID = "x509-svid"
    SERVING = "serving"


class CertificateStatus(StrEnum):
    VALID = "valid"
    REVOKED = "revoked"


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"


class CaKey(SQLModel, table=True):
    __tablename__ = "ca_keys"

    id: int | None = Field(default=None, primary_key=True)
    kid: str = Field(max_length=64, unique=True)
    kind: str = Field(max_length=32, index=True)
    status: str = Field(max_length=16)
    key_type: str = Field(max_length=16)
    # PKCS#8, encrypted with the key-encryption key; NULL when the key lives outside
    # trustd (an upstream authority whose key stays in the operator's files).
    encrypted_key: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    public_key_pem: str = Field(sa_column=Column(Text, nullable=False))
    certificate_pem: str | None = Field(default=None, sa_column=Column(Text))
    # Certificates between this authority and its root, PEM, excluding the root.
    chain_pem: str = Field(default="", sa_column=Column(Text, nullable=False))
    upstream: bool = False
    not_before: datetime = Field(sa_type=UTCDateTime)
    not_after: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)


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


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    actor: str = Field(max_length=256, index=True)
    action: str = Field(max_length=64, index=True)
    target: str | None = Field(default=None, max_length=2048)
    outcome: str = Field(max_length=16)
    request_id: str | None = Field(default=None, max_length=64)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class AdminToken(SQLModel, table=True):
    __tablename__ = "admin_tokens"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    role: str = Field(max_length=32)
    # SHA-256 of the secret part: the secret is 256 random bits, so a fast hash is enough
    # and a stolen database yields no usable token.
    token_hash: str = Field(max_length=64)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class BundleState(SQLModel, table=True):
    """One row: the trust bundle's `spiffe_sequence` (SPIFFE Trust Domain and Bundle §4.1)."""

    __tablename__ = "bundle_state"

    id: int = Field(default=1, primary_key=True)
    sequence: int = 0
    updated_at: datetime = Field(sa_type=UTCDateTime)


from trustd.store import acme_models as _acme_models  # noqa: E402, F401
