"""Revocation events, the revocation sequence and the CRLs built from them, with the
functions that read and write them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, LargeBinary, func, update
from sqlmodel import Field, Session, SQLModel, col, select

from trustd.domain.revocations import (
    CrlRecord,
    Revocation,
)
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
