"""Admin web UI tables: local admin accounts, their sessions and sign-in failure state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, LargeBinary
from sqlmodel import Field, SQLModel

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
