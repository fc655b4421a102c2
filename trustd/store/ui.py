"""Admin web UI tables (local admin accounts, their sessions and sign-in failure state),
their repository functions, and the read-only queries behind the UI's pages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, LargeBinary, delete, func
from sqlmodel import Field, Session, SQLModel, col, select

from trustd.domain.certificates import CertificateKind, CertificateStatus
from trustd.domain.nodes import NodeStatus
from trustd.store.audit import AuditEvent
from trustd.store.certificates import IssuedCertificate
from trustd.store.entries import RegistrationEntry
from trustd.store.nodes import Node
from trustd.store.types import UTCDateTime


class UiUser(SQLModel, table=True):
    """A local admin account. The password is kept only as an argon2id hash; the TOTP
    secret (RFC 6238) must be recoverable to verify codes, so it is sealed with the
    key-encryption key instead."""

    __tablename__ = "ui_users"

    id: str = Field(primary_key=True, max_length=32)
    username: str = Field(max_length=64, unique=True)
    role: str = Field(max_length=16)
    password_hash: str = Field(max_length=256)
    totp_secret: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    # The last RFC 6238 time step accepted: a code is good once (RFC 6238 §5.2).
    totp_last_step: int = 0
    disabled: bool = False
    # Consecutive failed sign-ins and the time before which none is tried (backoff).
    failed_logins: int = 0
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)


class UiSession(SQLModel, table=True):
    """A signed-in browser. Only the SHA-256 of the cookie value is stored, so a read of
    the database yields no usable session."""

    __tablename__ = "ui_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(max_length=32, foreign_key="ui_users.id", index=True)
    # Synchronizer token for every POST of this session (OWASP CSRF cheat sheet).
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


# -- accounts and sessions ---------------------------------------------------------------


def create_user(session: Session, user: UiUser) -> None:
    """Add a new account row (flushed with the transaction)."""
    session.add(user)


def fetch_user(session: Session, user_id: str) -> UiUser | None:
    return session.get(UiUser, user_id)


def fetch_user_by_name(session: Session, username: str) -> UiUser | None:
    return session.exec(select(UiUser).where(UiUser.username == username)).first()


def list_users(session: Session) -> list[UiUser]:
    """Every account, by username."""
    return list(session.exec(select(UiUser).order_by(col(UiUser.username))))


def update_user(session: Session, user: UiUser) -> None:
    """Write back the changed fields of an account read in this session."""
    session.add(user)


def create_session(session: Session, row: UiSession) -> None:
    session.add(row)


def fetch_session(session: Session, token_hash: str) -> UiSession | None:
    return session.get(UiSession, token_hash)


def delete_session(session: Session, token_hash: str) -> None:
    session.execute(delete(UiSession).where(col(UiSession.token_hash) == token_hash))


def delete_sessions_of(session: Session, user_id: str) -> None:
    """End every session of an account (it was disabled)."""
    session.execute(delete(UiSession).where(col(UiSession.user_id) == user_id))


def prune_sessions(session: Session, now: datetime) -> None:
    """Delete the sessions expired by `now` (on the `expires_at` index)."""
    session.execute(delete(UiSession).where(col(UiSession.expires_at) <= now))


# -- page queries ------------------------------------------------------------------------
# The UI's pages read tables other aggregates own (nodes, entries, certificates, decisions,
# audit events). These read-only queries live here, next to the pages' own tables: they are
# shaped by what a page shows (counts, keyset pages), not by the owning aggregate's needs.


@dataclass(frozen=True)
class DashboardCounts:
    nodes: int
    active_nodes: int
    entries: int
    svids_since: int


def count_dashboard(session: Session, svids_since: datetime) -> DashboardCounts:
    """The dashboard's counters in one round trip."""
    counts = session.exec(
        select(
            select(func.count()).select_from(Node).scalar_subquery(),
            select(func.count())
            .select_from(Node)
            .where(Node.status == NodeStatus.ACTIVE)
            .scalar_subquery(),
            select(func.count()).select_from(RegistrationEntry).scalar_subquery(),
            select(func.count())
            .select_from(IssuedCertificate)
            .where(
                col(IssuedCertificate.created_at) >= svids_since,
                col(IssuedCertificate.kind) == CertificateKind.X509_SVID,
            )
            .scalar_subquery(),
        )
    ).one()
    return DashboardCounts(int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3]))


def list_lagging_nodes(
    session: Session, revision: int, seen_before: datetime, limit: int
) -> list[Node]:
    """Active nodes whose agent acknowledged a sync revision below `revision`, or was last
    seen before `seen_before` (or never): furthest behind first, then longest unseen."""
    statement = (
        select(Node)
        .where(Node.status == NodeStatus.ACTIVE)
        .where(
            (col(Node.applied_revision) < revision)
            | col(Node.last_seen).is_(None)
            | (col(Node.last_seen) < seen_before)
        )
        .order_by(col(Node.applied_revision), col(Node.last_seen))
        .limit(limit)
    )
    return list(session.exec(statement))


def list_certificates_expiring(
    session: Session, now: datetime, until: datetime, kinds: Sequence[str], limit: int
) -> list[IssuedCertificate]:
    """Valid certificates of `kinds` that expire after `now` and by `until`, soonest
    first (on the `not_after` index)."""
    statement = (
        select(IssuedCertificate)
        .where(col(IssuedCertificate.not_after) > now)
        .where(col(IssuedCertificate.not_after) <= until)
        .where(IssuedCertificate.status == CertificateStatus.VALID)
        .where(col(IssuedCertificate.kind).in_(list(kinds)))
        .order_by(col(IssuedCertificate.not_after))
        .limit(limit)
    )
    return list(session.exec(statement))


def list_audit_events(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[AuditEvent]:
    """Audit events newest first, keyset-paged by id; `actor` and `action` are indexed
    equalities."""
    statement = select(AuditEvent)
    if actor:
        statement = statement.where(AuditEvent.actor == actor)
    if action:
        statement = statement.where(AuditEvent.action == action)
    if before is not None:
        statement = statement.where(col(AuditEvent.id) < before)
    statement = statement.order_by(col(AuditEvent.id).desc()).limit(limit)
    return list(session.exec(statement))


def list_entry_identities(session: Session, limit: int) -> list[str]:
    """Distinct SPIFFE IDs of registration entries in order, at most `limit`."""
    rows = session.exec(
        select(RegistrationEntry.spiffe_id)
        .distinct()
        .order_by(col(RegistrationEntry.spiffe_id))
        .limit(limit)
    ).all()
    return list(rows)
