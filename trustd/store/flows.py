"""Observed flows: one row per flow report an agent sent (an aggregate of one key over one
interval, `trustd.domain.flows`), indexed for the queries the API, the CLI and the graph
make (by time, source, destination, verdict), and pruned by age and count.

The id is the paging cursor: a BIGINT that only grows, so `id > after` in id order is every
flow stored since the previous page, and `trustd flows --follow` polls with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, ColumnElement, Index, Integer, delete, func, insert
from sqlalchemy import select as sa_select
from sqlmodel import Field, Session, SQLModel, col, select

from trustd.domain.flows import (
    Direction,
    Flow,
    FlowFilter,
    Observer,
    Reason,
    TrafficEdge,
    Verdict,
)
from trustd.store.types import UTCDateTime

# SQLite gives an INTEGER PRIMARY KEY its rowid (64-bit) only when the type is exactly
# INTEGER; PostgreSQL needs BIGINT for the id to outlive 2^31 flows.
_ID = BigInteger().with_variant(Integer(), "sqlite")


class FlowRow(SQLModel, table=True):
    __tablename__ = "flows"
    __table_args__ = (
        Index("ix_flows_last_seen", "last_seen"),
        Index("ix_flows_source_last_seen", "source", "last_seen"),
        Index("ix_flows_destination_last_seen", "destination", "last_seen"),
        Index("ix_flows_verdict_last_seen", "verdict", "last_seen"),
    )

    id: int | None = Field(
        default=None, sa_column=Column(_ID, primary_key=True, autoincrement=True)
    )
    node: str = Field(max_length=2048)
    interval_start: datetime = Field(sa_type=UTCDateTime)
    interval_end: datetime = Field(sa_type=UTCDateTime)
    source: str | None = Field(default=None, max_length=2048)
    destination: str | None = Field(default=None, max_length=2048)
    source_address: str = Field(max_length=45)
    destination_address: str = Field(max_length=45)
    destination_port: int
    protocol: str = Field(max_length=8)
    verdict: str = Field(max_length=16)
    reason: str = Field(max_length=32)
    direction: str = Field(max_length=16)
    observer: str = Field(max_length=16)
    count: int = Field(sa_column=Column(BigInteger, nullable=False))
    first_seen: datetime = Field(sa_type=UTCDateTime)
    last_seen: datetime = Field(sa_type=UTCDateTime)
    l7_method: str | None = Field(default=None, max_length=16)
    l7_path: str | None = Field(default=None, max_length=1024)
    l7_host: str | None = Field(default=None, max_length=255)
    l7_status: int | None = None


_TABLE = FlowRow.metadata.tables["flows"]
# A Core insert of a whole batch: up to a thousand rows a batch, from every node.
_INSERT = insert(_TABLE)


def _flow(row: FlowRow) -> Flow:
    assert row.id is not None
    return Flow(
        id=row.id,
        node=row.node,
        interval_start=row.interval_start,
        interval_end=row.interval_end,
        source=row.source,
        destination=row.destination,
        source_address=row.source_address,
        destination_address=row.destination_address,
        destination_port=row.destination_port,
        protocol=row.protocol,
        verdict=Verdict(row.verdict),
        reason=Reason(row.reason),
        direction=Direction(row.direction),
        observer=Observer(row.observer),
        count=row.count,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        l7_method=row.l7_method,
        l7_path=row.l7_path,
        l7_host=row.l7_host,
        l7_status=row.l7_status,
    )


def create_flows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Store flows, given as column values (every column but `id`)."""
    if rows:
        session.connection().execute(_INSERT, list(rows))


def _identity(column: Any, wanted: str) -> ColumnElement[bool]:
    """A SPIFFE ID, or every ID under a prefix ending in `/`."""
    if wanted.endswith("/"):
        return col(column).startswith(wanted, autoescape=True)
    return col(column) == wanted


def list_flows(session: Session, where: FlowFilter) -> list[Flow]:
    """Flows matching `where`: with `after`, the next `limit` in id order (oldest first);
    without, the newest `limit`, newest first."""
    statement = select(FlowRow)
    if where.source is not None:
        statement = statement.where(_identity(FlowRow.source, where.source))
    if where.destination is not None:
        statement = statement.where(_identity(FlowRow.destination, where.destination))
    if where.verdict is not None:
        statement = statement.where(col(FlowRow.verdict) == where.verdict.value)
    if where.reason is not None:
        statement = statement.where(col(FlowRow.reason) == where.reason.value)
    if where.node is not None:
        statement = statement.where(col(FlowRow.node) == where.node)
    if where.since is not None:
        statement = statement.where(col(FlowRow.last_seen) >= where.since)
    if where.until is not None:
        statement = statement.where(col(FlowRow.last_seen) < where.until)
    if where.after is not None:
        statement = statement.where(col(FlowRow.id) > where.after).order_by(col(FlowRow.id))
    else:
        statement = statement.order_by(col(FlowRow.id).desc())
    return [_flow(row) for row in session.exec(statement.limit(where.limit))]


def list_traffic_edges(session: Session, since: datetime, limit: int) -> list[TrafficEdge]:
    """The flows seen since `since` between two known identities, summed by (source,
    destination, verdict, reason): at most `limit` groups, the busiest first."""
    c = _TABLE.c
    total = func.sum(c.count)
    statement = (
        sa_select(
            c.source, c.destination, c.verdict, c.reason, total, func.count(), func.max(c.last_seen)
        )
        .where(c.last_seen >= since, c.source.is_not(None), c.destination.is_not(None))
        .group_by(c.source, c.destination, c.verdict, c.reason)
        .order_by(total.desc())
        .limit(limit)
    )
    # max() keeps its argument's type, so last_seen comes back as an aware UTC datetime.
    return [
        TrafficEdge(
            str(src), str(dst), Verdict(verdict), Reason(reason), int(count), int(flows), last
        )
        for src, dst, verdict, reason, count, flows, last in session.execute(statement)
    ]


def count_flows(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(FlowRow)).one())


def prune_flows(session: Session, before: datetime, max_rows: int) -> int:
    """Delete flows last seen before `before`, then the oldest beyond `max_rows` (by id:
    the order they were stored in); returns how many were deleted."""
    removed = session.execute(delete(FlowRow).where(col(FlowRow.last_seen) < before))
    count = int(removed.rowcount or 0)  # type: ignore[attr-defined]
    cutoff = session.exec(
        select(FlowRow.id).order_by(col(FlowRow.id).desc()).offset(max_rows).limit(1)
    ).first()
    if cutoff is not None:
        extra = session.execute(delete(FlowRow).where(col(FlowRow.id) <= cutoff))
        count += int(extra.rowcount or 0)  # type: ignore[attr-defined]
    return count
