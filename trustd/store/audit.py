"""The audit log: one row per security-relevant action, each chained to the one before.

One chain per deployment, its head in the single `audit_chain` row. A transaction's audit
events are appended as its last statements, under the head row's lock (an UPDATE, so a row
lock on PostgreSQL and the write lock on SQLite), and the lock is held only from there to the
commit. Why one chain rather than one per replica: one total order means deleting any event
breaks the chain, and a SIEM anchors one head; per-replica chains would each need their own
anchor, and a whole replica's chain could be dropped without breaking any other. The price is
that audited commits of all replicas take turns on one row for the few statements between
the append and the commit (measured by `bench/audit_chain.py`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, bindparam, event, insert, update
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Field, Session, SQLModel, col, select

from trustd.domain.audit import (
    AuditOutcome,
    ChainedAuditEvent,
    ChainHead,
    canonical_details,
)
from trustd.store.types import Insertion, UTCDateTime, to_domain


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
    # The event's place in the chain (1, 2, ...), the hash of the event before it and its own
    # (`trustd.domain.audit`).
    seq: int = Field(sa_column=Column(BigInteger, nullable=False, unique=True))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditChain(SQLModel, table=True):
    """The head of the chain: one row (id 1), the last event's seq and hash."""

    __tablename__ = "audit_chain"

    id: int = Field(primary_key=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str = Field(max_length=64)


__all__ = [
    "AUDIT_INSERT",
    "AuditChain",
    "AuditEvent",
    "AuditOutcome",
    "audit_event_insertion",
    "create_audit_event",
    "fetch_audit_chain_head",
    "list_chained_audit_events",
]


# A Core insert: audit rows are written on every issuance, and the ORM's unit of work costs
# more than the insert itself.
AUDIT_INSERT = insert(AuditEvent.metadata.tables["audit_events"])
_CHAIN = AuditChain.metadata.tables["audit_chain"]
# Taking the lock and reserving the seqs in one statement: the UPDATE waits for any other
# transaction appending, then (PostgreSQL READ COMMITTED re-reads the row it waited for)
# returns the head that transaction left.
_ADVANCE = (
    update(_CHAIN)
    .where(_CHAIN.c.id == 1)
    .values(seq=_CHAIN.c.seq + bindparam("count"))
    .returning(_CHAIN.c.seq, _CHAIN.c.hash)
)
_SET_HEAD = update(_CHAIN).where(_CHAIN.c.id == 1).values(hash=bindparam("head"))
_PENDING = "trustd.audit.pending"


def audit_event_insertion(
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str | None,
    outcome: AuditOutcome,
    request_id: str | None,
    details: dict[str, Any],
) -> Insertion:
    """The audit row as an insert to run in the action's transaction (or a group commit).
    Its place in the chain is given when that transaction commits."""
    return (
        AUDIT_INSERT,
        {
            "at": at,
            "actor": actor,
            "action": action,
            "target": target,
            "outcome": str(outcome),
            "request_id": request_id,
            "details": canonical_details(details),
        },
    )


def create_audit_event(session: Session, insertion: Insertion) -> None:
    """Add the audit row `insertion` (see `audit_event_insertion`) to `session`: it is
    chained and written just before the session commits, and dropped if it rolls back."""
    session.info.setdefault(_PENDING, []).append(insertion[1])


@event.listens_for(OrmSession, "before_commit")
def _append_pending(session: OrmSession) -> None:
    # Last in the transaction, so that the head row is locked only until the commit and a
    # transaction holding it never waits for another row (no lock-order deadlock).
    pending: list[dict[str, Any]] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    connection = session.connection()
    head = connection.execute(_ADVANCE, {"count": len(pending)}).one_or_none()
    if head is None:
        raise RuntimeError("the audit chain has no head row: run `alembic upgrade head`")
    seq = head.seq - len(pending)
    prev = head.hash
    rows = []
    for values in pending:
        seq += 1
        chained = ChainedAuditEvent(seq=seq, prev_hash=prev, hash="", **values)
        prev = chained.computed_hash()
        rows.append({**values, "seq": seq, "prev_hash": chained.prev_hash, "hash": prev})
    connection.execute(AUDIT_INSERT, rows)
    connection.execute(_SET_HEAD, {"head": prev})


@event.listens_for(OrmSession, "after_rollback")
def _drop_pending(session: OrmSession) -> None:
    session.info.pop(_PENDING, None)


def fetch_audit_chain_head(session: Session) -> ChainHead:
    """The chain's head row: the last event's seq and hash (0 and the genesis hash when the
    log is empty)."""
    row = session.connection().execute(select(_CHAIN.c.seq, _CHAIN.c.hash)).one()
    return ChainHead(seq=row.seq, hash=row.hash)


def list_chained_audit_events(
    session: Session, *, after: int, until: int | None, limit: int
) -> list[ChainedAuditEvent]:
    """Up to `limit` events in chain order with `after < seq <= until` (keyset paging)."""
    statement = select(AuditEvent).where(col(AuditEvent.seq) > after)
    if until is not None:
        statement = statement.where(col(AuditEvent.seq) <= until)
    rows = session.exec(statement.order_by(col(AuditEvent.seq)).limit(limit)).all()
    return [to_domain(ChainedAuditEvent, row, details=dict(row.details)) for row in rows]
