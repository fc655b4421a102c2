"""Quarantined identities: one row per SPIFFE ID in quarantine, with the functions that read
and write them. A release deletes the row; the audit log keeps the history."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime

from sqlalchemy import ColumnElement, or_, update
from sqlmodel import Field, Session, SQLModel, col, select

from trustd.domain.quarantines import MAX_REASON, Quarantine
from trustd.store.types import UTCDateTime


class IdentityQuarantine(SQLModel, table=True):
    """A SPIFFE ID every node cuts off until `until` (NULL: until released)."""

    __tablename__ = "identity_quarantines"

    spiffe_id: str = Field(primary_key=True, max_length=2048)
    reason: str = Field(max_length=MAX_REASON)
    quarantined_by: str = Field(max_length=256)
    quarantined_at: datetime = Field(sa_type=UTCDateTime)
    until: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    # The first verdict revision that carried it (set by the verdict compiler).
    verdict_revision: int | None = None


def _quarantine(row: IdentityQuarantine) -> Quarantine:
    return Quarantine(**row.model_dump())


def _in_force(now: datetime) -> ColumnElement[bool]:
    return or_(col(IdentityQuarantine.until).is_(None), col(IdentityQuarantine.until) > now)


def create_quarantine(session: Session, quarantine: Quarantine) -> None:
    """Add *quarantine*.

    Raises:
        IntegrityError: at flush, when the SPIFFE ID is already quarantined.
    """
    session.add(IdentityQuarantine(**asdict(quarantine)))
    session.flush()


def fetch_quarantine(
    session: Session, spiffe_id: str, *, for_update: bool = False
) -> Quarantine | None:
    """The quarantine of *spiffe_id*, in force or expired but not yet released."""
    row = session.get(IdentityQuarantine, spiffe_id, with_for_update=for_update)
    return _quarantine(row) if row is not None else None


def list_quarantines(session: Session, now: datetime | None = None) -> list[Quarantine]:
    """Every quarantine ordered by SPIFFE ID; with *now*, only those still in force."""
    query = select(IdentityQuarantine).order_by(col(IdentityQuarantine.spiffe_id))
    if now is not None:
        query = query.where(_in_force(now))
    return [_quarantine(row) for row in session.exec(query)]


def list_expired_quarantines(session: Session, now: datetime) -> list[Quarantine]:
    """Quarantines whose `until` has passed, locked until the transaction ends."""
    query = (
        select(IdentityQuarantine)
        .where(col(IdentityQuarantine.until) <= now)
        .order_by(col(IdentityQuarantine.spiffe_id))
        .with_for_update()
    )
    return [_quarantine(row) for row in session.exec(query)]


def list_quarantined_spiffe_ids(session: Session, now: datetime) -> set[str]:
    """The SPIFFE IDs quarantined at *now* (what the verdicts deny)."""
    query = select(IdentityQuarantine.spiffe_id).where(_in_force(now))
    return set(session.exec(query).all())


def update_quarantines_compiled(session: Session, spiffe_ids: Iterable[str], revision: int) -> None:
    """Note verdict *revision* as the first to carry the quarantines of *spiffe_ids* that
    no revision carried yet."""
    wanted = sorted(spiffe_ids)
    if not wanted:
        return
    session.execute(
        update(IdentityQuarantine)
        .where(col(IdentityQuarantine.spiffe_id).in_(wanted))
        .where(col(IdentityQuarantine.verdict_revision).is_(None))
        .values(verdict_revision=revision)
    )


def delete_quarantine(session: Session, spiffe_id: str) -> bool:
    """Release *spiffe_id*; returns whether it was quarantined."""
    row = session.get(IdentityQuarantine, spiffe_id)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True
