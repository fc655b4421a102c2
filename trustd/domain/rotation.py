"""CA key rotation: the key slots the rotation manager moves through their states, and the
outcome of one manual change. Values only; no I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class CaKeySlot:
    """One CA key (root, intermediate or JWT key) and where it stands in its rotation.

    The key material itself stays in the store: a slot carries what the timeline, the
    bundle and the rotation plan read.
    """

    id: int | None
    kid: str
    kind: str
    status: str
    key_type: str
    public_key_pem: str
    certificate_pem: str | None
    chain_pem: str
    upstream: bool
    not_before: datetime
    not_after: datetime
    created_at: datetime
    # The CA key that signed this certificate (an intermediate's root); None for roots.
    issuer_kid: str | None
    cross_certificate_pem: str | None
    status_changed_at: datetime | None


@dataclass(frozen=True)
class KeyChange:
    """The outcome of one manual key change: the key's new status and the bundle sequence
    that announces it."""

    kid: str
    kind: str
    status: str
    sequence: int
