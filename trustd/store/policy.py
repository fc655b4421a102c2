"""Policy tables: bundle revisions, which one is active, and the decision log; with the
functions that read and write them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, delete, func, insert, text
from sqlmodel import Field, Session, SQLModel, col, select

from trustd.domain.policy import DecisionFilter, LoggedDecision, PolicyRevisionRecord
from trustd.store.types import UTCDateTime


class PolicyRevision(SQLModel, table=True):
    """One immutable policy bundle (modules + data). `revision` only grows."""

    __tablename__ = "policy_revisions"

    revision: int | None = Field(default=None, primary_key=True)
    # The bundle manifest's own `revision` string, kept for OPA tooling.
    label: str = Field(default="", max_length=256)
    digest: str = Field(max_length=64, index=True)
    modules: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    manifest_metadata: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    signed: bool = False
    note: str = Field(default="", max_length=512)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)


class PolicyActivation(SQLModel, table=True):
    """Each activation, newest last: the active revision is the newest row; rolling back
    activates the revision that was active before it."""

    __tablename__ = "policy_activations"

    id: int | None = Field(default=None, primary_key=True)
    revision: int = Field(foreign_key="policy_revisions.revision", index=True)
    activated_by: str = Field(max_length=256)
    activated_at: datetime = Field(sa_type=UTCDateTime)


class PolicyDecision(SQLModel, table=True):
    """One decision-log entry; the input is stored after the policy's masks applied."""

    __tablename__ = "policy_decisions"
    __table_args__ = (
        Index("ix_policy_decisions_path_at", "path", "at"),
        Index("ix_policy_decisions_caller_at", "caller", "at"),
        # Who called whom, for the decision log's filters; the JSON input has no index.
        Index("ix_policy_decisions_source_destination_at", "source", "destination", "at"),
        Index("ix_policy_decisions_destination_at", "destination", "at"),
        Index("ix_policy_decisions_verdict_at", "verdict", "at"),
    )

    decision_id: str = Field(primary_key=True, max_length=36)
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    path: str = Field(max_length=512)
    input: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    result: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    defined: bool = True
    # SHA-256 of the canonical JSON result, so "every decision that returned false" is an
    # indexed equality, whatever the result's size.
    result_hash: str = Field(max_length=64, index=True)
    revision: int | None = Field(default=None, index=True)
    latency_us: int
    caller: str = Field(max_length=256)
    # The input's `source` and `destination` (after masking), when they are strings.
    source: str | None = Field(default=None, max_length=2048)
    destination: str | None = Field(default=None, max_length=2048)
    # Allowed (true) or denied (false) where the result says so, whatever its shape.
    verdict: bool | None = None


# ---------------------------------------------------------------------- revisions


def _revision(row: PolicyRevision) -> PolicyRevisionRecord:
    assert row.revision is not None  # stored rows have their number
    return PolicyRevisionRecord(**row.model_dump())


def create_policy_revision(
    session: Session,
    *,
    label: str,
    digest: str,
    modules: dict[str, str],
    data: dict[str, Any],
    manifest_metadata: dict[str, Any],
    signed: bool,
    note: str,
    created_by: str,
    created_at: datetime,
) -> PolicyRevisionRecord:
    """Store a bundle as the next revision and return it with its number."""
    row = PolicyRevision(
        label=label,
        digest=digest,
        modules=modules,
        data=data,
        manifest_metadata=manifest_metadata,
        signed=signed,
        note=note,
        created_by=created_by,
        created_at=created_at,
    )
    session.add(row)
    session.flush()  # the number comes from the database
    return _revision(row)


def fetch_policy_revision(session: Session, revision: int) -> PolicyRevisionRecord | None:
    """The stored revision *revision*, or None."""
    row = session.get(PolicyRevision, revision)
    return _revision(row) if row is not None else None


def list_policy_revisions(session: Session, limit: int = 100) -> list[PolicyRevisionRecord]:
    """The newest *limit* revisions, newest first."""
    rows = session.exec(
        select(PolicyRevision).order_by(col(PolicyRevision.revision).desc()).limit(limit)
    )
    return [_revision(row) for row in rows]


