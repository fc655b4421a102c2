"""What agents ask of the server once attested: sync (long-poll), SVIDs for their entries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from pki.ca import X509SvidParams, csr_public_key, parse_csr
from pki.clock import Clock
from pki.errors import TrustdError
from pki.jwt_svid import JwtSvid, mint_jwt_svid
from pki.spiffe_id import SpiffeId
from trustd import metrics
from trustd.addresses import parse_workload_address
from trustd.bus import Bus
from trustd.domain.certificates import CertificateKind
from trustd.domain.entries import Entry as RegistrationEntry
from trustd.domain.revocations import Revocation
from trustd.errors import Conflict, InvalidRequest, PermissionDenied
from trustd.services.audit import AuditLog
from trustd.services.ca import CertificateAuthority
from trustd.services.entries import MAX_IP_ADDRESSES, Entries, NodeView
from trustd.services.issuance import IssuedX509, Issuer
from trustd.services.nodes import NodePrincipal, Nodes
from trustd.services.policy import CHANNEL as POLICY_CHANNEL
from trustd.services.revocation import REVOCATION_CHANNEL, Revocations
from trustd.services.sync import SYNC_CHANNEL, announce, bump_revision, current_revision
from trustd.services.verdicts import Verdicts, VerdictUpdate
from trustd.store.db import transaction
from trustd.store.verdicts import ReportedAddress

MAX_SVIDS_PER_REQUEST = 500
MAX_REPORTED_IDENTITIES = 1000
log = structlog.get_logger("trustd.agents")


@dataclass(frozen=True)
class Snapshot:
    revision: int
    entries: list[RegistrationEntry]
    bundle: dict[str, Any]
    # Revocations after the agent's revocation cursor, and where the cursor moves to.
    revocations: tuple[Revocation, ...] = ()
    revocation_revision: int = 0
    # Verdict and IP-cache changes since the revision the agent applied (None: none).
    verdicts: VerdictUpdate | None = None


@dataclass(frozen=True)
class SignedSvid:
    entry_id: str
    issued: IssuedX509


@dataclass(frozen=True)
class RefusedSvid:
    entry_id: str
    detail: str


@dataclass(frozen=True)
class _ReportChange:
    added: int
    removed: int
    revision: int


class Agents:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        audit: AuditLog,
        bus: Bus,
        nodes: Nodes,
        entries: Entries,
        issuer: Issuer,
        ca: CertificateAuthority,
        revocations: Revocations,
        verdicts: Verdicts | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._bus = bus
        self._nodes = nodes
        self._entries = entries
        self._issuer = issuer
        self._ca = ca
        self._revocations = revocations
        self._verdicts = verdicts
        self._draining = asyncio.Event()

    def _node_entries(self, principal: NodePrincipal) -> tuple[int, list[RegistrationEntry]]:
        with transaction(self._engine) as session:
            return current_revision(session), self._entries_in(session, principal)

    def _entries_in(self, session: Session, principal: NodePrincipal) -> list[RegistrationEntry]:
        view = NodeView(
            principal.spiffe_id,
            principal.selectors,
            self._entries.aliases_of(session, principal.selectors),
        )
        return self._entries.for_node(session, view)

    def _changed(
        self,
        principal: NodePrincipal,
        since: int,
        revoked_since: int | None,
        verdict_since: int | None,
    ) -> Snapshot | None:
        """Everything the node should hold now, if any of it moved past the agent's cursors
        (else None): stamped with the revision it reflects, the revocations after
        `revoked_since` (a new agent, with None, holds no SVID that could be revoked, so it
        only learns where the feed stands), and its verdicts as a delta from
        `verdict_since` (None: the agent does not enforce).

        Raises:
            PolicyEvaluationError: the attestation or mesh policy failed (the node gets
                nothing).
        """
        enforcing = verdict_since is not None and self._verdicts is not None
        # One read for both cursors and, when they moved or verdicts may have, the entries
        # at that revision.
        with transaction(self._engine) as session:
            revision = current_revision(session)
            revocation_revision = self._revocations.revision(session)
            moved = revision > since or (
                revoked_since is not None and revocation_revision > revoked_since
            )
            if not (moved or enforcing):
                return None
            entries = self._entries_in(session, principal)
        verdicts = None
        if self._verdicts is not None and verdict_since is not None:
            # Verdicts also move with policy and revocations, which leave the entry revision
            # alone: compile (cheap when nothing changed) and ask.
            verdicts = self._verdicts.update_for(
                principal.spiffe_id, entries, revision, revocation_revision, verdict_since
            )
        if not moved and verdicts is None:
            return None
        if revoked_since is not None:
            feed = self._revocations.since(revoked_since)
            revoked, cursor = feed.events, feed.revision
        else:
            revoked, cursor = (), revocation_revision
        return Snapshot(
            revision, entries, self._ca.state.bundle.to_jwks(), revoked, cursor, verdicts
        )

    def drain(self) -> None:
        """The server is stopping: answer every waiting long-poll now ("no change")."""
        self._draining.set()

    async def sync(
        self,
        principal: NodePrincipal,
        since: int,
        revoked_since: int | None,
        wait: float,
        verdict_since: int | None = None,
    ) -> Snapshot | None:
        """The node's state as soon as the revision passes `since`, a revocation passes
        `revoked_since` or the node's verdicts pass `verdict_since`, or None after `wait`
        seconds without any (the long-poll).
        """
        deadline = time.monotonic() + wait
        while not self._draining.is_set():
            # Listen before reading, so a change committed in between still wakes us.
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._bus.wait(channel))
                for channel in (SYNC_CHANNEL, REVOCATION_CHANNEL, POLICY_CHANNEL)
            ]
            waiters.append(asyncio.ensure_future(self._draining.wait()))
            await asyncio.sleep(0)
            try:
                # On a worker thread: when one change wakes every long-poll, their database
                # round trips overlap instead of queueing one by one on the event loop.
                snapshot = await asyncio.to_thread(
                    self._changed, principal, since, revoked_since, verdict_since
                )
                if snapshot is not None:
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return None

    def _allowed(self, principal: NodePrincipal) -> dict[str, RegistrationEntry]:
        # Only the entries: signing needs neither the bundle nor the revocation feed.
        return {e.id: e for e in self._node_entries(principal)[1]}

    def sign_svids(
        self, principal: NodePrincipal, requests: Sequence[tuple[str, str]]
    ) -> tuple[list[SignedSvid], list[RefusedSvid]]:
        """Sign workload keys for the node's entries. The SPIFFE ID, TTL and DNS names come
        from each entry; a request for an entry the node may not serve is refused alone.
        All signed SVIDs are recorded in one transaction before any is returned.

        Raises:
            InvalidRequest: too many requests at once.
        """
        if len(requests) > MAX_SVIDS_PER_REQUEST:
            raise InvalidRequest(f"at most {MAX_SVIDS_PER_REQUEST} CSRs per request")
        started = time.perf_counter()
        allowed = self._allowed(principal)
        signed: list[SignedSvid] = []
        refused: list[RefusedSvid] = []
        for entry_id, csr in requests:
            entry = allowed.get(entry_id)
            if entry is None:
                refused.append(RefusedSvid(entry_id, "this node may not serve that entry"))
                continue
            try:
                params = X509SvidParams(
                    SpiffeId.parse(entry.spiffe_id),
                    csr_public_key(parse_csr(csr.encode())),
                    timedelta(seconds=entry.x509_ttl),
                    dns_names=tuple(entry.dns_names),
                )
                signed.append(SignedSvid(entry_id, self._issuer.sign(params)))
            except TrustdError as exc:
                refused.append(RefusedSvid(entry_id, exc.detail))
        if signed:
            with transaction(self._engine) as session:
                for item in signed:
                    self._issuer.record(
                        session, principal.spiffe_id, item.issued, CertificateKind.X509_SVID
                    )
        metrics.ISSUANCE_SECONDS.labels("agent-batch").observe(time.perf_counter() - started)
        return signed, refused

    def mint_jwt(self, principal: NodePrincipal, entry_id: str, audience: Sequence[str]) -> JwtSvid:
        """A JWT-SVID for one of the node's entries, with the entry's TTL.

        Raises:
            PermissionDenied: the node may not serve that entry. InvalidJwt: bad audience.
        """
        entry = self._allowed(principal).get(entry_id)
        if entry is None:
            raise PermissionDenied("this node may not serve that entry")
        signer = self._ca.state.jwt_signer
        svid = mint_jwt_svid(
            signer.key,
            signer.kid,
            SpiffeId.parse(entry.spiffe_id),
            audience,
            timedelta(seconds=entry.jwt_ttl),
            self._clock,
        )
        with transaction(self._engine) as session:
            self._audit.record(
                session,
                principal.spiffe_id,
                "svid:jwt:issued",
                target=entry.spiffe_id,
                details={"audience": list(svid.audience), "entry_id": entry_id},
            )
        return svid

    def report_addresses(
        self, principal: NodePrincipal, reported: Sequence[tuple[str, Sequence[str]]]
    ) -> bool:
        """Replace everything the node reported before with `reported`: the addresses its
        agent found held by workloads with each SPIFFE ID (those it does not list it reports
        none for). Only SPIFFE IDs of the node's own entries are accepted. A change advances
        the sync revision, so every agent gets the new IP cache; returns whether one was made.

        Raises:
            InvalidRequest: too many identities or addresses, an ID listed twice, or an
                address that cannot identify a workload. InvalidSpiffeId: a malformed ID.
            PermissionDenied: an ID of no entry this node may serve.
            PolicyEvaluationError: the attestation policy failed (nothing is changed).
        """
        try:
            changed = self._replace_report(principal, reported)
        except TrustdError:
            metrics.ADDRESS_REPORTS.labels("refused").inc()
            raise
        metrics.ADDRESS_REPORTS.labels("changed" if changed else "unchanged").inc()
        return changed

    def _replace_report(
        self, principal: NodePrincipal, reported: Sequence[tuple[str, Sequence[str]]]
    ) -> bool:
        if len(reported) > MAX_REPORTED_IDENTITIES:
            raise InvalidRequest(f"at most {MAX_REPORTED_IDENTITIES} identities per report")
        wanted: set[tuple[str, str]] = set()
        seen: set[str] = set()
        for raw_id, addresses in reported:
            spiffe_id = str(SpiffeId.parse(raw_id))
            if spiffe_id in seen:
                raise InvalidRequest(f"{spiffe_id} is listed twice")
            seen.add(spiffe_id)
            if len(addresses) > MAX_IP_ADDRESSES:
                raise InvalidRequest(f"at most {MAX_IP_ADDRESSES} addresses per identity")
            wanted.update((spiffe_id, parse_workload_address(a)) for a in addresses)
        try:
            with transaction(self._engine) as session:
                change = self._store_report(session, principal, seen, wanted)
        except IntegrityError:
            raise Conflict("another report from this node was stored meanwhile") from None
        if change is None:
            return False
        log.info(
            "addresses_reported",
            node=principal.spiffe_id,
            added=change.added,
            removed=change.removed,
            revision=change.revision,
        )
        announce(self._bus, change.revision)
        return True

    def _store_report(
        self,
        session: Session,
        principal: NodePrincipal,
        spiffe_ids: set[str],
        wanted: set[tuple[str, str]],
    ) -> _ReportChange | None:
        """What the report changed (None: nothing)."""
        served = {e.spiffe_id for e in self._entries_in(session, principal)}
        foreign = sorted(spiffe_ids - served)
        if foreign:
            raise PermissionDenied(f"this node may not serve {foreign[0]}")
        held = {
            (row.spiffe_id, row.address): row
            for row in session.exec(
                select(ReportedAddress).where(ReportedAddress.node_id == principal.spiffe_id)
            ).all()
        }
        added, removed = sorted(wanted - held.keys()), sorted(held.keys() - wanted)
        if not added and not removed:
            return None
        for key in removed:
            session.delete(held[key])
        now = self._clock.now()
        session.add_all(
            ReportedAddress(
                node_id=principal.spiffe_id, spiffe_id=spiffe_id, address=address, reported_at=now
            )
            for spiffe_id, address in added
        )
        self._audit.record(
            session,
            principal.spiffe_id,
            "node:addresses:reported",
            target=principal.spiffe_id,
            details={"added": [list(k) for k in added], "removed": [list(k) for k in removed]},
        )
        return _ReportChange(len(added), len(removed), bump_revision(session))
