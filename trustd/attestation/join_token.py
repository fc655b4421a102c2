"""`join_token`: a single-use secret created by an administrator (`trustd token create`)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

from pki.selectors import Selector
from trustd.attestation.base import (
    AttestationContext,
    AttestationFailed,
    AttestationResult,
    require_str,
)

_DUMMY = hashlib.sha256(b"trustd-unknown-join-token").hexdigest()


def hash_secret(secret: str) -> str:
    """The SHA-256 of a join token's secret part: what is stored and compared."""
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(presented: str) -> tuple[str, str]:
    """Raises:
    AttestationFailed: not of the form <id>.<secret>.
    """
    token_id, sep, secret = presented.partition(".")
    if not sep or not token_id or not secret or len(token_id) > 32:
        raise AttestationFailed("join token must look like <id>.<secret>")
    return token_id, secret


class JoinTokenAttestor:
    name = "join_token"

    def attest(
        self, evidence: dict[str, Any], now: datetime, context: AttestationContext
    ) -> AttestationResult:
        token_id, secret = split_token(require_str(evidence, "token", 256))
        # Locked: two agents racing with one token cannot both consume it.
        row = context.join_tokens.lock(token_id)
        matches = hmac.compare_digest(hash_secret(secret), row.token_hash if row else _DUMMY)
        if row is None or not matches:
            raise AttestationFailed("join token is not valid")
        if row.used_at is not None:
            raise AttestationFailed("join token was already used")
        if row.expires_at <= now:
            raise AttestationFailed("join token has expired")
        context.join_tokens.consume(row.id, now)
        selectors = {Selector("join_token", f"id:{row.id}")}
        selectors.update(Selector.parse(s) for s in row.selectors)
        return AttestationResult(agent_id=row.id, selectors=frozenset(selectors))