def lock_policy_writes(session: Session) -> None:
    """Serialise changes made from the active revision (a module or data document written
    through the OPA API) across replicas until the transaction ends, so two replicas never
    both amend the same revision and lose one change. SQLite serves one process, whose
    writers a thread lock already serialises."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _AMEND_LOCK}
        )


# An advisory lock key of its own (initialisation and verdict compilation have theirs).
_AMEND_LOCK = 7427358


# ---------------------------------------------------------------------- activations


def create_policy_activation(
    session: Session, revision: int, activated_by: str, activated_at: datetime
) -> None:
    """Make *revision* the active one (the newest activation wins)."""
    session.add(
        PolicyActivation(revision=revision, activated_by=activated_by, activated_at=activated_at)
    )


def fetch_active_policy_revision(session: Session) -> int | None:
    """The number of the active revision, or None before the first activation."""
    return session.exec(
        select(col(PolicyActivation.revision)).order_by(col(PolicyActivation.id).desc()).limit(1)
    ).first()


def list_policy_activations(session: Session, limit: int = 50) -> list[int]:
    """The revisions of the newest *limit* activations, newest first."""
    return list(
        session.exec(
            select(col(PolicyActivation.revision))
            .order_by(col(PolicyActivation.id).desc())
            .limit(limit)
        )
    )


# ---------------------------------------------------------------------- the decision log


def _decision(row: PolicyDecision) -> LoggedDecision:
    return LoggedDecision(**row.model_dump())


def create_policy_decisions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Append decision-log entries, given as column values."""
    # One executemany through SQLAlchemy Core: the ORM's per-object bookkeeping would
    # cost more than the decisions being logged.
    session.connection().execute(insert(PolicyDecision), list(rows))


def list_policy_decisions(session: Session, where: DecisionFilter) -> list[LoggedDecision]:
    """Logged decisions matching *where*, newest first (by time, then id), a page of
    `where.limit` after `where.before`."""
    statement = select(PolicyDecision)
    if where.since is not None:
        statement = statement.where(col(PolicyDecision.at) >= where.since)
    if where.until is not None:
        statement = statement.where(col(PolicyDecision.at) < where.until)
    if where.path is not None:
        statement = statement.where(PolicyDecision.path == where.path)
    if where.caller is not None:
        statement = statement.where(PolicyDecision.caller == where.caller)
    if where.result_hash is not None:
        statement = statement.where(PolicyDecision.result_hash == where.result_hash)
    if where.verdict is not None:
        statement = statement.where(PolicyDecision.verdict == where.verdict)
    if where.source is not None:
        statement = statement.where(PolicyDecision.source == where.source)
    if where.destination is not None:
        statement = statement.where(PolicyDecision.destination == where.destination)
    if where.before is not None:
        at, decision_id = where.before
        # The bare `at <= cursor` bound lets the planner range-scan the `at` index; the OR
        # alone would make it filter every row.
        statement = statement.where(
            col(PolicyDecision.at) <= at,
            (col(PolicyDecision.at) < at) | (col(PolicyDecision.decision_id) < decision_id),
        )
    statement = statement.order_by(
        col(PolicyDecision.at).desc(), col(PolicyDecision.decision_id).desc()
    ).limit(where.limit)
    return [_decision(row) for row in session.exec(statement)]


def list_policy_decisions_since(
    session: Session,
    since: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[LoggedDecision]:
    """A page of logged decisions at or after *since*, oldest first (by time, then id),
    starting after the (time, decision id) *after* of the previous page."""
    statement = select(PolicyDecision).order_by(
        col(PolicyDecision.at), col(PolicyDecision.decision_id)
    )
    if since is not None:
        statement = statement.where(col(PolicyDecision.at) >= since)
    if after is not None:
        at, decision_id = after
        statement = statement.where(
            (col(PolicyDecision.at) > at)
            | ((col(PolicyDecision.at) == at) & (col(PolicyDecision.decision_id) > decision_id))
        )
    return [_decision(row) for row in session.exec(statement.limit(limit))]


def count_policy_decisions_since(session: Session, since: datetime) -> tuple[int, int]:
    """How many decisions were logged at or after `since`, and how many of them denied
    (their verdict is false): one statement, each count a range scan of an index (`at`,
    and `verdict, at`) rather than a read of the rows."""
    at = col(PolicyDecision.at)
    row = session.exec(
        select(
            select(func.count()).select_from(PolicyDecision).where(at >= since).scalar_subquery(),
            select(func.count())
            .select_from(PolicyDecision)
            .where(col(PolicyDecision.verdict) == False, at >= since)  # noqa: E712 - SQL equality
            .scalar_subquery(),
        )
    ).one()
    return int(row[0]), int(row[1])


def count_policy_decisions(session: Session) -> int:
    """How many decisions the log holds."""
    return session.exec(select(func.count()).select_from(PolicyDecision)).one()


def prune_policy_decisions(session: Session, before: datetime, max_rows: int) -> int:
    """Delete decisions older than *before*, then the oldest beyond *max_rows*; returns how
    many were deleted."""
    removed = session.execute(delete(PolicyDecision).where(col(PolicyDecision.at) < before))
    count = int(removed.rowcount or 0)  # type: ignore[attr-defined]
    if count_policy_decisions(session) > max_rows:
        cutoff = session.exec(
            select(PolicyDecision.at)
            .order_by(col(PolicyDecision.at).desc())
            .offset(max_rows)
            .limit(1)
        ).first()
        if cutoff is not None:
            extra = session.execute(delete(PolicyDecision).where(col(PolicyDecision.at) <= cutoff))
            count += int(extra.rowcount or 0)  # type: ignore[attr-defined]
    return count
