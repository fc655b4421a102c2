"""What every node attestor provides, and what it may ask of the attestation in progress.

Attestors hold no database session: what they need to consume single-use evidence comes
as narrow interfaces (`ReplayGuard`, `JoinTokenLedger`) bound by the caller to the
attestation's transaction, so a refused attestation consumes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

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


@dataclass(frozen=True)
class Challenge:
    """What the first step of a challenge-response attestor hands the agent."""

    challenge: str
    # tpm: TPM2_MakeCredential's output (base64url), which only the node's EK opens.
    credential_blob: str | None = None
    encrypted_secret: str | None = None


@runtime_checkable
class ChallengeAttestor(NodeAttestor, Protocol):
    def challenge(self, evidence: dict[str, Any], now: datetime) -> Challenge:
        """Step one: check the evidence the agent starts with and return a challenge that
        only the key (or TPM) it claims can answer.

        Raises:
            AttestationFailed: the evidence is refused.
        """
        ...


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 §5), the encoding of binary evidence."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: str, what: str) -> bytes:
    """Raises:
    AttestationFailed: `value` is not base64url.
    """
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise AttestationFailed(f"{what} is not base64url") from None


def require_bytes(evidence: dict[str, Any], key: str, limit: int = 8192) -> bytes:
    """The base64url string `evidence[key]`, decoded.

    Raises:
        AttestationFailed: missing, not base64url, or longer than `limit` bytes encoded.
    """
    return b64url_decode(require_str(evidence, key, limit * 4 // 3 + 4), key)


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


# A challenge the server does not keep, so that any replica checks the answer: a random
# nonce, its expiry and what it was issued for (a certificate, an EK and AK pair), MAC'd
# with the server's key under a label of the attestor's own. Single use comes from the
# replay guard, which the attestor asks with the nonce once the answer is checked.
_NONCE, _EXPIRY, _MAC = 32, 8, 32


@dataclass(frozen=True)
class OpenedChallenge:
    body: bytes  # what the MAC covers: nonce, expiry, binding
    nonce: bytes
    expires_at: datetime


class SealedChallenges:
    """Challenges of one attestor, sealed and opened with the server's key."""

    def __init__(self, key: bytes, label: bytes, binding_size: int, ttl: timedelta) -> None:
        self._key = key
        self._label = label
        self._binding_size = binding_size
        self._ttl = ttl

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, self._label + body, hashlib.sha256).digest()

    def seal(self, binding: bytes, now: datetime) -> tuple[bytes, bytes]:
        """A new challenge bound to *binding*: (the challenge, the body its MAC covers)."""
        assert len(binding) == self._binding_size
        expiry = int((now + self._ttl).timestamp())
        body = secrets.token_bytes(_NONCE) + struct.pack(">Q", expiry) + binding
        return body + self._mac(body), body

    def open(self, raw: bytes, binding: bytes, now: datetime, issued_for: str) -> OpenedChallenge:
        """The challenge *raw*, checked: ours, unexpired, and issued for *binding*.

        Raises:
            AttestationFailed: malformed, not ours, expired, or issued for another
                *issued_for*.
        """
        if len(raw) != _NONCE + _EXPIRY + self._binding_size + _MAC:
            raise AttestationFailed("challenge is malformed")
        body, mac = raw[:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise AttestationFailed("challenge was not issued by this server")
        (expiry,) = struct.unpack(">Q", body[_NONCE : _NONCE + _EXPIRY])
        expires_at = datetime.fromtimestamp(expiry, UTC)
        if expires_at <= now:
            raise AttestationFailed("challenge has expired; ask for a new one")
        if not hmac.compare_digest(body[_NONCE + _EXPIRY :], binding):
            raise AttestationFailed(f"challenge was issued for another {issued_for}")
        return OpenedChallenge(body, body[:_NONCE], expires_at)
