"""What agents ask of the server once attested: sync (long-poll), SVIDs for their entries."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pki.clock import Clock
from pki.errors import TrustdError
from pki.jwt_svid import JwtSvid, mint_jwt_svid
from pki.spiffe_id import SpiffeId
from pki.wit_svid import WitSvid
from trustd import metrics, tracing
from trustd.addresses import parse_workload_address
from trustd.bus import Bus
from trustd.domain.certificates import CertificateKind
from trustd.domain.entries import Entry as RegistrationEntry
from trustd.domain.nodes import Unmanaged
from trustd.domain.quarantines import Quarantine
from trustd.domain.revocations import Revocation
from trustd.domain.verdicts import VerdictDelta
from trustd.errors import Conflict, InvalidRequest, PermissionDenied
from trustd.services.audit import AuditLog
from trustd.services.ca import CertificateAuthority
from trustd.services.entries import MAX_IP_ADDRESSES, Entries, NodeView
from trustd.services.federation import Federations
from trustd.services.issuance import IssuanceRequest, IssuedX509, Issuer
from trustd.services.nodes import NodePrincipal, Nodes
from trustd.services.policy import CHANNEL as POLICY_CHANNEL
from trustd.services.revocation import REVOCATION_CHANNEL, Revocations
from trustd.services.sync import SYNC_CHANNEL, announce, bump_revision, current_revision
from trustd.services.verdicts import Verdicts
from trustd.store.db import transaction
from trustd.store.nodes import fetch_node
from trustd.store.quarantines import list_quarantines
from trustd.store.verdicts import (
    fetch_sources,
    list_node_reported_addresses,
    update_node_reported_addresses,
)

MAX_SVIDS_PER_REQUEST = 500
MAX_REPORTED_IDENTITIES = 1000
log = structlog.get_logger("trustd.agents")


def _quarantined(quarantine: Quarantine) -> str:
    until = f" until {quarantine.until.isoformat()}" if quarantine.until else ""
    return f"{quarantine.spiffe_id} is quarantined{until}: {quarantine.reason}"


@dataclass(frozen=True)
class Snapshot:
    revision: int
    entries: list[RegistrationEntry]
    bundle: dict[str, Any]
    # Revocations after the agent's revocation cursor, and where the cursor moves to.
    revocations: tuple[Revocation, ...] = ()
    revocation_revision: int = 0
    # Verdict and IP-cache changes since the revision the agent applied (None: none).
    verdicts: VerdictDelta | None = None
    # The quarantines in force of the SPIFFE IDs of the node's entries.
    quarantines: tuple[Quarantine, ...] = ()
    # The node's enforcement scope (None: the node is gone).
    scope: tuple[Unmanaged, tuple[str, ...]] | None = None
    # The bundles (SPIFFE JWKS) of the trust domains the node's entries federate with.
    federated_bundles: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class SignedSvid:
    entry_id: str
    issued: IssuedX509


@dataclass(frozen=True)
class RefusedSvid:
    entry_id: str
    detail: str


@dataclass(frozen=True)
class Hosted:
    """What a node hosts: the SPIFFE IDs of the entries it may serve, and the addresses its
    workloads hold (those its agent reported, and the prefixes its entries declare)."""

    spiffe_ids: frozenset[str]
    addresses: frozenset[str]
    prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def holds(self, address: str) -> bool:
        """Whether a workload of the node holds `address` (canonical text)."""
        if address in self.addresses:
            return True
        ip = ipaddress.ip_address(address)
        return any(ip in prefix for prefix in self.prefixes)


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
        federation: Federations | None = None,
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
        self._federation = federation
        # The federated bundles of each set of trust domains, as read at a sync revision.
        self._federated_held: dict[frozenset[str], tuple[int, dict[str, dict[str, Any]]]] = {}
        self._draining = asyncio.Event()
        # Each node's entries as last read, with the sync revision they were read at.
        self._entries_held: dict[
            tuple[str, frozenset[str]], tuple[int, list[RegistrationEntry]]
        ] = {}
        # Each node's enforcement scope, with the sync revision it was read at.
        self._scopes_held: dict[str, tuple[int, tuple[Unmanaged, tuple[str, ...]] | None]] = {}
        # Every quarantine, as read at a sync revision (each change advances it).
        self._quarantines_held: tuple[int, dict[str, Quarantine]] = (-1, {})
        # The sync revision each node's agent last said it applied.
        self._applied: dict[str, int] = {}
        self._parked = 0

    @property
    def parked(self) -> int:
        """How many long-polls of this process are waiting for a change right now."""
        return self._parked

    def _entries_in(self, session: Session, principal: NodePrincipal) -> list[RegistrationEntry]:
        view = NodeView(
            principal.spiffe_id,
            principal.selectors,
            self._entries.aliases_of(session, principal.selectors),
        )
        return self._entries.for_node(session, view)

    def _local(
        self, session: Session, principal: NodePrincipal, revision: int
    ) -> list[RegistrationEntry]:
        """The node's entries at sync revision `revision`, read once per revision: a change
        that leaves the revision alone (policy, revocations) wakes every long-poll, and
        none of them needs the entries read again."""
        key = (principal.spiffe_id, principal.selectors)
        held = self._entries_held.get(key)
        if held is not None and held[0] == revision:
            return held[1]
        entries = self._entries_in(session, principal)
        self._entries_held[key] = (revision, entries)
        return entries

    def _scope(
        self, session: Session, principal: NodePrincipal, revision: int
    ) -> tuple[Unmanaged, tuple[str, ...]] | None:
        """The node's enforcement scope, read once per sync revision (a change of it
        advances the revision)."""
        held = self._scopes_held.get(principal.spiffe_id)
        if held is not None and held[0] == revision:
            return held[1]
        node = fetch_node(session, principal.spiffe_id)
        scope = (node.unmanaged, node.always_allowed) if node is not None else None
        self._scopes_held[principal.spiffe_id] = (revision, scope)
        return scope

    def _quarantined(self, session: Session, revision: int) -> dict[str, Quarantine]:
        """Every quarantine by SPIFFE ID, read once per sync revision (quarantining and
        releasing advance it)."""
        held = self._quarantines_held
        if held[0] != revision:
            held = (revision, {q.spiffe_id: q for q in list_quarantines(session)})
            self._quarantines_held = held
        return held[1]

    def _node_quarantines(
        self, quarantined: dict[str, Quarantine], entries: Sequence[RegistrationEntry]
    ) -> tuple[Quarantine, ...]:
        now = self._clock.now()
        found = {quarantined.get(e.spiffe_id) for e in entries} - {None}
        return tuple(sorted((q for q in found if q and q.active(now)), key=lambda q: q.spiffe_id))

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

        The cursors are what the agent applied: they are recorded as its acknowledgement.

        Raises:
            PolicyEvaluationError: the attestation or mesh policy failed (the node gets
                nothing).
        """
        enforcing = verdict_since is not None and self._verdicts is not None
        # One read for the cursors and, when the sync revision moved past what this
        # process read the node's entries at, the entries.
        with transaction(self._engine) as session:
            sources = fetch_sources(session)
            revision, revocation_revision = sources.sync, sources.revocation
            moved = revision > since or (
                revoked_since is not None and revocation_revision > revoked_since
            )
            quarantined: dict[str, Quarantine] = {}
            scope = None
            federated: dict[str, dict[str, Any]] = {}
            if not (moved or enforcing):
                entries: list[RegistrationEntry] = []
            else:
                entries = self._local(session, principal, revision)
                quarantined = self._quarantined(session, revision)
                scope = self._scope(session, principal, revision)
                federated = self._federated(session, entries)
        # A revision past the newest is no revision the agent can hold.
        if since <= revision:
            self._note_applied(principal, since)
        if not (moved or enforcing):
            return None
        verdicts = None
        if self._verdicts is not None and verdict_since is not None:
            # Verdicts also move with policy and revocations, which leave the entry revision
            # alone; the revision is compiled once per change, by the first who asks.
            verdicts = self._verdicts.delta_for(
                principal.spiffe_id, (e.spiffe_id for e in entries), sources, verdict_since
            )
        if not moved and verdicts is None:
            return None
        if revoked_since is not None and revocation_revision > revoked_since:
            feed = self._revocations.since(revoked_since)
            revoked, cursor = feed.events, feed.revision
        elif revoked_since is not None:
            # Nothing revoked since the agent's cursor: no need to ask the feed (every
            # long-poll a policy or entry change wakes would queue on it).
            revoked, cursor = (), revoked_since
        else:
            revoked, cursor = (), revocation_revision
        return Snapshot(
            revision,
            entries,
            self._ca.state.bundle.to_jwks(),
            revoked,
            cursor,
            verdicts,
            self._node_quarantines(quarantined, entries),
            scope,
            federated,
        )

    def _federated(
        self, session: Session, entries: Sequence[RegistrationEntry]
    ) -> dict[str, dict[str, Any]]:
        """The bundles of the trust domains the entries federate with, read once per sync
        revision and set of domains (a change of a federated bundle advances the revision)."""
        wanted = frozenset(td for e in entries for td in e.federates_with)
        if not wanted or self._federation is None:
            return {}
        revision = current_revision(session)
        held = self._federated_held.get(wanted)
        if held is not None and held[0] == revision:
            return held[1]
        found = {
            f.trust_domain: f.bundle.to_jwks()
            for f in self._federation.bundles_in(session, sorted(wanted))
            if f.bundle is not None
        }
        if len(self._federated_held) > 1024:
            self._federated_held.clear()
        self._federated_held[wanted] = (revision, found)
        return found

    def _note_applied(self, principal: NodePrincipal, since: int) -> None:
        """The long-poll's `since` is the sync revision the agent applied: record it (the
        acknowledgement rides on the next long-poll) when it is news. The verdict
        revision is recorded the same way by `Verdicts.delta_for`."""
        if since > 0 and self._applied.get(principal.spiffe_id) != since:
            self._nodes.touch(principal, since)
            self._applied[principal.spiffe_id] = since

    def drain(self) -> None:
        """The server is stopping: answer every waiting long-poll now ("no change")."""
        self._draining.set()

    @tracing.traced("trustd.sync")
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
                self._parked += 1
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self._parked -= 1
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return None

    def _allowed(
        self, principal: NodePrincipal
    ) -> tuple[dict[str, RegistrationEntry], dict[str, Quarantine]]:
        """The node's entries by id, and the quarantines in force of their SPIFFE IDs (a
        quarantined identity gets no SVID, whichever node asks)."""
        # Only the entries: signing needs neither the bundle nor the revocation feed.
        with transaction(self._engine) as session:
            entries = self._entries_in(session, principal)
            quarantined = list_quarantines(session, self._clock.now())
        held = {q.spiffe_id: q for q in quarantined}
        return {e.id: e for e in entries}, {
            e.spiffe_id: held[e.spiffe_id] for e in entries if e.spiffe_id in held
        }

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
        allowed, quarantined = self._allowed(principal)
        refused: list[RefusedSvid] = []
        asked: list[tuple[str, IssuanceRequest]] = []
        for entry_id, csr in requests:
            entry = allowed.get(entry_id)
            if entry is None:
                refused.append(RefusedSvid(entry_id, "this node may not serve that entry"))
                continue
            if entry.spiffe_id in quarantined:
                refused.append(RefusedSvid(entry_id, _quarantined(quarantined[entry.spiffe_id])))
                continue
            asked.append(
                (
                    entry_id,
                    IssuanceRequest(
                        kind=CertificateKind.X509_SVID,
                        spiffe_id=entry.spiffe_id,
                        actor=principal.spiffe_id,
                        csr=csr.encode(),
                        ttl=timedelta(seconds=entry.x509_ttl),
                        dns_names=tuple(entry.dns_names),
                    ),
                )
            )
        signed: list[SignedSvid] = []
        if asked:
            # The issuance pipeline signs each, refuses bad ones alone and records the rest
            # in this one transaction, committed before any SVID is returned.
            with transaction(self._engine) as session:
                outcomes = self._issuer.issue_all_in(session, [r for _, r in asked])
            for (entry_id, _), outcome in zip(asked, outcomes, strict=True):
                if isinstance(outcome, TrustdError):
                    refused.append(RefusedSvid(entry_id, outcome.detail))
                else:
                    signed.append(SignedSvid(entry_id, outcome))
        return signed, refused

    def mint_jwt(self, principal: NodePrincipal, entry_id: str, audience: Sequence[str]) -> JwtSvid:
        """A JWT-SVID for one of the node's entries, with the entry's TTL.

        Raises:
            PermissionDenied: the node may not serve that entry, or its identity is
                quarantined. InvalidJwt: bad audience.
        """
        allowed, quarantined = self._allowed(principal)
        entry = allowed.get(entry_id)
        if entry is None:
            raise PermissionDenied("this node may not serve that entry")
        if entry.spiffe_id in quarantined:
            raise PermissionDenied(_quarantined(quarantined[entry.spiffe_id]))
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

    def mint_wit(
        self, principal: NodePrincipal, entry_id: str, workload_key: Mapping[str, Any]
    ) -> WitSvid:
        """A WIT-SVID for one of the node's entries, binding the workload key the agent
        generated (its public JWK with ``alg``), through the issuance pipeline.

        Raises:
            FeatureDisabled: WIT-SVIDs are off. PermissionDenied: the node may not serve
                that entry, or its identity is quarantined. InvalidWit, WeakKey: the key
                is refused.
        """
        allowed, quarantined = self._allowed(principal)
        entry = allowed.get(entry_id)
        if entry is None:
            raise PermissionDenied("this node may not serve that entry")
        if entry.spiffe_id in quarantined:
            raise PermissionDenied(_quarantined(quarantined[entry.spiffe_id]))
        return self._issuer.mint_wit_svid(
            principal.spiffe_id, entry.spiffe_id, workload_key, details={"entry_id": entry_id}
        )

    def hosted(self, principal: NodePrincipal) -> Hosted:
        """The identities and addresses of the node's workloads: its entries as its sync
        serves them (read once per sync revision) and what its agent reported.

        Raises:
            PolicyEvaluationError: the attestation policy failed (the node hosts nothing).
        """
        with transaction(self._engine) as session:
            entries = self._local(session, principal, current_revision(session))
            reported = list_node_reported_addresses(session, principal.spiffe_id)
        prefixes = tuple(
            ipaddress.ip_network(prefix, strict=False) for e in entries for prefix in e.ip_addresses
        )
        return Hosted(
            frozenset(e.spiffe_id for e in entries),
            frozenset(r.address for r in reported),
            prefixes,
        )

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
            for row in list_node_reported_addresses(session, principal.spiffe_id)
        }
        added, removed = sorted(wanted - held.keys()), sorted(held.keys() - wanted)
        if not added and not removed:
            return None
        update_node_reported_addresses(
            session, principal.spiffe_id, [held[k] for k in removed], added, self._clock.now()
        )
        self._audit.record(
            session,
            principal.spiffe_id,
            "node:addresses:reported",
            target=principal.spiffe_id,
            details={"added": [list(k) for k in added], "removed": [list(k) for k in removed]},
        )
        return _ReportChange(len(added), len(removed), bump_revision(session))
