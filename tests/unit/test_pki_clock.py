"""The injected clocks and the error root."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from pki import errors
from pki.clock import Clock, FakeClock, SystemClock


def test_system_clock_is_aware_utc() -> None:
    clock: Clock = SystemClock()
    now = clock.now()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


def test_fake_clock_moves_only_when_told() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(start)
    assert clock.now() == start
    assert clock.now() == start
    clock.advance(timedelta(minutes=5))
    assert clock.now() == start + timedelta(minutes=5)
    clock.set(datetime(2031, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))))
    assert clock.now() == datetime(2031, 1, 1, 0, tzinfo=UTC)
    assert clock.now().tzinfo is UTC


def test_fake_clock_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2030, 1, 1))  # noqa: DTZ001
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.set(datetime(2030, 1, 1))  # noqa: DTZ001


ERROR_CLASSES = [
    errors.InvalidSpiffeId,
    errors.InvalidTrustDomain,
    errors.InvalidCsr,
    errors.WeakKey,
    errors.InvalidJwt,
    errors.InvalidSvid,
    errors.InvalidSvidParams,
    errors.KeyDecryptionError,
    errors.CaError,
    errors.InvalidBundle,
]


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_every_error_derives_from_trustd_error_with_a_title(cls: type[errors.TrustdError]) -> None:
    err = cls("something broke", value="x", limit=3)
    assert isinstance(err, errors.TrustdError)
    assert str(err) == "something broke"
    assert err.detail == "something broke"
    assert err.fields == {"value": "x", "limit": 3}
    assert cls.title and cls.title != errors.TrustdError.title


def test_titles_are_distinct() -> None:
    assert len({cls.title for cls in ERROR_CLASSES}) == len(ERROR_CLASSES)


def test_echo_truncates_repr() -> None:
    assert errors.echo("abc") == "'abc'"
    long = errors.echo("x" * 500)
    assert len(long) == 96
    assert long.endswith("…")
