"""ACME server tables (RFC 8555 §7.1): accounts, orders, authorizations, challenges and the
External Account Binding keys. Issued certificates live in `issued_certificates` (kind
`acme`), so revocation, CRLs and OCSP cover them like every other certificate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary
from sqlmodel import Field, SQLModel

from trustd.store.types import UTCDateTime

ACME_CERTIFICATE_KIND = "acme"


class AcmeEabKey(SQLModel, table=True):
    """An External Account Binding key (RFC 8555 §7.3.4) handed to a party out of band."""

    __tablename__ = "acme_eab_keys"

    id: str = Field(primary_key=True, max_length=64)
    # The MAC key, encrypted with the key-encryption key like the CA keys.
    encrypted_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    label: str = Field(max_length=128)
    # Names accounts bound to this key may order (DNS suffixes, CIDR networks); the Rego
    # identifier policy reads them. Empty lists add no restriction beyond the global policy.
    dns_suffixes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ip_networks: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AcmeAccount(SQLModel, table=True):
    __tablename__ = "acme_accounts"

    id: str = Field(primary_key=True, max_length=32)
    # RFC 7638 thumbprint of the current key: one account per key (RFC 8555 §7.3.1).
    thumbprint: str = Field(max_length=64, unique=True)
    jwk: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16)
    contact: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    eab_key_id: str | None = Field(
        default=None, max_length=64, foreign_key="acme_eab_keys.id", index=True
    )
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class AcmeOrder(SQLModel, table=True):
    __tablename__ = "acme_orders"
    __table_args__ = (
        Index("ix_acme_orders_account_id_created_at", "account_id", "created_at"),
        Index("ix_acme_orders_status_expires", "status", "expires"),
    )

    id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(max_length=32, foreign_key="acme_accounts.id")
    status: str = Field(max_length=16)
    identifiers: list[dict[str, str]] = Field(sa_column=Column(JSON, nullable=False))
    profile: str = Field(max_length=64)
    not_before: datetime | None = Field(default=None, sa_type=UTCDateTime)
    not_after: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires: datetime = Field(sa_type=UTCDateTime)
    # RFC 9773 §5: the ARI certID of the certificate this order replaces.
    replaces: str | None = Field(default=None, max_length=256, index=True)
    certificate_serial: str | None = Field(
        default=None, max_length=64, foreign_key="issued_certificates.serial", index=True
    )
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class AcmeAuthorization(SQLModel, table=True):
    __tablename__ = "acme_authorizations"

    id: str = Field(primary_key=True, max_length=32)
    order_id: str = Field(max_length=32, foreign_key="acme_orders.id", index=True)
    account_id: str = Field(max_length=32, foreign_key="acme_accounts.id", index=True)
    identifier_type: str = Field(max_length=8)
    identifier_value: str = Field(max_length=255)
    wildcard: bool = False
    status: str = Field(max_length=16)
    expires: datetime = Field(sa_type=UTCDateTime)


class AcmeChallenge(SQLModel, table=True):
    __tablename__ = "acme_challenges"

    id: str = Field(primary_key=True, max_length=32)
    authorization_id: str = Field(max_length=32, foreign_key="acme_authorizations.id", index=True)
    type: str = Field(max_length=16)
    token: str = Field(max_length=64)
    status: str = Field(max_length=16)
    validated: datetime | None = Field(default=None, sa_type=UTCDateTime)
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
