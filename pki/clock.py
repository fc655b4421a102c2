"""Injected time.

Everything in ``pki`` that depends on "now" (certificate validity, JWT expiry) takes a
:class:`Clock` so tests can move time deterministically instead of sleeping or patching.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Return the current time as a timezone-aware UTC datetime."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def _require_aware(dt: datetime) -> datetime:
    # A naive datetime silently means "local time" to some APIs and "UTC" to others;
    # refusing it here keeps certificate and token times unambiguous.
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware, got naive {dt!r}")
    return dt.astimezone(UTC)


class FakeClock:
    """A clock that only moves when told to; for tests and simulations."""

    def __init__(self, start: datetime) -> None:
        """Start the clock at *start*.

        Raises:
            ValueError: *start* is a naive datetime.
        """
        self._now = _require_aware(start)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward (or backward, for a negative *delta*)."""
        self._now = self._now + delta

    def set(self, dt: datetime) -> None:
        """Jump the clock to *dt*.

        Raises:
            ValueError: *dt* is a naive datetime.
        """
        self._now = _require_aware(dt)
