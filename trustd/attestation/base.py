"""What every node attestor provides."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session

from pki.errors import TrustdError
from pki.selectors import Selector


class AttestationFailed(TrustdError):
    """Evidence that does not prove what it claims; the detail says which check failed."""

    title = "Attestation failed"


@dataclass(frozen=True)
class AttestationResult:
    # Path segments under spiffe://<td>/trustd/agent/<attestor>/, already URL-safe.
    agent_id: str
    selectors: frozenset[Selector]


class NodeAttestor(Protocol):
    name: str

    def attest(
        self, session: Session, evidence: dict[str, Any], now: datetime
    ) -> AttestationResult:
        """Verify `evidence` fully. Consuming single-use evidence (a join token, a nonce) is
        done in `session`, so it is undone if the attestation as a whole fails.

        Raises:
            AttestationFailed: the evidence is malformed, forged, expired or replayed.
        """
        ...


def require_str(evidence: dict[str, Any], key: str, limit: int = 16384) -> str:
    """Raises:
    AttestationFailed: `key` is missing, not a string, or longer than `limit`.
    """
    value = evidence.get(key)
    if not isinstance(value, str) or not value:
        raise AttestationFailed(f"evidence needs a non-empty string {key!r}")
    if len(value) > limit:
        raise AttestationFailed(f"evidence {key!r} is longer than {limit} characters")
    return value
