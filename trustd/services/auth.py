"""Admin principals and bearer tokens (hashed at rest, compared in constant time)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from pki.clock import Clock
from trustd.domain.audit import AuditOutcome
from trustd.domain.tokens import AdminToken
from trustd.errors import InvalidRequest, NotFound, Unauthenticated
from trustd.roles import Role
from trustd.services.audit import AuditLog
from trustd.store.db import transaction
from trustd.store.tokens import (
    count_admin_tokens,
    create_admin_token,
    fetch_admin_token,
    list_admin_tokens,
    update_admin_token_revoked,
)

TOKEN_PREFIX = "trustd"  # noqa: S105 - the token format's fixed prefix, not a secret
_ID_BYTES = 8
_SECRET_BYTES = 32
# Compared against when a token id is unknown, so a miss costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"trustd-unknown-token").hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: `token:<id>` for bearer tokens, `local:uid=<n>` on the admin socket.
    What the role may do is the admin policy's decision (`trustd.services.authz`)."""

    name: str
    role: Role


@dataclass(frozen=True)
class CreatedToken:
    token: AdminToken
    secret: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(presented: str) -> tuple[str, str]:
    prefix, _, rest = presented.partition(".")
    token_id, _, secret = rest.partition(".")
    if prefix != TOKEN_PREFIX or not token_id or not secret:
        raise Unauthenticated("malformed admin token; expected trustd.<id>.<secret>")
    return token_id, secret


class AdminTokens:
    """Issues, checks and revokes admin bearer tokens."""

    # Accepted tokens are remembered this long per process, so a busy client does not cost a
    # database read per request; a revocation is immediate on the process that performs it
    # and reaches the others within this bound.
    CACHE_SECONDS = 5.0

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        audit: AuditLog,
        default_ttl: timedelta = timedelta(hours=8),
        max_ttl: timedelta = timedelta(days=30),
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._default_ttl = default_ttl
        self._max_ttl = max_ttl
        self._accepted: dict[str, tuple[float, AdminToken]] = {}

    def create(
        self, actor: Principal, name: str, role: Role, ttl: timedelta | None = None
    ) -> CreatedToken:
        """Create a token; its secret is returned once and only its hash is stored.

        Every token expires: a bearer secret that never does outlives the person or job it
        was made for. Without *ttl* the default lifetime applies.

        Raises:
            InvalidRequest: *ttl* is not positive or exceeds the longest lifetime allowed.
        """
        ttl = self._default_ttl if ttl is None else ttl
        if ttl <= timedelta(0):
            raise InvalidRequest("ttl must be positive")
        if ttl > self._max_ttl:
            raise InvalidRequest(
                f"ttl exceeds the longest admin token lifetime "
                f"({int(self._max_ttl.total_seconds())} s, setting admin_token_max_ttl)"
            )
        now = self._clock.now()
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        row = AdminToken(
            id=secrets.token_hex(_ID_BYTES),
            name=name,
            role=role,
            token_hash=_hash(secret),
            created_by=actor.name,
            created_at=now,
            expires_at=now + ttl,
        )
        with transaction(self._engine) as session:
            create_admin_token(session, row)
            self._audit.record(
                session, actor.name, "admin:token:created", target=row.id, details={"role": role}
            )
        return CreatedToken(row, f"{TOKEN_PREFIX}.{row.id}.{secret}")

    def remembered(self, presented: str) -> Principal | None:
        """The caller of a token this process accepted less than `CACHE_SECONDS` ago, still
        valid; None when only the database can tell (`authenticate`). Reads no database, so
        callers on the event loop may ask it first.

        Raises:
            Unauthenticated: a malformed token.
        """
        token_id, secret = _split(presented)
        cached = self._accepted.get(token_id)
        if cached is not None and time.monotonic() - cached[0] < self.CACHE_SECONDS:
            known = cached[1]
            if (
                hmac.compare_digest(_hash(secret), known.token_hash)
                and self._refusal(known, True, self._clock.now()) is None
            ):
                return Principal(f"token:{known.id}", Role(known.role))
        return None

    def authenticate(self, presented: str) -> Principal:
        """Raises:
        Unauthenticated: unknown, wrong, expired or revoked token (the reason is audited,
        the caller only learns that the token was refused).
        """
        remembered = self.remembered(presented)
        if remembered is not None:
            return remembered
        token_id, secret = _split(presented)
        self._accepted.pop(token_id, None)
        with transaction(self._engine) as session:
            row = fetch_admin_token(session, token_id)
            expected = row.token_hash if row else _DUMMY_HASH
            matches = hmac.compare_digest(_hash(secret), expected)
            reason = self._refusal(row, matches, self._clock.now())
            if reason is None and row is not None:
                self._accepted[token_id] = (time.monotonic(), row)
                return Principal(f"token:{row.id}", Role(row.role))
            self._audit.record(
                session,
                f"token:{token_id[:32]}",
                "admin:token:denied",
                outcome=AuditOutcome.DENIED,
                details={"reason": reason},
            )
        raise Unauthenticated("admin token refused")

    @staticmethod
    def _refusal(row: AdminToken | None, matches: bool, now: datetime) -> str | None:
        if row is None:
            return "unknown token"
        if not matches:
            return "wrong secret"
        if row.revoked_at is not None:
            return "revoked"
        if row.expires_at is not None and row.expires_at <= now:
            return "expired"
        return None

    def list(self) -> list[AdminToken]:
        """Every admin token (without secrets), oldest first."""
        with transaction(self._engine) as session:
            return list_admin_tokens(session)

    def revoke(self, actor: Principal, token_id: str) -> AdminToken:
        """Revoke the token at once (on this process; the others within `CACHE_SECONDS`)
        and return it; revoking a revoked token changes nothing.

        Raises:
            NotFound: no such token.
        """
        with transaction(self._engine) as session:
            row = fetch_admin_token(session, token_id)
            if row is None:
                raise NotFound(f"no admin token {token_id!r}")
            self._accepted.pop(token_id, None)
            if row.revoked_at is None:
                row = replace(row, revoked_at=self._clock.now())
                assert row.revoked_at is not None
                update_admin_token_revoked(session, row.id, row.revoked_at)
                self._audit.record(session, actor.name, "admin:token:revoked", target=row.id)
            return row

    def any_exist(self, session: Session) -> bool:
        """Whether any admin token exists, in the caller's transaction."""
        return count_admin_tokens(session, limit=1) > 0
