"""Quarantined identities: a SPIFFE ID every node cuts off (the kernel drops its traffic,
agents neither serve nor mint its SVIDs) until it is released or its `until` passes, and
the overview of one identity (its SVIDs, revoked serials, quarantine, the nodes that applied
it). Values only; no I/O here.

Quarantine is not revocation: revoking a certificate puts that certificate on the CRL and
OCSP and its holder gets a new one; quarantining an identity refuses the identity itself,
whatever certificate it presents.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from trustd.domain.certificates import CertificateRecord

# Audit tags (`subject:object:action`).
QUARANTINED = "identity:quarantine:created"
RELEASED = "identity:quarantine:released"
EXPIRED = "identity:quarantine:expired"
MAX_REASON = 512


@dataclass(frozen=True)
class Quarantine:
    """One quarantined SPIFFE ID: who quarantined it, why, and until when (None: until
    released)."""

    spiffe_id: str
    reason: str
    quarantined_by: str
    quarantined_at: datetime
    until: datetime | None
    # The first verdict revision that carried it to the agents (None: not compiled yet);
    # an agent that applied this revision or a later one enforces it.
    verdict_revision: int | None = None

    def active(self, now: datetime) -> bool:
        """Whether it is still in force at *now*."""
        return self.until is None or now < self.until


@dataclass(frozen=True)
class Release:
    """The outcome of releasing a quarantine: what was released, and by whom."""

    quarantine: Quarantine
    released_by: str
    released_at: datetime


@dataclass(frozen=True)
class IdentityOverview:
    """What trustd knows of one SPIFFE ID."""

    spiffe_id: str
    # Registration entries naming it.
    entries: int
    # Its unexpired valid SVIDs, and its revoked certificates that have not expired.
    svids: tuple[CertificateRecord, ...]
    revoked: tuple[CertificateRecord, ...]
    quarantine: Quarantine | None
    # The nodes whose agents applied the verdict revision that carries the quarantine.
    applied_by: tuple[str, ...] = ()
