"""Revocations: issued-certificate records as revocation sees them, the revocation feed
agents follow, and the CRL state every replica serves. Values only; no I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from trustd.domain.quarantines import Quarantine


class Revocable(Protocol):
    """What revoking a certificate needs to know of it: any issued-certificate record."""

    @property
    def serial(self) -> str: ...

    @property
    def issuer_kid(self) -> str: ...

    @property
    def spiffe_id(self) -> str | None: ...

    @property
    def not_after(self) -> datetime: ...


@dataclass(frozen=True)
class RevocationTarget:
    """A certificate to put on its issuer's CRL that is not an issued SVID (an
    intermediate CA certificate, listed on its root's CRL)."""

    serial: str
    issuer_kid: str
    spiffe_id: str | None
    not_after: datetime


@dataclass(frozen=True)
class Revocation:
    """One event of the revocation feed; `revision` orders the feed."""

    revision: int
    serial: str
    issuer_kid: str
    spiffe_id: str | None
    reason: str
    revoked_at: datetime
    not_after: datetime
    revoked_by: str


@dataclass(frozen=True)
class Revoked:
    """The outcome of one revoke call: the serials it revoked, the newest revision, and the
    quarantine it made of their identity (None: none)."""

    serials: tuple[str, ...]
    revision: int
    quarantine: Quarantine | None = None


@dataclass(frozen=True)
class RevocationFeed:
    """Revocations after a revision, for agents (`revision` is where to resume from)."""

    events: tuple[Revocation, ...]
    revision: int


@dataclass(frozen=True)
class OcspStatus:
    """What an OCSP answer needs of one issued certificate (RFC 6960 §2.2)."""

    issuer_kid: str
    status: str
    revoked_at: datetime | None
    revocation_reason: str | None


@dataclass(frozen=True)
class CrlRecord:
    """The newest CRL of one issuing key, as every replica serves it."""

    issuer_kid: str
    # RFC 5280 §5.2.3: monotonically increasing per issuer.
    number: int
    # The revocation revision the CRL reflects; a newer revision makes it stale.
    revision: int
    entries: int
    this_update: datetime
    next_update: datetime
    der: bytes
