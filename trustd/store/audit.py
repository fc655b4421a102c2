"""The audit log: one row per security-relevant action."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, insert
from sqlmodel import Field, Session, SQLModel

from trustd.domain.audit import AuditOutcome
from trustd.store.types import Insertion, UTCDateTime


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


__all__ = ["AuditEvent", "AuditOutcome", "audit_event_insertion", "create_audit_event"]


# A Core insert: audit rows are written on every issuance, and the ORM's unit of work costs
# more than the insert itself.
_INSERT = insert(AuditEvent.metadata.tables["audit_events"])


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
    """The audit row as an insert to run in the action's transaction (or a group commit)."""
    return (
        _INSERT,
        {
            "at": at,
            "actor": actor,
            "action": action,
            "target": target,
            "outcome": outcome,
            "request_id": request_id,
            "details": details,
        },
    )


def create_audit_event(session: Session, insertion: Insertion) -> None:
    """Add the audit row `insertion` (see `audit_event_insertion`) to `session`."""
    session.connection().execute(*insertion)
