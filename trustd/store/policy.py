"""Policy tables: bundle revisions, which one is active, and the decision log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

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
