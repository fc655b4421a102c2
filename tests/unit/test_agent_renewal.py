"""When SVIDs renew: a pure function of the clock and the validity window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pki.clock import FakeClock
from trustd.agent.renewal import renew_at, renewal_due

START = datetime(2026, 1, 1, tzinfo=UTC)


@given(st.integers(min_value=60, max_value=86400 * 30), st.text(min_size=1, max_size=20))
def test_renewal_starts_between_40_and_50_percent_of_life(seconds: int, key: str) -> None:
    not_after = START + timedelta(seconds=seconds)
    at = renew_at(START, not_after, key)
    assert (
        START + timedelta(seconds=seconds * 0.4) <= at <= START + timedelta(seconds=seconds * 0.5)
    )
    assert renew_at(START, not_after, key) == at  # stable for the same SVID


def test_due_follows_the_fake_clock() -> None:
    clock = FakeClock(START)
    not_after = START + timedelta(hours=1)
    assert not renewal_due(clock.now(), START, not_after, "e1:1")
    clock.advance(timedelta(minutes=23))
    assert not renewal_due(clock.now(), START, not_after, "e1:1")
    clock.advance(timedelta(minutes=7))
    assert renewal_due(clock.now(), START, not_after, "e1:1")


def test_jitter_spreads_a_thousand_svids_issued_together() -> None:
    not_after = START + timedelta(hours=1)
    moments = {renew_at(START, not_after, f"entry-{i}:serial") for i in range(1000)}
    spread = max(moments) - min(moments)
    assert spread > timedelta(minutes=5)
