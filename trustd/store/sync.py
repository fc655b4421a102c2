"""The revision every agent-visible change advances."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Field, Session, SQLModel


class SyncState(SQLModel, table=True):
    """One row: the revision every agent-visible change (entries, nodes, bundle) advances."""

    __tablename__ = "sync_state"

    id: int = Field(default=1, primary_key=True)
    revision: int = 0


_TABLE = SyncState.metadata.tables["sync_state"]


def update_revision(session: Session) -> int:
    """Advance the revision inside the caller's transaction; returns the new value.

    The row lock taken by the UPDATE orders concurrent changes, so revisions are unique.
    """
    row = (
        session.connection()
        .execute(
            update(_TABLE)
            .where(_TABLE.c.id == 1)
            .values(revision=_TABLE.c.revision + 1)
            .returning(_TABLE.c.revision)
        )
        .first()
    )
    if row is not None:
        return int(row[0])
    session.add(SyncState(id=1, revision=1))
    session.flush()
    return 1


def fetch_revision(session: Session) -> int:
    """The current revision (0 before the first change)."""
    state = session.get(SyncState, 1)
    return state.revision if state else 0
