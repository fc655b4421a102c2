"""Fencing tokens of the singleton loops' leader."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Connection, text
from sqlmodel import Field, Session, SQLModel

from trustd.store.types import UTCDateTime


class LeaderFence(SQLModel, table=True):
    """Fencing token of a singleton loop: a leader whose lock expired (a long GC pause, a
    partition) holds a smaller epoch than its successor and its writes are refused.
    """

    __tablename__ = "leader_fences"

    name: str = Field(primary_key=True, max_length=64)
    epoch: int = Field(sa_column=Column(BigInteger, nullable=False))
    holder: str = Field(max_length=128)
    updated_at: datetime = Field(sa_type=UTCDateTime)


def update_fence_epoch(session: Session, name: str, holder: str, now: datetime) -> int:
    """Take the next fencing epoch of loop `name` for `holder` (under a row lock; the row is
    created with epoch 1 the first time) and return it.

    Raises:
        IntegrityError: another transaction created the row first (at commit or flush).
    """
    row = session.get(LeaderFence, name, with_for_update=True)
    if row is None:
        row = LeaderFence(name=name, epoch=0, holder="", updated_at=now)
    row.epoch += 1
    row.holder = holder
    row.updated_at = now
    session.add(row)
    return row.epoch


def fetch_fence_epoch(session: Session, name: str) -> int | None:
    """The newest fencing epoch of loop `name`, its row locked until the transaction ends
    (the loop's write in the same transaction is then ordered after any newer claim)."""
    row = session.get(LeaderFence, name, with_for_update=True)
    return row.epoch if row is not None else None


def try_advisory_lock(connection: Connection, key: int) -> bool:
    """Take the PostgreSQL session-level advisory lock `key` on `connection` if free; it is
    held until released or the connection ends."""
    held = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one()
    connection.commit()
    return bool(held)


def ping_connection(connection: Connection) -> None:
    """Check that `connection` (holding an advisory lock) is still alive.

    Raises:
        DBAPIError: the connection is gone, and with it the lock.
    """
    connection.execute(text("SELECT 1"))
    connection.commit()
