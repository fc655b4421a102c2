"""Admin API tokens: only the hash of the secret is kept."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, Session, SQLModel, col, func, select

from trustd.domain import tokens as domain
from trustd.errors import NotFound
from trustd.roles import Role
from trustd.store.types import UTCDateTime, row_values, to_domain


class AdminToken(SQLModel, table=True):
    __tablename__ = "admin_tokens"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    role: str = Field(max_length=32)
    # SHA-256 of the secret part: the secret is 256 random bits, so a fast hash is enough
    # and a stolen database yields no usable token.
    token_hash: str = Field(max_length=64)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


def _token(row: AdminToken) -> domain.AdminToken:
    return to_domain(domain.AdminToken, row, role=Role(row.role))


def create_admin_token(session: Session, token: domain.AdminToken) -> None:
    """Add `token` to `session`."""
    session.add(AdminToken(**row_values(token)))


def fetch_admin_token(session: Session, token_id: str) -> domain.AdminToken | None:
    """The admin token `token_id`, if it exists."""
    row = session.get(AdminToken, token_id)
    return _token(row) if row is not None else None


def list_admin_tokens(session: Session) -> list[domain.AdminToken]:
    """Every admin token, oldest first."""
    return [
        _token(r) for r in session.exec(select(AdminToken).order_by(col(AdminToken.created_at)))
    ]


def update_admin_token_revoked(session: Session, token_id: str, revoked_at: datetime) -> None:
    """Mark the admin token `token_id` revoked at `revoked_at`.

    Raises:
        NotFound: no such token.
    """
    row = session.get(AdminToken, token_id)
    if row is None:
        raise NotFound(f"no admin token {token_id!r}")
    row.revoked_at = revoked_at
    session.add(row)


def count_admin_tokens(session: Session, *, limit: int | None = None) -> int:
    """How many admin tokens exist (counting at most `limit`)."""
    statement = select(AdminToken.id)
    if limit is not None:
        statement = statement.limit(limit)
    return int(session.exec(select(func.count()).select_from(statement.subquery())).one())
