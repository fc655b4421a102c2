"""Quarantine: cutting one identity off on every node, and what trustd knows of an identity.

A quarantine is one row per SPIFFE ID (`trustd.store.quarantines`). Making or releasing one
advances the sync revision, so every agent's long-poll wakes: the verdict compiler puts the
identity in the verdicts' denied-identities section (the kernel drops its traffic, in and
established), and every agent gets the quarantine with its reason and `until` on the sync
channel (it stops serving and minting the identity's SVIDs; the Workload API answers
PermissionDenied with the reason). An `until` is honoured twice: by the leader's periodic
duty here (`expire`), and by each agent's own clock, so a node cut off from trustd still
lets the identity back in at `until`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pki.clock import Clock
from pki.spiffe_id import SpiffeId
from trustd.bus import Bus
from trustd.domain.certificates import CertificateStatus
from trustd.domain.quarantines import (
    EXPIRED,
    MAX_REASON,
    QUARANTINED,
    RELEASED,
    IdentityOverview,
    Quarantine,
    Release,
)
from trustd.errors import Conflict, InvalidRequest, NotFound
from trustd.leader import FenceCheck
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.issuance import require_unreserved
from trustd.services.sync import announce, bump_revision
from trustd.services.verdicts import Verdicts
from trustd.store.certificates import list_certificates
from trustd.store.db import transaction
from trustd.store.entries import count_entries
from trustd.store.quarantines import (
    create_quarantine,
    delete_quarantine,
    fetch_quarantine,
    list_expired_quarantines,
    list_quarantines,
)

# How many of an identity's valid, and of its revoked, certificates the overview lists.
MAX_LISTED = 200


def parse_identity(spiffe_id: str) -> str:
    """The canonical form of a SPIFFE ID that may be quarantined.

    Raises:
        InvalidSpiffeId: malformed. ReservedSpiffeId: trustd's own server or agents (cut
            off, they could not carry the release).
    """
    parsed = SpiffeId.parse(spiffe_id)
    require_unreserved(parsed)
    return str(parsed)


class Quarantines:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        audit: AuditLog,
        bus: Bus,
        verdicts: Verdicts | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._bus = bus
        self._verdicts = verdicts

    # -- changes ---------------------------------------------------------------------------

    def quarantine(
        self,
        principal: Principal,
        spiffe_id: str,
        reason: str,
        until: datetime | None = None,
    ) -> Quarantine:
        """Quarantine *spiffe_id* on every node until *until* (None: until released).

        Raises:
            InvalidSpiffeId, ReservedSpiffeId: see `parse_identity`.
            InvalidRequest: no reason, or *until* is not in the future.
            Conflict: the identity is already quarantined.
            StoreUnavailable: the database is down; nothing changed.
        """
        target = parse_identity(spiffe_id)
        try:
            with transaction(self._engine) as session:
                quarantine, revision = self.quarantine_in(
                    session, principal.name, target, reason, until
                )
        except IntegrityError:
            raise Conflict(f"{target} was quarantined meanwhile") from None
        announce(self._bus, revision)
        return quarantine

    def quarantine_in(
        self,
        session: Session,
        actor: str,
        spiffe_id: str,
        reason: str,
        until: datetime | None,
        details: dict[str, object] | None = None,
    ) -> tuple[Quarantine, int]:
        """Inside the caller's transaction, quarantine the canonical *spiffe_id*: the
        quarantine and the sync revision it advanced to (announce it after the commit).

        Raises:
            InvalidRequest, Conflict: see `quarantine`.
        """
        reason = reason.strip()
        if not reason:
            raise InvalidRequest("a quarantine needs a reason")
        if len(reason) > MAX_REASON:
            raise InvalidRequest(f"the reason is longer than {MAX_REASON} characters")
        now = self._clock.now()
        if until is not None:
            if until.tzinfo is None:
                raise InvalidRequest("until must carry a time zone (RFC 3339)")
            if until <= now:
                raise InvalidRequest(f"until ({until.isoformat()}) is not in the future")
        held = fetch_quarantine(session, spiffe_id, for_update=True)
        if held is not None and not held.active(now):
            # Past its `until`, not yet swept by the leader's duty: it ends now, as it would.
            self._expire_in(session, held)
            held = None
        if held is not None:
            raise Conflict(
                f"{spiffe_id} is already quarantined (by {held.quarantined_by}: {held.reason})"
            )
        quarantine = Quarantine(spiffe_id, reason, actor, now, until)
        create_quarantine(session, quarantine)
        revision = bump_revision(session)
        self._audit.record(
            session,
            actor,
            QUARANTINED,
            target=spiffe_id,
            details={
                "reason": reason,
                "until": until.isoformat() if until is not None else None,
                "revision": revision,
                **(details or {}),
            },
        )
        return quarantine, revision

    def release(self, principal: Principal, spiffe_id: str) -> Release:
        """Release *spiffe_id*: every node lets it back in and mints its SVIDs again.

        Raises:
            InvalidSpiffeId: malformed. NotFound: it is not quarantined.
            StoreUnavailable: the database is down; nothing changed.
        """
        target = str(SpiffeId.parse(spiffe_id))
        now = self._clock.now()
        with transaction(self._engine) as session:
            held = fetch_quarantine(session, target, for_update=True)
            if held is None or not delete_quarantine(session, target):
                raise NotFound(f"{target} is not quarantined")
            revision = bump_revision(session)
            self._audit.record(
                session,
                principal.name,
                RELEASED,
                target=target,
                details={"reason": held.reason, "revision": revision},
            )
        announce(self._bus, revision)
        return Release(held, principal.name, now)

    def expire(self, fenced: FenceCheck | None = None) -> int:
        """Release every quarantine whose `until` has passed (the leader's periodic duty,
        *fenced* by its epoch); returns how many.

        Raises:
            LostLeadership: a successor leads; nothing was changed.
        """
        now = self._clock.now()
        with transaction(self._engine) as session:
            if fenced is not None:
                fenced(session)
            expired = list_expired_quarantines(session, now)
            for quarantine in expired:
                self._expire_in(session, quarantine)
            revision = bump_revision(session) if expired else 0
        if expired:
            announce(self._bus, revision)
        return len(expired)

    def _expire_in(self, session: Session, quarantine: Quarantine) -> None:
        """Inside the caller's transaction, end *quarantine* at its `until`, audited."""
        delete_quarantine(session, quarantine.spiffe_id)
        self._audit.record(
            session,
            "trustd",
            EXPIRED,
            target=quarantine.spiffe_id,
            details={
                "reason": quarantine.reason,
                "until": quarantine.until.isoformat() if quarantine.until else None,
            },
        )

    # -- reads -----------------------------------------------------------------------------

    def list(self) -> list[Quarantine]:
        """The quarantines in force, ordered by SPIFFE ID."""
        with transaction(self._engine) as session:
            return list_quarantines(session, self._clock.now())

    def get(self, spiffe_id: str) -> Quarantine | None:
        """The quarantine of *spiffe_id* in force now (None: none).

        Raises:
            InvalidSpiffeId: malformed.
        """
        target = str(SpiffeId.parse(spiffe_id))
        with transaction(self._engine) as session:
            found = fetch_quarantine(session, target)
        return found if found is not None and found.active(self._clock.now()) else None

    def overview(self, spiffe_id: str) -> IdentityOverview:
        """What trustd knows of *spiffe_id*: entries naming it, its live SVIDs, its revoked
        unexpired certificates, its quarantine and the nodes that applied it.

        Raises:
            InvalidSpiffeId: malformed.
        """
        target = str(SpiffeId.parse(spiffe_id))
        now = self._clock.now()
        with transaction(self._engine) as session:
            entries = count_entries(session, spiffe_id=target)
            svids, revoked = (
                list_certificates(
                    session, spiffe_id=target, status=status, expiring_after=now, limit=MAX_LISTED
                )
                for status in (CertificateStatus.VALID, CertificateStatus.REVOKED)
            )
            quarantine = fetch_quarantine(session, target)
        if quarantine is not None and not quarantine.active(now):
            quarantine = None
        applied: tuple[str, ...] = ()
        if quarantine is not None and quarantine.verdict_revision is not None and self._verdicts:
            first = quarantine.verdict_revision
            applied = tuple(
                sorted(a.node_id for a in self._verdicts.lag() if a.applied_revision >= first)
            )
        return IdentityOverview(
            spiffe_id=target,
            entries=entries,
            svids=tuple(svids),
            revoked=tuple(revoked),
            quarantine=quarantine,
            applied_by=applied,
        )
