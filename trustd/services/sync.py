"""The revision every agent-visible change advances, and the wake-up that follows it."""

from __future__ import annotations

from sqlmodel import Session

from trustd.bus import Bus
from trustd.store.sync import fetch_revision, update_revision

SYNC_CHANNEL = "sync"


def bump_revision(session: Session) -> int:
    """Advance the revision inside the caller's transaction; returns the new value."""
    return update_revision(session)


def current_revision(session: Session) -> int:
    """The revision as of the caller's transaction."""
    return fetch_revision(session)


def announce(bus: Bus, revision: int) -> None:
    """Wake every replica's long-polls (call after the commit)."""
    bus.publish(SYNC_CHANNEL, str(revision))
