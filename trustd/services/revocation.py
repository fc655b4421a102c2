"""Revocation: revoking certificates, CRLs per issuing key, the OCSP responder, and the
revocation feed that agents follow (revocations since a revision).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from datetime import datetime

from cryptography.x509 import ocsp
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pki.ca import CA_BACKDATE
from pki.clock import Clock
from pki.errors import InvalidOcspRequest
from pki.revocation import (
    GOOD,
    UNKNOWN,
    CertStatus,
    RevocationReason,
    RevokedEntry,
    build_crl,
    build_ocsp_response,
    crl_der,
    ocsp_error,
    ocsp_request_names,
    parse_ocsp_request,
)
from pki.spiffe_id import SpiffeId
from trustd.bus import Bus
from trustd.domain.certificates import CertificateRecord, CertificateStatus
from trustd.domain.quarantines import Quarantine
from trustd.domain.revocations import (
    CrlRecord,
    Revocable,
    Revocation,
    RevocationFeed,
    Revoked,
)
from trustd.errors import Conflict, InvalidRequest, NotFound
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.ca import CertificateAuthority
from trustd.services.quarantines import Quarantines
from trustd.services.sync import announce
from trustd.settings import Settings
from trustd.store.certificates import (
    fetch_certificate,
    fetch_ocsp_status,
    list_certificates,
    list_certificates_to_revoke,
    list_latest_certificates,
    update_certificates_revoked,
)
from trustd.store.db import transaction
from trustd.store.quarantines import fetch_quarantine
from trustd.store.revocations import (
    create_revocations,
    fetch_crl,
    fetch_crl_revision,
    fetch_revocation_revision,
    list_crl_entries,
    list_revocations_since,
    update_crl,
    update_revocation_revision,
)

MAX_PAGE = 1000
# Revocation events kept in memory for agents catching up.
FEED_CACHE = 100_000
REVOCATION_CHANNEL = "revocation"


def _page_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


class Revocations:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Clock,
        audit: AuditLog,
        ca: CertificateAuthority,
        bus: Bus,
        quarantines: Quarantines | None = None,
    ) -> None:
        self._settings = settings
        self._quarantines = quarantines
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._ca = ca
        self._bus = bus
        # The in-memory tail of the revocation feed (see `since`).
        self._feed_lock = threading.Lock()
        self._tickets_lock = threading.Lock()
        self._tickets = 0
        self._covered = 0
        self._floor = -1
        self._tail = 0
        self._events: list[Revocation] = []
        self._revisions: list[int] = []

    # ------------------------------------------------------------------ revoking

    def revoke(
        self,
        principal: Principal,
        *,
        serial: str | None = None,
        spiffe_id: str | None = None,
        reason: RevocationReason = RevocationReason.UNSPECIFIED,
        quarantine: bool | None = None,
    ) -> Revoked:
        """Revoke one certificate by serial, or every unexpired SVID of a SPIFFE ID.

        Revoking a certificate refuses that certificate (CRL, OCSP, proxies) and its holder
        gets a new one; it does not cut the identity off. A key compromise is the exception
        by default: whoever holds the key may hold others, so unless *quarantine* is False
        the certificates' SPIFFE ID is also quarantined (until released), in the same
        transaction. *quarantine* True quarantines for any reason.

        Raises:
            InvalidRequest: not exactly one of *serial* and *spiffe_id*.
            InvalidSpiffeId: *spiffe_id* is malformed.
            NotFound: no such certificate, or no unexpired valid SVID of that ID.
            Conflict: the certificate is already revoked or has expired.
            StoreUnavailable: the database is down; nothing was revoked.
        """
        if (serial is None) == (spiffe_id is None):
            raise InvalidRequest("give exactly one of serial and spiffe_id")
        now = self._clock.now()
        with transaction(self._engine) as session:
            rows: list[CertificateRecord]
            if serial is not None:
                row = fetch_certificate(session, serial.lower(), for_update=True)
                if row is None:
                    raise NotFound(f"no certificate with serial {serial!r} was issued here")
                if row.status == CertificateStatus.REVOKED:
                    raise Conflict(f"certificate {row.serial} is already revoked")
                if row.not_after <= now:
                    raise Conflict(
                        f"certificate {row.serial} has expired; there is nothing to revoke"
                    )
                rows = [row]
                target = row.serial
            else:
                assert spiffe_id is not None
                target = str(SpiffeId.parse(spiffe_id))
                rows = list_certificates_to_revoke(session, now, spiffe_id=target)
                if not rows:
                    raise NotFound(f"no unexpired valid certificate for {target}")
            revision = self.record(session, rows, reason, principal.name)
            quarantined, sync_revision = self._quarantine_for(
                session, principal, rows, reason, quarantine
            )
            self._audit.record(
                session,
                principal.name,
                "certificate:revocation:created",
                target=target,
                details={
                    "reason": str(reason),
                    "serials": [r.serial for r in rows][:100],
                    "count": len(rows),
                    "revision": revision,
                    "quarantined": quarantined is not None,
                },
            )
        self._bus.publish(REVOCATION_CHANNEL, str(revision))
        if sync_revision:
            announce(self._bus, sync_revision)
        return Revoked(tuple(r.serial for r in rows), revision, quarantined)

    def _quarantine_for(
        self,
        session: Session,
        principal: Principal,
        rows: Sequence[CertificateRecord],
        reason: RevocationReason,
        wanted: bool | None,
    ) -> tuple[Quarantine | None, int]:
        """The quarantine a revocation of *rows* makes (None: none) and the sync revision it
        advanced to (0: none). An identity already quarantined stays as it is."""
        if wanted is None:
            wanted = reason == RevocationReason.KEY_COMPROMISE
        ids = sorted({r.spiffe_id for r in rows if r.spiffe_id})
        if not wanted or not ids:
            return None, 0
        if self._quarantines is None:
            raise InvalidRequest("quarantine is not available on this server")
        # One SPIFFE ID per call: by serial one certificate, by SPIFFE ID that ID.
        spiffe_id = ids[0]
        held = fetch_quarantine(session, spiffe_id)
        if held is not None and held.active(self._clock.now()):
            return None, 0
        serials = ", ".join(r.serial for r in rows[:3]) + (", ..." if len(rows) > 3 else "")
        return self._quarantines.quarantine_in(
            session,
            principal.name,
            spiffe_id,
            f"certificate revoked ({reason}): {serials}",
            None,
            details={"revocation": str(reason)},
        )

    def revoke_issued_by(
        self, session: Session, issuer_kid: str, reason: RevocationReason, actor: str
    ) -> int:
        """Inside the caller's transaction, revoke every unexpired certificate *issuer_kid*
        signed; returns how many."""
        rows = list_certificates_to_revoke(session, self._clock.now(), issuer_kid=issuer_kid)
        if rows:
            self.record(session, rows, reason, actor)
        return len(rows)

    def record(
        self,
        session: Session,
        certificates: Sequence[Revocable],
        reason: RevocationReason,
        actor: str,
    ) -> int:
        """Inside the caller's transaction, mark issued *certificates* revoked and append
        them to the revocation feed; returns the newest revision."""
        now = self._clock.now()
        newest = self._append(session, certificates, reason, actor, now)
        # The same instant as the feed's: the CRL and OCSP answer one revocation time.
        update_certificates_revoked(session, [c.serial for c in certificates], now, reason)
        return newest

    def record_entries(
        self,
        session: Session,
        entries: Sequence[Revocable],
        reason: RevocationReason,
        actor: str,
    ) -> int:
        """Inside the caller's transaction, append revocation events for *entries* (issued
        certificates, or a `RevocationTarget` such as an intermediate CA certificate);
        returns the newest revision.

        The counter row is updated first, so its lock orders concurrent revokers by commit.
        """
        return self._append(session, entries, reason, actor, self._clock.now())

    @staticmethod
    def _append(
        session: Session,
        entries: Sequence[Revocable],
        reason: RevocationReason,
        actor: str,
        now: datetime,
    ) -> int:
        newest = update_revocation_revision(session, len(entries))
        first = newest - len(entries) + 1
        create_revocations(
            session,
            [
                Revocation(
                    revision=first + offset,
                    serial=entry.serial,
                    issuer_kid=entry.issuer_kid,
                    spiffe_id=entry.spiffe_id,
                    reason=reason,
                    revoked_at=now,
                    not_after=entry.not_after,
                    revoked_by=actor,
                )
                for offset, entry in enumerate(entries)
            ],
        )
        return newest

    # ------------------------------------------------------------------ reading

    def get_certificate(self, serial: str) -> CertificateRecord:
        """The issued certificate with *serial* (hex, any case).

        Raises:
            NotFound: no certificate with that serial.
        """
        with transaction(self._engine) as session:
            row = fetch_certificate(session, serial.lower())
        if row is None:
            raise NotFound(f"no certificate with serial {serial!r} was issued here")
        return row

    def list_certificates(
        self,
        *,
        spiffe_id: str | None = None,
        status: CertificateStatus | None = None,
        issuer_kid: str | None = None,
        live_only: bool = False,
        after: str | None = None,
        limit: int = 100,
    ) -> list[CertificateRecord]:
        """A page of issued certificates ordered by serial; pass the last serial as *after*
        for the next page.

        Raises:
            InvalidRequest: *limit* out of range.
        """
        limit = _page_limit(limit)
        with transaction(self._engine) as session:
            return list_certificates(
                session,
                spiffe_id=spiffe_id,
                status=status,
                issuer_kid=issuer_kid,
                expiring_after=self._clock.now() if live_only else None,
                after=after.lower() if after is not None else None,
                limit=limit,
            )

    def latest_certificates(self, spiffe_id: str, limit: int = 20) -> list[CertificateRecord]:
        """The newest certificates issued for *spiffe_id*, newest first.

        Raises:
            InvalidRequest: *limit* out of range.
        """
        limit = _page_limit(limit)
        with transaction(self._engine) as session:
            return list_latest_certificates(session, spiffe_id, limit)

    def since(
        self, revision: int, limit: int = MAX_PAGE, announced: int | None = None
    ) -> RevocationFeed:
        """Revocations with a revision greater than *revision*, oldest first (for agents:
        resume from the returned `revision`).

        Every agent long-polling this replica asks the same question when a revocation is
        announced; recent events are kept in memory and one database read answers all the
        callers that were already waiting when it started (single flight). *announced* is
        the revision a `revocation` notification carried: when memory already holds it, no
        read is needed at all.

        Raises:
            InvalidRequest: negative revision or *limit* out of range.
            StoreUnavailable: the database is down.
        """
        if revision < 0:
            raise InvalidRequest("revision must not be negative")
        limit = _page_limit(limit)
        with self._tickets_lock:
            self._tickets += 1
            ticket = self._tickets
        with self._feed_lock:
            known = announced is not None and self._floor >= 0 and announced <= self._tail
            if self._covered < ticket and not known:
                with self._tickets_lock:
                    covered = self._tickets
                self._pull()
                self._covered = covered
            if revision >= self._floor:
                start = bisect.bisect_right(self._revisions, revision)
                events = tuple(self._events[start : start + limit])
            else:
                events = self._query_since(revision, limit)
        # Only what was read moves the agent forward: a revision is never skipped.
        return RevocationFeed(events, events[-1].revision if events else revision)

    def _pull(self) -> None:
        """Append the events committed since the cache was last filled."""
        with transaction(self._engine) as session:
            if self._floor < 0:
                # First use: the cache starts at the current revision; older questions go
                # to the database.
                self._floor = self._tail = self.revision(session)
                return
            fresh = list_revocations_since(session, self._tail)
        for event in fresh:
            self._events.append(event)
            self._revisions.append(event.revision)
        if fresh:
            self._tail = fresh[-1].revision
        if len(self._events) > FEED_CACHE:
            drop = len(self._events) - FEED_CACHE
            self._floor = self._revisions[drop - 1]
            del self._events[:drop], self._revisions[:drop]

    def _query_since(self, revision: int, limit: int) -> tuple[Revocation, ...]:
        with transaction(self._engine) as session:
            return tuple(list_revocations_since(session, revision, limit))

    @staticmethod
    def revision(session: Session) -> int:
        """The newest revocation revision, read in the caller's transaction."""
        return fetch_revocation_revision(session)

    def current_revision(self) -> int:
        """The newest revocation revision (where a new agent starts following the feed)."""
        with transaction(self._engine) as session:
            return self.revision(session)

    # ------------------------------------------------------------------ CRLs

    def crl(self, issuer_kid: str) -> bytes:
        """The current DER CRL of *issuer_kid*, regenerated first if a revocation made it
        stale or its next update is near.

        Raises:
            NotFound: no CA key of that kid signs CRLs here.
            StoreUnavailable: the database is down.
        """
        authority = self._ca.state.issuers.get(issuer_kid)
        if authority is None:
            raise NotFound(f"no CRL is published for CA key {issuer_kid!r}")
        with transaction(self._engine) as session:
            stored = fetch_crl(session, issuer_kid)
            if stored is not None and self._fresh(session, stored):
                return stored.der
        return self._generate(issuer_kid)

    def _fresh(self, session: Session, stored: CrlRecord) -> bool:
        newest = fetch_crl_revision(session, stored.issuer_kid)
        # Regenerate at half the validity, well before nextUpdate (RFC 5280 §5.1.2.5).
        due = stored.this_update + self._settings.crl_validity / 2
        return newest <= stored.revision and self._clock.now() < due

    def _generate(self, issuer_kid: str) -> bytes:
        authority = self._ca.state.issuers[issuer_kid]
        now = self._clock.now()
        try:
            with transaction(self._engine) as session:
                stored = fetch_crl(session, issuer_kid, for_update=True)
                if stored is not None and self._fresh(session, stored):
                    return stored.der  # another replica regenerated it meanwhile
                # RFC 5280 §3.3: an entry may leave once it appeared on one CRL issued after
                # the certificate expired; keep it for a whole validity period to be sure.
                horizon = now - self._settings.crl_validity
                events = list_crl_entries(session, issuer_kid, horizon)
                revision = max((listed for *_, listed in events), default=0)
                newest = fetch_crl_revision(session, issuer_kid)
                number = stored.number + 1 if stored is not None else 1
                crl = build_crl(
                    authority.certificate,
                    authority.private_key,
                    (
                        RevokedEntry(int(serial, 16), revoked_at, RevocationReason(reason))
                        for serial, revoked_at, reason, _ in events
                    ),
                    number,
                    now - CA_BACKDATE,
                    now + self._settings.crl_validity,
                )
                der = crl_der(crl)
                update_crl(
                    session,
                    CrlRecord(
                        issuer_kid=issuer_kid,
                        number=number,
                        revision=max(revision, newest),
                        entries=len(events),
                        this_update=crl.last_update_utc,
                        next_update=crl.next_update_utc or now,
                        der=der,
                    ),
                )
                return der
        except IntegrityError:
            # Two replicas generated the first CRL at once; the other one's is as good.
            with transaction(self._engine) as session:
                stored = fetch_crl(session, issuer_kid)
                assert stored is not None
                return stored.der

    def refresh_crls(self) -> int:
        """Regenerate every stale or ageing CRL (the leader's ticker); returns how many."""
        count = 0
        for kid in self._ca.state.issuers:
            with transaction(self._engine) as session:
                stored = fetch_crl(session, kid)
                fresh = stored is not None and self._fresh(session, stored)
            if not fresh:
                self._generate(kid)
                count += 1
        return count

    # ------------------------------------------------------------------ OCSP

    def ocsp(self, request_der: bytes) -> bytes:
        """Answer one DER OCSP request with a DER OCSP response (RFC 6960).

        Protocol errors are answered in the protocol: malformedRequest for bad DER,
        unauthorized for a CertID of a CA this responder does not serve (RFC 6960 §2.3).
        """
        try:
            request = parse_ocsp_request(request_der)
        except InvalidOcspRequest:
            return ocsp_error(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        state = self._ca.state
        match = next(
            (
                (kid, authority)
                for kid, authority in state.issuers.items()
                if not authority.is_root and ocsp_request_names(request, authority.certificate)
            ),
            None,
        )
        if match is None:
            return ocsp_error(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        kid, authority = match
        with transaction(self._engine) as session:
            row = fetch_ocsp_status(session, format(request.serial_number, "x"))
        status: CertStatus
        if row is None or row.issuer_kid != kid:
            status = UNKNOWN
        elif row.status == CertificateStatus.REVOKED:
            status = CertStatus(
                ocsp.OCSPCertStatus.REVOKED,
                row.revoked_at,
                RevocationReason(row.revocation_reason or RevocationReason.UNSPECIFIED),
            )
        else:
            status = GOOD
        now = self._clock.now()
        return build_ocsp_response(
            request,
            authority.certificate,
            authority.private_key,
            status,
            now,
            now + self._settings.ocsp_validity,
        )
