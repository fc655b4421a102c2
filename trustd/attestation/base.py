"""What every node attestor provides, and what it may ask of the attestation in progress.

Attestors hold no database session: what they need to consume single-use evidence comes
as narrow interfaces (`ReplayGuard`, `JoinTokenLedger`) bound by the caller to the
attestation's transaction, so a refused attestation consumes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pki.errors import TrustdError
from pki.selectors import Selector
from trustd.domain.nodes import JoinToken


class AttestationFailed(TrustdError):
    """Evidence that does not prove what it claims; the detail says which check failed."""

    title = "Attestation failed"


class EvidenceReplayed(AttestationFailed):
    """Single-use evidence was presented a second time."""


@dataclass(frozen=True)
class AttestationResult:
    # Path segments under spiffe://<td>/trustd/agent/<attestor>/, already URL-safe.
    agent_id: str
    selectors: frozenset[Selector]


class ReplayGuard(Protocol):
    def claim(self, digest: str, attestor: str, expires_at: datetime) -> None:
        """Record that the evidence with `digest` is used; the claim is kept until
        `expires_at`, when the evidence would be refused as expired anyway.

        Raises:
            EvidenceReplayed: the evidence was claimed before.
        """
        ...


class JoinTokenLedger(Protocol):
    def lock(self, token_id: str) -> JoinToken | None:
        """The join token `token_id`, held against concurrent attestations until this one
        ends; None if there is no such token."""
        ...

    def consume(self, token_id: str, used_at: datetime) -> None:
        """Mark the (locked) token used; undone if the attestation fails."""
        ...


@dataclass(frozen=True)
class AttestationContext:
    """What one attestation may consume, bound to its transaction."""

    replay: ReplayGuard
    join_tokens: JoinTokenLedger


class NodeAttestor(Protocol):
    name: str

    def attest(
        self, evidence: dict[str, Any], now: datetime, context: AttestationContext
    ) -> AttestationResult:
        """Verify `evidence` fully. Single-use evidence (a join token, a nonce, a token
        digest) is consumed through `context`, so it is undone if the attestation as a whole
        fails.

        Raises:
            AttestationFailed: the evidence is malformed, forged, expired or replayed.
        """
        ...


def require_str(evidence: dict[str, Any], key: str, limit: int = 16384) -> str:
    """The string `evidence[key]`.

    Raises:
        AttestationFailed: `key` is missing, not a string, or longer than `limit`.
    """
    value = evidence.get(key)
    if not isinstance(value, str) or not value:
        raise AttestationFailed(f"evidence needs a non-empty string {key!r}")
    if len(value) > limit:
        raise AttestationFailed(f"evidence {key!r} is longer than {limit} characters")
    return value
