"""The revision every agent-visible change advances."""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class SyncState(SQLModel, table=True):
    """One row: the revision every agent-visible change (entries, nodes, bundle) advances."""

    __tablename__ = "sync_state"

    id: int = Field(default=1, primary_key=True)
    revision: int = 0
