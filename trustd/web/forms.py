"""Reading the UI's form and query values."""

from __future__ import annotations

from datetime import UTC, datetime

from trustd.errors import InvalidRequest


def lines(text: str) -> list[str]:
    """The non-empty values of a textarea, one a line or comma-separated."""
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


def when(value: str | None) -> datetime | None:
    """A `datetime-local` form value, read as UTC.

    Raises:
        InvalidRequest: not a date and time.
    """
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{value!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
