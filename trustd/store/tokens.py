"""Admin API tokens: only the hash of the secret is kept."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from trustd.store.types import UTCDateTime


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
