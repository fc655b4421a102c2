"""The status changes RFC 8555 §7.1.6 allows for accounts, orders, authorizations and
challenges, as tables of (from, to) pairs; the one place the server asks before it changes a
status.

The tables transcribe the section's state diagrams, an arrow per pair::

    account:        valid -> deactivated (client deactivates, §7.3.6)
                    valid -> revoked     (server revokes)

    order:          pending -> ready       (every authorization valid)
                    ready -> processing    (finalize received, §7.4)
                    processing -> valid    (certificate issued)
                    pending, ready, processing -> invalid
                                           (error, authorization failure, or expiry)

    authorization:  pending -> valid | invalid   (a challenge valid | failed, or an error)
                    pending, valid -> revoked | deactivated | expired
                                           (server revokes, client deactivates §7.5.2,
                                            time passes "expires")

    challenge:      pending -> processing        (the client responds, §7.5.1)
                    processing -> processing     (server or client retry)
                    processing -> valid | invalid

Everything else is refused: statuses at the end of an arrow chain (an order's `valid` and
`invalid`, an authorization's `invalid`, `revoked`, `deactivated`, `expired`, a challenge's
`valid` and `invalid`, an account's `deactivated` and `revoked`) are final. Nothing here is
stored or read from a clock: callers pass the statuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pki.acme.errors import ForbiddenTransition
from pki.acme.messages import AccountStatus, AuthorizationStatus, ChallengeStatus, OrderStatus

Status = TypeVar("Status", AccountStatus, OrderStatus, AuthorizationStatus, ChallengeStatus)

ACCOUNT_TRANSITIONS: Mapping[AccountStatus, frozenset[AccountStatus]] = {
    AccountStatus.VALID: frozenset({AccountStatus.DEACTIVATED, AccountStatus.REVOKED}),
    AccountStatus.DEACTIVATED: frozenset(),
    AccountStatus.REVOKED: frozenset(),
}

ORDER_TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.READY, OrderStatus.INVALID}),
    OrderStatus.READY: frozenset({OrderStatus.PROCESSING, OrderStatus.INVALID}),
    OrderStatus.PROCESSING: frozenset({OrderStatus.VALID, OrderStatus.INVALID}),
    OrderStatus.VALID: frozenset(),
    OrderStatus.INVALID: frozenset(),
}

# The diagram joins `pending` to the same bar as `valid`: revocation, deactivation and expiry
# apply to either (§7.3.6 deactivates an account's pending authorizations; §7.5.2 lets the
# client deactivate a pending or valid one).
_ENDED = frozenset(
    {AuthorizationStatus.REVOKED, AuthorizationStatus.DEACTIVATED, AuthorizationStatus.EXPIRED}
)
AUTHORIZATION_TRANSITIONS: Mapping[AuthorizationStatus, frozenset[AuthorizationStatus]] = {
    AuthorizationStatus.PENDING: frozenset(
        {AuthorizationStatus.VALID, AuthorizationStatus.INVALID} | _ENDED
    ),
    AuthorizationStatus.VALID: _ENDED,
    AuthorizationStatus.INVALID: frozenset(),
    AuthorizationStatus.REVOKED: frozenset(),
    AuthorizationStatus.DEACTIVATED: frozenset(),
    AuthorizationStatus.EXPIRED: frozenset(),
}

CHALLENGE_TRANSITIONS: Mapping[ChallengeStatus, frozenset[ChallengeStatus]] = {
    ChallengeStatus.PENDING: frozenset({ChallengeStatus.PROCESSING}),
    # The only loop in §7.1.6: a retried validation stays `processing`.
    ChallengeStatus.PROCESSING: frozenset(
        {ChallengeStatus.PROCESSING, ChallengeStatus.VALID, ChallengeStatus.INVALID}
    ),
    ChallengeStatus.VALID: frozenset(),
    ChallengeStatus.INVALID: frozenset(),
}

_TABLES: Mapping[type, tuple[str, Mapping[Any, frozenset[Any]]]] = {
    AccountStatus: ("account", ACCOUNT_TRANSITIONS),
    OrderStatus: ("order", ORDER_TRANSITIONS),
    AuthorizationStatus: ("authorization", AUTHORIZATION_TRANSITIONS),
    ChallengeStatus: ("challenge", CHALLENGE_TRANSITIONS),
}


def _table(current: Status, target: Status) -> tuple[str, Mapping[Any, frozenset[Any]]]:
    # The enums are StrEnums and share values ("pending" == "pending"): a pair mixing two
    # kinds of object would compare equal and slip through, so refuse it outright.
    if type(current) is not type(target):
        raise TypeError(f"a {type(current).__name__} cannot change into a {type(target).__name__}")
    return _TABLES[type(current)]


def allowed(current: Status, target: Status) -> bool:
    """Whether RFC 8555 §7.1.6 lets an object in status *current* move to *target*.

    Raises:
        TypeError: *current* and *target* are statuses of different kinds of object.
    """
    return target in _table(current, target)[1][current]


def sources(target: Status) -> frozenset[Status]:
    """The statuses from which an object may move to *target* (for a query such as "every
    order that expiry may invalidate")."""
    table = _TABLES[type(target)][1]
    return frozenset(status for status, targets in table.items() if target in targets)


def check_transition(object_id: str, current: Status, target: Status) -> Status:
    """Return *target* if RFC 8555 §7.1.6 allows *current* -> *target*; the caller writes
    what this returns, so every status change passes through the table.

    Raises:
        ForbiddenTransition: the diagrams draw no such arrow; the detail names the object,
            both statuses and the statuses *current* may move to.
        TypeError: *current* and *target* are statuses of different kinds of object.
    """
    kind, table = _table(current, target)
    if target in table[current]:
        return target
    onward = sorted(str(s) for s in table[current])
    raise ForbiddenTransition(
        f"{kind} {object_id} is {current} and cannot become {target} (RFC 8555 §7.1.6); "
        + (f"it may become {', '.join(onward)}" if onward else f"{current} is final"),
        kind=kind,
        object_id=object_id,
        current=str(current),
        target=str(target),
    )
