"""Key rotation: the slot state machine and the pure timing functions that drive it.

Modelled on SPIRE's CA manager (``pkg/server/ca/manager/slot.go``, ``rotationutil.go``):
every signing key (root, intermediate, JWT key, WIT-SVID key) sits in a slot whose status moves

    prepared -> active -> old -> retired
                          old -> tainted -> revoked

The next key is prepared when half of the active key's life is left and published in the
trust bundle at once, so every verifier holds it before it signs anything; it is activated
when one sixth of the active key's life is left. Old keys stay in the bundle until the last
credential they signed has expired, then retire. Everything here is a function of ``now``
and the keys' validity: no clock is read, nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pki.errors import InvalidTransition


class KeyKind(StrEnum):
    """What a CA key signs: X.509 certificates (root or intermediate), JWT-SVIDs, or
    WIT-SVIDs (experimental; a key of its own, WIT-SVID §2.1 and §6.1: its kid names it
    alone, never a JWT-SVID key)."""

    X509_ROOT = "x509-root"
    X509_INTERMEDIATE = "x509-intermediate"
    JWT = "jwt"
    WIT = "wit"


class SlotStatus(StrEnum):
    PREPARED = "prepared"
    ACTIVE = "active"
    OLD = "old"
    TAINTED = "tainted"
    REVOKED = "revoked"
    # Left the bundle after its last credential expired; kept as a record only.
    RETIRED = "retired"


# Statuses whose public key is in the trust bundle: a verifier must accept what they signed
# (prepared keys are there before they sign, old and tainted ones until their credentials
# expire). Revoked keys leave at once; that is what revoking a key means.
IN_BUNDLE = frozenset({SlotStatus.PREPARED, SlotStatus.ACTIVE, SlotStatus.OLD, SlotStatus.TAINTED})

_TRANSITIONS: dict[SlotStatus, frozenset[SlotStatus]] = {
    SlotStatus.PREPARED: frozenset({SlotStatus.ACTIVE}),
    SlotStatus.ACTIVE: frozenset({SlotStatus.OLD}),
    # SPIRE's `localauthority taint` only accepts a key that no longer signs.
    SlotStatus.OLD: frozenset({SlotStatus.RETIRED, SlotStatus.TAINTED}),
    # ... and `localauthority revoke` only a tainted one, so nothing is revoked by mistake.
    SlotStatus.TAINTED: frozenset({SlotStatus.RETIRED, SlotStatus.REVOKED}),
    SlotStatus.REVOKED: frozenset(),
    SlotStatus.RETIRED: frozenset(),
}

_HINTS: dict[SlotStatus, str] = {
    SlotStatus.ACTIVE: "only a prepared key can be activated; prepare one first",
    SlotStatus.TAINTED: (
        "only an old key can be tainted; prepare and activate a replacement first"
    ),
    SlotStatus.REVOKED: "only a tainted key can be revoked; taint it first",
}


def check_transition(kid: str, current: SlotStatus, target: SlotStatus) -> None:
    """Refuse a status change the state machine does not allow.

    Raises:
        InvalidTransition: *current* cannot move to *target*; the detail says what to do.
    """
    if target in _TRANSITIONS[current]:
        return
    hint = _HINTS.get(target, "")
    raise InvalidTransition(
        f"key {kid} is {current}, it cannot become {target}" + (f": {hint}" if hint else ""),
        kid=kid,
        current=str(current),
        target=str(target),
    )


def lifetime(not_before: datetime, not_after: datetime) -> timedelta:
    return not_after - not_before


def preparation_threshold(not_before: datetime, not_after: datetime) -> datetime:
    """When the next key is prepared: half of the active key's life is left."""
    return not_before + lifetime(not_before, not_after) / 2


def activation_threshold(not_before: datetime, not_after: datetime) -> datetime:
    """When the prepared key takes over: one sixth of the active key's life is left."""
    return not_after - lifetime(not_before, not_after) / 6


def should_prepare_next(now: datetime, not_before: datetime, not_after: datetime) -> bool:
    return now >= preparation_threshold(not_before, not_after)


def should_activate_next(now: datetime, not_before: datetime, not_after: datetime) -> bool:
    return now >= activation_threshold(not_before, not_after)


@dataclass(frozen=True)
class Slot:
    """What the planner needs to know about one key.

    ``published_at`` is when the key entered the bundle (its preparation); ``retirable``
    says whether every credential it signed has expired (the service knows, the planner
    does not).
    """

    kid: str
    kind: str
    status: SlotStatus
    not_before: datetime
    not_after: datetime
    published_at: datetime
    retirable: bool = False


@dataclass(frozen=True)
class Prepare:
    kind: str


@dataclass(frozen=True)
class Activate:
    kid: str
    kind: str
    # The key it replaces, which becomes old (None when there was no usable active key).
    replaces: str | None


@dataclass(frozen=True)
class Retire:
    kid: str
    kind: str


Action = Prepare | Activate | Retire


def plan(now: datetime, slots: Sequence[Slot], kind: str, propagation: timedelta) -> list[Action]:
    """The transitions due at *now* for the keys of one *kind*.

    A prepared key is activated once the active key reaches its activation threshold, but
    not before it has been in the bundle for *propagation* (the bundle refresh hint), so a
    verifier that refreshes on time always knows a key before it signs; an active key that
    has expired is replaced at once, since nothing it signs would verify anyway.
    """
    mine = [s for s in slots if s.kind == kind]
    active = next((s for s in mine if s.status is SlotStatus.ACTIVE), None)
    prepared = sorted(
        (s for s in mine if s.status is SlotStatus.PREPARED), key=lambda s: s.published_at
    )
    actions: list[Action] = [
        Retire(s.kid, kind)
        for s in mine
        if s.status in (SlotStatus.OLD, SlotStatus.TAINTED) and s.retirable
    ]
    if active is None:
        if prepared:
            actions.append(Activate(prepared[0].kid, kind, None))
        else:
            actions.append(Prepare(kind))
        return actions
    if not prepared:
        if should_prepare_next(now, active.not_before, active.not_after):
            actions.append(Prepare(kind))
        return actions
    candidate = prepared[0]
    due = should_activate_next(now, active.not_before, active.not_after)
    propagated = now >= candidate.published_at + propagation
    if (due and propagated) or now >= active.not_after:
        actions.append(Activate(candidate.kid, kind, active.kid))
    return actions
