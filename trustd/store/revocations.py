"""Revocation events, the revocation sequence and the CRLs built from them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, LargeBinary
from sqlmodel import Field, SQLModel

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
