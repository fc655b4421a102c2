"""Admin API tokens as the services hand them out: never with the secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from trustd.roles import Role


@dataclass(frozen=True)
class AdminToken:
    """An admin bearer token; `token_hash` is the SHA-256 of its secret part."""

    id: str
    name: str
    role: Role
    token_hash: str = field(repr=False)
    created_by: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
