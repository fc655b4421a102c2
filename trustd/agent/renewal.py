"""When to renew an SVID: a pure function of the clock and the certificate's validity.

Renewal starts at about half the lifetime (as SPIRE's agent does), spread by a per-SVID
jitter so a thousand SVIDs issued together are not renewed in the same second.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

RENEW_AT = 0.5
JITTER = 0.1


def jitter_fraction(key: str) -> float:
    """A stable value in [0, 1) per SVID, so the schedule does not change between checks."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def renew_at(not_before: datetime, not_after: datetime, key: str) -> datetime:
    """The moment to start renewing: between 40% and 50% of the lifetime for the defaults."""
    lifetime = not_after - not_before
    fraction = RENEW_AT - JITTER * jitter_fraction(key)
    return not_before + timedelta(seconds=lifetime.total_seconds() * fraction)


def renewal_due(now: datetime, not_before: datetime, not_after: datetime, key: str) -> bool:
    return now >= renew_at(not_before, not_after, key)
