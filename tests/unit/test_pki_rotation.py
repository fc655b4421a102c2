"""The rotation state machine and its timing functions (pure: no clock is read)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pki.ca import Authority, create_cross_certificate, create_intermediate, create_root
from pki.clock import FakeClock
from pki.errors import CaError, InvalidSvid, InvalidTransition
from pki.keys import KeyType, generate_private_key
from pki.rotation import (
    Activate,
    Prepare,
    Retire,
    Slot,
    SlotStatus,
    activation_threshold,
    check_transition,
    plan,
    preparation_threshold,
    should_activate_next,
    should_prepare_next,
)
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import X509SvidParams, issue_x509_svid, verify_x509_svid

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LIFE = timedelta(hours=6)
HINT = timedelta(minutes=5)


def _slot(kid: str, status: SlotStatus, start: datetime = T0, **kw: object) -> Slot:
    values: dict[str, object] = {
        "kid": kid,
        "kind": "jwt",
        "status": status,
        "not_before": start,
        "not_after": start + LIFE,
        "published_at": start,
    }
    values.update(kw)
    return Slot(**values)  # type: ignore[arg-type]


def test_thresholds_are_half_and_five_sixths_of_the_life() -> None:
    assert preparation_threshold(T0, T0 + LIFE) == T0 + timedelta(hours=3)
    assert activation_threshold(T0, T0 + LIFE) == T0 + timedelta(hours=5)
    assert not should_prepare_next(T0 + timedelta(hours=3) - timedelta(seconds=1), T0, T0 + LIFE)
    assert should_prepare_next(T0 + timedelta(hours=3), T0, T0 + LIFE)
    assert not should_activate_next(T0 + timedelta(hours=4, minutes=59), T0, T0 + LIFE)
    assert should_activate_next(T0 + timedelta(hours=5), T0, T0 + LIFE)


@given(st.integers(min_value=6, max_value=10**9))
def test_prepare_always_comes_before_activate_inside_the_validity(seconds: int) -> None:
    end = T0 + timedelta(seconds=seconds)
    assert T0 < preparation_threshold(T0, end) < activation_threshold(T0, end) < end


def test_plan_walks_a_key_through_its_life() -> None:
    active = _slot("a", SlotStatus.ACTIVE)
    assert plan(T0 + timedelta(hours=1), [active], "jwt", HINT) == []
    assert plan(T0 + timedelta(hours=3), [active], "jwt", HINT) == [Prepare("jwt")]
    prepared = _slot("b", SlotStatus.PREPARED, T0 + timedelta(hours=3))
    assert plan(T0 + timedelta(hours=4), [active, prepared], "jwt", HINT) == []
    at = T0 + timedelta(hours=5)
    assert plan(at, [active, prepared], "jwt", HINT) == [Activate("b", "jwt", "a")]
    # Other kinds are left alone.
    assert plan(at, [active, prepared], "x509-root", HINT) == [Prepare("x509-root")]


def test_a_key_is_not_activated_before_it_had_time_to_propagate() -> None:
    active = _slot("a", SlotStatus.ACTIVE)
    late = _slot("b", SlotStatus.PREPARED, published_at=T0 + timedelta(hours=5))
    at = T0 + timedelta(hours=5, minutes=1)
    assert plan(at, [active, late], "jwt", HINT) == []
    assert plan(at + HINT, [active, late], "jwt", HINT) == [Activate("b", "jwt", "a")]
    # ... unless the active key has expired: then nothing it signs verifies anyway.
    assert plan(T0 + LIFE, [active, late], "jwt", timedelta(days=1)) == [Activate("b", "jwt", "a")]


def test_plan_retires_only_what_is_retirable_and_recovers_a_missing_active_key() -> None:
    slots = [
        _slot("old", SlotStatus.OLD, retirable=True),
        _slot("kept", SlotStatus.OLD, retirable=False),
        _slot("bad", SlotStatus.TAINTED, retirable=True),
    ]
    assert plan(T0, slots, "jwt", HINT) == [
        Retire("old", "jwt"),
        Retire("bad", "jwt"),
        Prepare("jwt"),
    ]
    waiting = _slot("p", SlotStatus.PREPARED)
    assert plan(T0, [waiting], "jwt", HINT) == [Activate("p", "jwt", None)]


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (SlotStatus.PREPARED, SlotStatus.ACTIVE),
        (SlotStatus.ACTIVE, SlotStatus.OLD),
        (SlotStatus.OLD, SlotStatus.TAINTED),
        (SlotStatus.OLD, SlotStatus.RETIRED),
        (SlotStatus.TAINTED, SlotStatus.REVOKED),
        (SlotStatus.TAINTED, SlotStatus.RETIRED),
    ],
)
def test_allowed_transitions(current: SlotStatus, target: SlotStatus) -> None:
    check_transition("k", current, target)


@pytest.mark.parametrize(
    ("current", "target", "hint"),
    [
        (SlotStatus.ACTIVE, SlotStatus.TAINTED, "activate a replacement first"),
        (SlotStatus.OLD, SlotStatus.REVOKED, "taint it first"),
        (SlotStatus.OLD, SlotStatus.ACTIVE, "prepare one first"),
        (SlotStatus.REVOKED, SlotStatus.ACTIVE, "prepare one first"),
        (SlotStatus.RETIRED, SlotStatus.OLD, "cannot become old"),
    ],
)
def test_refused_transitions_say_what_to_do(
    current: SlotStatus, target: SlotStatus, hint: str
) -> None:
    with pytest.raises(InvalidTransition, match=hint) as caught:
        check_transition("k1", current, target)
    assert caught.value.fields == {"kid": "k1", "current": current, "target": target}


# EC -> EC, and EC -> ML-DSA-65: moving a trust domain to ML-DSA, the old EC root
# cross-signs the new one, so verifiers still holding only the EC root keep verifying.
@pytest.mark.parametrize(
    "new_type", [KeyType.EC_P256, KeyType.ML_DSA_65], ids=["ec-to-ec", "ec-to-ml-dsa"]
)
def test_cross_certificate_lets_the_old_root_verify_the_new_roots_svids(
    new_type: KeyType,
) -> None:
    td = TrustDomain.parse("example.org")
    clock = FakeClock(T0)
    old_key, new_key = generate_private_key(KeyType.EC_P256), generate_private_key(new_type)
    old_root = create_root(td, old_key, clock, timedelta(days=10))
    new_root = create_root(td, new_key, clock, timedelta(days=10))
    cross = create_cross_certificate(
        new_root, new_key, Authority(old_root, old_key, (), old_root), clock
    )
    inter_key = generate_private_key(new_type)
    inter = create_intermediate(
        td, inter_key, Authority(new_root, new_key, (), new_root), clock, timedelta(days=1)
    )
    leaf = issue_x509_svid(
        Authority(inter, inter_key, (), new_root),
        X509SvidParams(
            SpiffeId.parse("spiffe://example.org/w"),
            generate_private_key(new_type).public_key(),
            timedelta(hours=1),
        ),
        clock,
    )
    # A verifier that only holds the old root follows the cross certificate ...
    verify_x509_svid(leaf, [inter, cross], [old_root], td, clock)
    # ... and one that holds the new root needs nothing more.
    verify_x509_svid(leaf, [inter], [new_root], td, clock)
    with pytest.raises(InvalidSvid):
        verify_x509_svid(leaf, [inter], [old_root], td, clock)
    assert cross.not_valid_after_utc <= old_root.not_valid_after_utc
    with pytest.raises(CaError, match="does not match"):
        create_cross_certificate(
            new_root, old_key, Authority(old_root, old_key, (), old_root), clock
        )
