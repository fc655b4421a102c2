"""The audit log: one row per security-relevant action."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from trustd.domain.audit import AuditOutcome
from trustd.store.types import UTCDateTime


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


__all__ = ["AuditEvent", "AuditOutcome"]
