"""The rotation manager: owns every CA key status change, manual or scheduled.

The ticker only calls `tick`; what is due comes from `pki.rotation.plan`, a pure function of
the clock and the stored slots (SPIRE `ca/manager`). Every change is one transaction that
also bumps the bundle sequence and writes the audit rows; after the commit the bundle
channel wakes every replica, which reloads its CA state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace

import structlog
from sqlalchemy import Engine
from sqlmodel import Session

from pki.ca import load_pem_certificates, serial_hex
from pki.clock import Clock
from pki.keys import CLASSICAL_CHAIN
from pki.revocation import RevocationReason
from pki.rotation import (
    IN_BUNDLE,
    Action,
    Activate,
    Prepare,
    Slot,
    SlotStatus,
    check_transition,
    plan,
)
from pki.rotation import KeyKind as CaKeyKind
from trustd.bus import Bus
from trustd.domain.ca_keys import CaKeyInfo
from trustd.domain.certificates import CertificateRecord, CertificateStatus
from trustd.domain.revocations import RevocationTarget
from trustd.domain.rotation import KeyChange
from trustd.errors import Conflict, InvalidRequest, NotFound
from trustd.leader import FenceCheck, Leader, LostLeadership
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.ca import SYSTEM_ACTOR, CertificateAuthority
from trustd.services.revocation import Revocations
from trustd.settings import Settings
from trustd.store.ca_keys import (
    CaKey,
    fetch_active_ca_key,
    fetch_ca_key,
    list_ca_key_timeline,
    update_ca_key_status,
)
from trustd.store.certificates import fetch_last_expiry
from trustd.store.db import transaction

log = structlog.get_logger("trustd.rotation")
BUNDLE_CHANNEL = "bundle"


class RotationManager:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Clock,
        audit: AuditLog,
        ca: CertificateAuthority,
        revocations: Revocations,
        bus: Bus,
        leader: Leader,
        duties: Sequence[Callable[[FenceCheck], object]] = (),
    ) -> None:
        self._settings = settings
        # Other periodic work that one replica does for all, after each tick it leads.
        self._duties = tuple(duties)
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._ca = ca
        self._revocations = revocations
        self._bus = bus
        self.leader = leader
        # How many ticks this replica ran as the leader.
        self.ticks_led = 0

    # ------------------------------------------------------------------ scheduled

    def _retirable(self, session: Session, row: CaKey, rows: Sequence[CaKey]) -> bool:
        now = self._clock.now()
        changed = row.status_changed_at or row.created_at
        # Replicas that have not reloaded yet may still sign with a key that just became
        # old; wait one reload interval before judging what it signed.
        if now < changed + self._settings.bundle_reload_interval:
            return False
        if row.kind == CaKeyKind.X509_INTERMEDIATE:
            last = fetch_last_expiry(session, row.kid)
            return last is None or last <= now
        if row.kind == CaKeyKind.X509_ROOT:
            # A root leaves the bundle once every intermediate it signed has left it.
            return not any(r.issuer_kid == row.kid for r in rows if r.kid != row.kid)
        # JWT- and WIT-SVIDs are not stored: the last one this key signed expires at most
        # the maximum lifetime of its kind after it stopped signing.
        longest = (
            self._settings.wit_svid_max_ttl
            if row.kind == CaKeyKind.WIT
            else self._settings.jwt_svid_max_ttl
        )
        return now >= changed + longest + self._settings.bundle_reload_interval

    def _slots(self, session: Session, chain: str) -> tuple[list[Slot], list[CaKey]]:
        """The slots of *chain*'s keys (each chain rotates on its own), and every row."""
        rows = self._ca.rows(session, IN_BUNDLE)
        slots = [
            Slot(
                kid=row.kid,
                kind=row.kind,
                status=SlotStatus(row.status),
                not_before=row.not_before,
                not_after=row.not_after,
                published_at=row.created_at,
                retirable=row.status in (SlotStatus.OLD, SlotStatus.TAINTED)
                and self._retirable(session, row, rows),
            )
            for row in rows
            if row.chain == chain
        ]
        return slots, rows

    def tick(self, epoch: int | None = None) -> list[Action]:
        """Apply every transition due now, in one transaction; returns what was done.

        With *epoch*, the transaction first checks the leader's fencing token.

        Raises:
            LostLeadership: a newer leader exists; nothing was changed.
            CaError: a key could not be created; nothing was changed.
            StoreUnavailable: the database is down.
        """
        applied: list[Action] = []
        with transaction(self._engine) as session:
            if epoch is not None:
                self.leader.fence.check(session, epoch)
            upstream_root = any(
                r.upstream
                for r in self._ca.rows(session, {SlotStatus.ACTIVE})
                if r.kind == CaKeyKind.X509_ROOT
            )
            # Roots first (`kept`): an intermediate prepared in the same tick is signed by
            # the root active then.
            for kind, chain in self._ca.kept:
                if kind is CaKeyKind.X509_ROOT and upstream_root and chain == CLASSICAL_CHAIN:
                    continue  # an upstream root is rotated upstream, not here
                slots, _ = self._slots(session, chain)
                for action in plan(
                    self._clock.now(), slots, kind, self._settings.bundle_refresh_hint
                ):
                    self._apply(session, action, SYSTEM_ACTOR, chain)
                    applied.append(action)
            wound_down = self._retire_unconfigured(session)
            sequence = self._ca.bump_sequence(session) if applied or wound_down else 0
        if epoch is not None:
            self.ticks_led += 1
        if applied or wound_down:
            log.info(
                "ca_rotated",
                actions=[repr(a) for a in applied],
                wound_down=wound_down,
                sequence=sequence,
            )
            self._changed(sequence)
        return applied

    def _retire_unconfigured(self, session: Session) -> list[str]:
        """Wind down the chains no longer configured (a key type dropped from
        TRUSTD_ADDITIONAL_CA_KEY_TYPES): their active keys become old, so they stop being
        loaded as signers and leave the bundle, like any old key, once what they signed
        has expired. Returns the kids it changed."""
        done: list[str] = []
        configured = set(self._settings.ca_key_types)
        for row in self._ca.rows(session, IN_BUNDLE):
            if row.chain in configured:
                continue
            if row.status == SlotStatus.PREPARED:
                # A prepared key signed nothing, but only an active key may become old
                # (`pki.rotation`): it goes through active, in this one transaction.
                self._set_status(session, row, SlotStatus.ACTIVE, SYSTEM_ACTOR, chain=row.chain)
            if row.status in (SlotStatus.PREPARED, SlotStatus.ACTIVE):
                self._set_status(session, row, SlotStatus.OLD, SYSTEM_ACTOR, chain=row.chain)
                done.append(row.kid)
            elif row.status in (SlotStatus.OLD, SlotStatus.TAINTED) and self._retirable(
                session, row, self._ca.rows(session, IN_BUNDLE)
            ):
                self._set_status(session, row, SlotStatus.RETIRED, SYSTEM_ACTOR, chain=row.chain)
                done.append(row.kid)
        return done

    def _check_chain(self, chain: str, kind: CaKeyKind) -> None:
        chains = self._settings.ca_key_types
        if chain not in chains:
            raise InvalidRequest(
                f"this trust domain keeps no {chain!r} CA chain (it keeps "
                f"{', '.join(chains)}): see TRUSTD_ADDITIONAL_CA_KEY_TYPES"
            )
        if kind in (CaKeyKind.JWT, CaKeyKind.WIT) and chain != CLASSICAL_CHAIN:
            raise InvalidRequest(f"{kind} keys belong to the classical chain")

    def _apply(
        self, session: Session, action: Action, actor: str, chain: str = CLASSICAL_CHAIN
    ) -> None:
        if isinstance(action, Prepare):
            self._prepare(session, CaKeyKind(action.kind), actor, chain)
        elif isinstance(action, Activate):
            self._activate(session, self._row(session, action.kid), actor)
        else:
            self._set_status(session, self._row(session, action.kid), SlotStatus.RETIRED, actor)

    def _row(self, session: Session, kid: str) -> CaKeyInfo:
        row = fetch_ca_key(session, kid, for_update=True)
        if row is None:
            raise NotFound(f"no CA key {kid!r}")
        return row

    def _set_status(
        self,
        session: Session,
        row: CaKeyInfo | CaKey,
        status: SlotStatus,
        actor: str,
        **details: object,
    ) -> KeyChange:
        """Move the key *row* to *status* with its audit row; returns the key's new status
        (the bundle sequence is bumped by the caller, once per transaction).

        Raises:
            InvalidTransition: the key's status does not lead to *status*.
        """
        previous = row.status
        check_transition(row.kid, SlotStatus(previous), status)
        update_ca_key_status(session, row.kid, status, self._clock.now())
        self._audit.record(
            session,
            actor,
            f"ca:authority:{status}",
            target=row.kid,
            details={"kind": row.kind, "from": previous, **details},
        )
        return KeyChange(row.kid, row.kind, status, 0)

    def _prepare(
        self, session: Session, kind: CaKeyKind, actor: str, chain: str = CLASSICAL_CHAIN
    ) -> KeyChange:
        row = self._ca.create_key(session, kind, SlotStatus.PREPARED, chain)
        self._audit.record(
            session,
            actor,
            "ca:authority:prepared",
            target=row.kid,
            details={"kind": row.kind, "chain": chain, "not_after": row.not_after.isoformat()},
        )
        return KeyChange(row.kid, row.kind, row.status, 0)

    def _activate(self, session: Session, row: CaKeyInfo | CaKey, actor: str) -> KeyChange:
        check_transition(row.kid, SlotStatus(row.status), SlotStatus.ACTIVE)
        current = fetch_active_ca_key(session, row.kind, chain=row.chain, for_update=True)
        if current is not None:
            self._set_status(session, current, SlotStatus.OLD, actor, replaced_by=row.kid)
        return self._set_status(session, row, SlotStatus.ACTIVE, actor)

    def _require_kind(self, kind: CaKeyKind) -> None:
        if kind not in self._ca.kinds:
            raise Conflict(
                f"this deployment keeps no {kind} key: WIT-SVIDs are off (TRUSTD_WIT_SVID)"
            )

    def _changed(self, sequence: int) -> None:
        # This replica reloads at once; the others when the bundle channel wakes them.
        self._ca.load()
        self._bus.publish(BUNDLE_CHANNEL, str(sequence))

    # ------------------------------------------------------------------ manual

    def prepare(
        self, principal: Principal, kind: CaKeyKind, chain: str = CLASSICAL_CHAIN
    ) -> KeyChange:
        """Prepare the next key of *kind* in *chain* now and publish it in the bundle.

        Raises:
            InvalidRequest: *chain* is not one this trust domain keeps.
            Conflict: a prepared key of that kind exists already, or WIT-SVIDs are off.
            CaError: the key cannot be created (e.g. an upstream root).
        """
        self._require_kind(kind)
        self._check_chain(chain, kind)
        with transaction(self._engine) as session:
            waiting = [
                r
                for r in self._ca.rows(session, {SlotStatus.PREPARED})
                if r.kind == kind and r.chain == chain
            ]
            if waiting:
                raise Conflict(
                    f"{kind} key {waiting[0].kid} is prepared already: activate it with "
                    f"`trustd ca activate --kind {kind}`"
                )
            change = self._prepare(session, kind, principal.name, chain)
            sequence = self._ca.bump_sequence(session)
        self._changed(sequence)
        return replace(change, sequence=sequence)

    def migrate_keys(self, principal: Principal, to: str) -> list[KeyChange]:
        """Move the deployment's keys to the backend *to*, by rotation.

        New keys already go to `ca_key_backend`; this prepares now, there, the next key of
        every kind whose active key lives elsewhere, so the move does not wait for the
        schedule. The prepared keys are activated by rotation (or `trustd ca activate`),
        and the keys they replace retire as they always do, once what they signed has
        expired. No private key is exported or copied from one backend to the other.

        Raises:
            Conflict: new keys do not go to *to* (restart trustd with it first), or a key
                prepared elsewhere is waiting for activation.
        """
        if self._settings.ca_key_backend != to:
            raise Conflict(
                f"new CA keys go to the {self._settings.ca_key_backend} backend: restart trustd "
                f"with TRUSTD_CA_KEY_BACKEND={to} (and its settings) first, so that every key "
                "made from now on goes there"
            )
        changes: list[KeyChange] = []
        with transaction(self._engine) as session:
            # Only the classical chain: a token makes EC keys (settings refuse ML-DSA there).
            rows = [
                r
                for r in self._ca.rows(session, {SlotStatus.ACTIVE, SlotStatus.PREPARED})
                if r.chain == CLASSICAL_CHAIN
            ]
            for kind in self._ca.kinds:
                active = [r for r in rows if r.kind == kind and r.status == SlotStatus.ACTIVE]
                waiting = [r for r in rows if r.kind == kind and r.status == SlotStatus.PREPARED]
                if any(r.upstream for r in active) or all(r.key_backend == to for r in active):
                    continue
                if any(r.key_backend == to for r in waiting):
                    continue
                if waiting:
                    raise Conflict(
                        f"{kind} key {waiting[0].kid} is prepared in the "
                        f"{waiting[0].key_backend} backend: activate it first (`trustd ca "
                        f"activate --kind {kind}`), then migrate"
                    )
                changes.append(self._prepare(session, kind, principal.name))
            self._audit.record(
                session,
                principal.name,
                "ca:keys:migrating",
                target=to,
                details={"prepared": [c.kid for c in changes]},
            )
            sequence = self._ca.bump_sequence(session) if changes else None
        if sequence is None:
            return []
        self._changed(sequence)
        return [replace(c, sequence=sequence) for c in changes]

    def activate(
        self,
        principal: Principal,
        kind: CaKeyKind,
        kid: str | None = None,
        chain: str = CLASSICAL_CHAIN,
    ) -> KeyChange:
        """Activate the prepared key of *kind* in *chain* (or the key *kid*, whatever its
        chain); the active one of its chain gets old.

        Raises:
            NotFound: *kid* names no key of that kind.
            InvalidTransition: there is no prepared key, or *kid* is not prepared.
            Conflict: *kind* is the WIT-SVID key and WIT-SVIDs are off.
        """
        self._require_kind(kind)
        with transaction(self._engine) as session:
            row: CaKeyInfo | CaKey
            if kid is not None:
                row = self._row(session, kid)
                if row.kind != kind:
                    raise NotFound(f"no {kind} key {kid!r}")
            else:
                self._check_chain(chain, kind)
                waiting = [
                    r
                    for r in self._ca.rows(session, {SlotStatus.PREPARED})
                    if r.kind == kind and r.chain == chain
                ]
                if not waiting:
                    check_transition(f"(next {kind})", SlotStatus.RETIRED, SlotStatus.ACTIVE)
                row = waiting[0]
            change = self._activate(session, row, principal.name)
            sequence = self._ca.bump_sequence(session)
        self._changed(sequence)
        return replace(change, sequence=sequence)

    def taint(self, principal: Principal, kid: str) -> KeyChange:
        """Mark an old key tainted: what it signed must be re-issued (see `reissue`).

        Raises:
            NotFound: no such key.
            InvalidTransition: the key is not old (an active key cannot be tainted; activate
                a replacement first).
        """
        with transaction(self._engine) as session:
            change = self._set_status(
                session, self._row(session, kid), SlotStatus.TAINTED, principal.name
            )
            sequence = self._ca.bump_sequence(session)
        self._changed(sequence)
        return replace(change, sequence=sequence)

    def revoke(
        self,
        principal: Principal,
        kid: str,
        reason: RevocationReason = RevocationReason.KEY_COMPROMISE,
    ) -> KeyChange:
        """Revoke a tainted key: it leaves the bundle at once and every unexpired
        certificate it signed is revoked with it (an intermediate also goes on its root's CRL).

        Raises:
            NotFound: no such key.
            InvalidTransition: the key is not tainted.
            Conflict: a root that still has an active or prepared intermediate.
        """
        with transaction(self._engine) as session:
            row = self._row(session, kid)
            check_transition(row.kid, SlotStatus(row.status), SlotStatus.REVOKED)
            victims: list[CaKeyInfo | CaKey] = [row]
            if row.kind == CaKeyKind.X509_ROOT:
                below = [r for r in self._ca.rows(session, IN_BUNDLE) if r.issuer_kid == kid]
                if any(r.status in (SlotStatus.ACTIVE, SlotStatus.PREPARED) for r in below):
                    raise Conflict(
                        f"root {kid} still has an active or prepared intermediate: prepare and "
                        "activate an intermediate under the new root first"
                    )
                victims += below
            revoked = 0
            for victim in victims:
                if victim is not row:
                    # Intermediates go with their root (old or tainted: checked above).
                    update_ca_key_status(session, victim.kid, SlotStatus.REVOKED, self._clock.now())
                if victim.kind == CaKeyKind.X509_INTERMEDIATE:
                    revoked += self._revocations.revoke_issued_by(
                        session, victim.kid, RevocationReason.CA_COMPROMISE, principal.name
                    )
                    if victim.issuer_kid and victim.certificate_pem:
                        self._revocations.record_entries(
                            session,
                            [
                                RevocationTarget(
                                    serial_hex(
                                        load_pem_certificates(victim.certificate_pem.encode())[0]
                                    ),
                                    victim.issuer_kid,
                                    None,
                                    victim.not_after,
                                )
                            ],
                            reason,
                            principal.name,
                        )
            change = self._set_status(
                session,
                row,
                SlotStatus.REVOKED,
                principal.name,
                reason=str(reason),
                certificates_revoked=revoked,
                with_keys=[v.kid for v in victims if v is not row],
            )
            sequence = self._ca.bump_sequence(session)
        self._changed(sequence)
        return replace(change, sequence=sequence)

    def reissue(
        self, kid: str, after: str | None = None, limit: int = 100
    ) -> list[CertificateRecord]:
        """A batch of unexpired valid certificates signed by the tainted key *kid*, ordered by
        serial: agents re-issue them batch by batch (pass the last serial as *after*).

        Raises:
            NotFound: no such key. Conflict: the key is not tainted.
            InvalidRequest: *limit* out of range.
        """
        with transaction(self._engine) as session:
            row = self._row(session, kid)
        if row.status != SlotStatus.TAINTED:
            raise Conflict(f"key {kid} is {row.status}, not tainted: nothing must be re-issued")
        return self._revocations.list_certificates(
            issuer_kid=kid,
            status=CertificateStatus.VALID,
            live_only=True,
            after=after,
            limit=limit,
        )

    def timeline(self) -> list[CaKeyInfo]:
        """Every CA key, newest first (the rotation timeline)."""
        with transaction(self._engine) as session:
            return list_ca_key_timeline(session)

    # ------------------------------------------------------------------ loops

    async def run_ticker(self, stop: asyncio.Event) -> None:
        """Tick while this replica is the leader, until *stop* is set; each tick also runs
        the other singleton duties (each in a worker thread, after the CRLs).

        The loop is stopped, never cancelled, so a tick running in a worker thread always
        finishes its transaction before the app shuts down.
        """
        interval = self._settings.rotation_interval.total_seconds()
        try:
            while not stop.is_set():
                epoch = await asyncio.to_thread(self.leader.acquire)
                if epoch is not None:
                    try:
                        await asyncio.to_thread(self.tick, epoch)
                        await asyncio.to_thread(self._revocations.refresh_crls)
                        fenced = self.leader.fence.checker(epoch)
                        for duty in self._duties:
                            await asyncio.to_thread(duty, fenced)
                    except LostLeadership as exc:
                        # A successor holds a newer epoch: stop acting as the leader.
                        log.warning("rotation_leadership_lost", error=str(exc))
                        await asyncio.to_thread(self.leader.release)
                    except Exception as exc:
                        # The loop must outlive a failed tick; the next one retries.
                        log.error("rotation_tick_failed", error=str(exc), kind=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        finally:
            await asyncio.to_thread(self.leader.release)

    async def follow_bundle(
        self, stop: asyncio.Event, on_change: Callable[[], object] | None = None
    ) -> None:
        """Reload the CA state whenever the bundle changes, until *stop* is set; call
        `on_change` (in a thread) after each new bundle sequence, this replica's own
        changes included."""
        interval = self._settings.bundle_reload_interval.total_seconds()
        seen = self._ca.state.bundle.sequence
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                changed = asyncio.create_task(self._bus.wait(BUNDLE_CHANNEL))
                await asyncio.wait(
                    {changed, stopped}, timeout=interval, return_when="FIRST_COMPLETED"
                )
                changed.cancel()
                if stop.is_set():
                    break
                try:
                    await asyncio.to_thread(self._ca.reload_if_changed)
                    sequence = self._ca.state.bundle.sequence
                    if on_change is not None and sequence != seen:
                        await asyncio.to_thread(on_change)
                    seen = sequence
                except Exception as exc:
                    log.error("ca_reload_failed", error=str(exc), kind=type(exc).__name__)
        finally:
            stopped.cancel()
