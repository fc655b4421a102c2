"""CA key slots (root, intermediate, JWT key) and the trust bundle's sequence."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, LargeBinary, Text
from sqlmodel import Field, SQLModel

from trustd.store.types import UTCDateTime


class CaKey(SQLModel, table=True):
    __tablename__ = "ca_keys"

    id: int | None = Field(default=None, primary_key=True)
    kid: str = Field(max_length=64, unique=True)
    kind: str = Field(max_length=32, index=True)
    status: str = Field(max_length=16, index=True)
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
    # The CA key that signed this certificate (an intermediate's root); NULL for roots.
    issuer_kid: str | None = Field(default=None, max_length=64, index=True)
    # For a root that replaced another: this root's key certified by its predecessor, so
    # verifiers that only hold the predecessor still reach the new root (cross-signing).
    cross_certificate_pem: str | None = Field(default=None, sa_column=Column(Text))
    status_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class BundleState(SQLModel, table=True):
    """One row: the trust bundle's `spiffe_sequence` (SPIFFE Trust Domain and Bundle §4.1)."""

    __tablename__ = "bundle_state"

    id: int = Field(default=1, primary_key=True)
    sequence: int = 0
    updated_at: datetime = Field(sa_type=UTCDateTime)
