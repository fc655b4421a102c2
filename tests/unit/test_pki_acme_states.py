"""The RFC 8555 §7.1.6 transition tables, checked pair by pair against the section's state
diagrams (transcribed below as plain arrows, independently of `pki.acme.states`)."""

from __future__ import annotations

from enum import StrEnum
from itertools import product

import pytest

from pki.acme.errors import AcmeError, ForbiddenTransition
from pki.acme.messages import AccountStatus, AuthorizationStatus, ChallengeStatus, OrderStatus
from pki.acme.states import allowed, check_transition, sources

# Each arrow of the diagrams in RFC 8555 §7.1.6, by the label it carries there.
ACCOUNT_ARROWS = {
    ("valid", "deactivated"),  # Client deactiv.
    ("valid", "revoked"),  # Server revoke
}
ORDER_ARROWS = {
    ("pending", "ready"),  # All authz "valid"
    ("ready", "processing"),  # Receive finalize request
    ("processing", "valid"),  # Certificate issued
    ("pending", "invalid"),  # Error or Authorization failure
    ("ready", "invalid"),
    ("processing", "invalid"),
}
AUTHORIZATION_ARROWS = {
    ("pending", "invalid"),  # Challenge failure or Error
    ("pending", "valid"),  # Challenge valid
    # The bar under `valid` that `pending` joins: Server revoke, Client deactivate,
    # Time after "expires".
    ("valid", "revoked"),
    ("valid", "deactivated"),
    ("valid", "expired"),
    ("pending", "revoked"),
    ("pending", "deactivated"),
    ("pending", "expired"),
}
CHALLENGE_ARROWS = {
    ("pending", "processing"),  # Receive response
    ("processing", "processing"),  # Server retry or client retry request
    ("processing", "valid"),  # Successful validation
    ("processing", "invalid"),  # Failed validation
}
DIAGRAMS: list[tuple[type[StrEnum], set[tuple[str, str]]]] = [
    (AccountStatus, ACCOUNT_ARROWS),
    (OrderStatus, ORDER_ARROWS),
    (AuthorizationStatus, AUTHORIZATION_ARROWS),
    (ChallengeStatus, CHALLENGE_ARROWS),
]
PAIRS = [
    pytest.param(enum(a), enum(b), (a, b) in arrows, id=f"{enum.__name__}:{a}->{b}")
    for enum, arrows in DIAGRAMS
    for a, b in product([s.value for s in enum], repeat=2)
]


def test_the_diagrams_name_only_statuses_that_exist() -> None:
    for enum, arrows in DIAGRAMS:
        values = {s.value for s in enum}
        assert {s for arrow in arrows for s in arrow} <= values, enum.__name__


@pytest.mark.parametrize(("current", "target", "drawn"), PAIRS)
def test_every_pair_is_allowed_exactly_when_the_rfc_draws_it(
    current: StrEnum, target: StrEnum, drawn: bool
) -> None:
    assert allowed(current, target) is drawn  # type: ignore[type-var]
    if drawn:
        assert check_transition("x1", current, target) is target  # type: ignore[type-var]
    else:
        with pytest.raises(ForbiddenTransition) as caught:
            check_transition("x1", current, target)  # type: ignore[type-var]
        assert caught.value.fields["current"] == current.value
        assert caught.value.fields["target"] == target.value
        assert caught.value.fields["object_id"] == "x1"


@pytest.mark.parametrize(("enum", "arrows"), DIAGRAMS, ids=lambda v: getattr(v, "__name__", ""))
def test_sources_are_the_tails_of_the_arrows_into_a_status(
    enum: type[StrEnum], arrows: set[tuple[str, str]]
) -> None:
    for target in enum:
        expected = {a for a, b in arrows if b == target.value}
        assert {s.value for s in sources(target)} == expected  # type: ignore[type-var]


def test_a_refusal_says_what_the_object_may_become() -> None:
    with pytest.raises(ForbiddenTransition, match=r"order o1 is ready and cannot become valid"):
        check_transition("o1", OrderStatus.READY, OrderStatus.VALID)
    with pytest.raises(ForbiddenTransition, match="it may become invalid, processing"):
        check_transition("o1", OrderStatus.READY, OrderStatus.PENDING)
    with pytest.raises(ForbiddenTransition, match="valid is final"):
        check_transition("c1", ChallengeStatus.VALID, ChallengeStatus.INVALID)


def test_a_refusal_is_a_server_fault_not_a_client_error() -> None:
    # §6.7: the client did nothing wrong; it sees serverInternal (mapped to 500).
    error = ForbiddenTransition("x")
    assert isinstance(error, AcmeError)
    assert error.type_uri == "urn:ietf:params:acme:error:serverInternal"


def test_statuses_of_different_objects_do_not_mix() -> None:
    # The StrEnums compare equal by value ("pending" == "pending"); the table must not.
    with pytest.raises(TypeError):
        allowed(OrderStatus.PENDING, ChallengeStatus.PROCESSING)  # type: ignore[type-var]
    with pytest.raises(TypeError):
        check_transition("x", AuthorizationStatus.PENDING, OrderStatus.READY)  # type: ignore[type-var]
