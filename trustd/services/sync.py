"""The revision every agent-visible change advances, and the wake-up that follows it."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session

from trustd.bus import Bus
from trustd.store.sync import SyncState

SYNC_CHANNEL = "sync"
_TABLE = SyncState.metadata.tables["sync_state"]


def bump_revision(session: Session) -> int:
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


def current_revision(session: Session) -> int:
    state = session.get(SyncState, 1)
    return state.revision if state else 0


def announce(bus: Bus, revision: int) -> None:
    """Wake every replica's long-polls (call after the commit)."""
    bus.publish(SYNC_CHANNEL, str(revision))
