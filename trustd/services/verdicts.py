"""Verdicts for the nodes: numeric identities, the IP -> identity table, and which
(source identity, port, protocol) may reach each local destination identity at L4.

Verdicts are compiled once per change: a verdict revision is one state shared by every
node (identities, IP cache, quarantined identities, and the L4 verdicts of every destination,
from `policy.verdicts.L4Compiler`), stored in `verdict_revisions`. The first long-poll
that finds the stored revision older than what it is compiled from (the policy, sync and
revocation revisions) compiles the new one under a lock every replica takes (PostgreSQL
advisory lock), so the change is compiled once and the other replicas read what it stored.
A node's state is the shared sections with the verdicts of its own destinations; its delta
from the revision its agent holds is the difference of the two slices, computed from the
states each process keeps in memory, with the shared sections' difference computed once
per pair of revisions.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog
from sqlalchemy import Engine
from sqlmodel import Session

from pki.clock import Clock
from policy.bundle import Bundle
from policy.verdicts import MESH_PACKAGE, PROTOCOLS, L4Compiler
from trustd import metrics
from trustd.domain.verdicts import (
    IdentityChanges,
    IpcacheChanges,
    L7Policy,
    PolicyChanges,
    PolicyKey,
    PolicyVerdict,
    RevokedChanges,
    VerdictChanges,
    VerdictDelta,
    VerdictState,
)
from trustd.services.policy import PolicyService
from trustd.store.db import transaction
from trustd.store.quarantines import list_quarantined_spiffe_ids, update_quarantines_compiled
from trustd.store.verdicts import (
    FIRST_IDENTITY,
    RevisionHead,
    Sources,
    create_numeric_identities,
    create_revision,
    delete_reported_addresses,
    fetch_revision_head,
    fetch_revision_state,
    fetch_sources,
    list_entry_identities,
    list_reported_addresses,
    list_verdict_acks,
    lock_compilation,
    prune_reported_addresses,
    update_revision_sources,
    update_verdict_acks,
)

__all__ = [
    "AMBIGUOUS",
    "AMBIGUOUS_IDENTITY",
    "FIRST_IDENTITY",
    "AgentLag",
    "Compiled",
    "Sources",
    "Verdicts",
    "delete_reported_addresses",
    "node_policy",
    "prune_reported_addresses",
    "resolve_ipcache",
]

log = structlog.get_logger("trustd.verdicts")

# Reserved: an address that reports give to more than one identity. It is in no policy,
# so traffic from or to it is denied.
AMBIGUOUS_IDENTITY = 255
AMBIGUOUS = "reserved:ambiguous"
MAX_LOGGED = 20
KEEP_REVISIONS = 16


class ActivePolicy(Protocol):
    """The policy revision in force (`PolicyService.active`)."""

    @property
    def revision(self) -> int: ...

    @property
    def bundle(self) -> Bundle: ...


@dataclass(frozen=True)
class AgentLag:
    node_id: str
    revision: int
    applied_revision: int
    applied_at: datetime | None

    @property
    def lag(self) -> int:
        return self.revision - self.applied_revision


@dataclass(frozen=True)
class Compiled:
    """One verdict revision as this process holds it."""

    revision: int
    sources: Sources
    # The policy revision the verdicts (and the L7 policy sent with them) come from.
    policy_revision: int
    state: VerdictState


def node_policy(state: VerdictState, local: Iterable[str]) -> dict[PolicyKey, bool]:
    """A node's verdicts: those of its local destinations."""
    out: dict[PolicyKey, bool] = {}
    for spiffe_id in set(local):
        out.update((v.key, v.allow) for v in state.policy.get(spiffe_id, ()))
    return out


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _covering(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    declared: Mapping[Network, int],
    lengths: Mapping[int, Sequence[int]],
) -> int | None:
    """The identity of the longest declared prefix holding `address` (None: none does);
    `lengths` are the declared prefix lengths of each IP version, longest first."""
    for length in lengths.get(address.version, ()):
        number = declared.get(ipaddress.ip_network((address, length), strict=False))
        if number is not None:
            return number
    return None


def resolve_ipcache(
    entries: Sequence[tuple[str, str, Sequence[str]]],
    numbers: Mapping[str, int],
    reported: Iterable[tuple[str, str]],
) -> tuple[dict[str, int], list[str], list[str]]:
    """Prefix -> identity from the entries' declared prefixes (entry ID, SPIFFE ID,
    prefixes), then the addresses agents reported (SPIFFE ID, address) as /32s (/128s for
    IPv6); with the reported addresses held back and those found ambiguous. Each IP version
    is matched against its own prefixes only.

    Declared prefixes win: a reported address inside one (at any length) that names
    another identity is held back, since the /32 would override the operator's prefix in
    the longest-prefix match. A reported address two identities claim (two workloads
    sharing a network namespace, or an address moving) cannot be told apart: it maps to
    the reserved ambiguous identity, which no policy allows to or from, so it fails
    closed; leaving it out would make it unknown, and traffic to an unknown destination
    is not judged at all (enforce.c: C_UNMANAGED).
    """
    ipcache: dict[str, int] = {}
    for _, spiffe_id, prefixes in sorted(entries):
        for prefix in prefixes:
            ipcache.setdefault(prefix, numbers[spiffe_id])
    declared: dict[Network, int] = {
        ipaddress.ip_network(prefix): number for prefix, number in ipcache.items()
    }
    lengths = {
        version: sorted({n.prefixlen for n in declared if n.version == version}, reverse=True)
        for version in (4, 6)
    }
    in_use = {spiffe_id for _, spiffe_id, _ in entries}
    claims: dict[str, set[int]] = defaultdict(set)
    for spiffe_id, address in reported:
        # A report racing the deletion of the last entry with its SPIFFE ID may leave
        # rows behind; they count for nothing.
        if spiffe_id in in_use:
            claims[address].add(numbers[spiffe_id])
    held_back, ambiguous = [], []
    for address, claimants in sorted(claims.items()):
        host = ipaddress.ip_address(address)
        covering = _covering(host, declared, lengths)
        single = str(ipaddress.ip_network(host))
        if covering is not None:
            if claimants != {covering}:
                held_back.append(address)
        elif len(claimants) > 1:
            ambiguous.append(address)
            ipcache[single] = AMBIGUOUS_IDENTITY
        else:
            ipcache[single] = next(iter(claimants))
    return ipcache, held_back, ambiguous


def cuts_established(data: Mapping[str, Any]) -> bool:
    """Whether the mesh policy data says a deny also cuts established connections
    (`data.mesh.established`: "cut"; "keep", the default, judges a connection by its
    first packet only)."""
    mesh = data.get("mesh")
    return isinstance(mesh, Mapping) and mesh.get("established") == "cut"


def _digest(state: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def _mapping_changes(
    old: Mapping[str, int], new: Mapping[str, int]
) -> tuple[dict[str, int], list[str]]:
    put = {k: v for k, v in new.items() if old.get(k) != v}
    return put, sorted(old.keys() - new.keys())


@dataclass(frozen=True)
class _SharedChanges:
    identities: IdentityChanges
    ipcache: IpcacheChanges
    revoked: RevokedChanges


class Verdicts:
    def __init__(self, engine: Engine, clock: Clock, policy: PolicyService) -> None:
        self._engine = engine
        self._clock = clock
        self._policy = policy
        # Compilation in this process: the threads a change wakes wait for one compiler.
        self._lock = threading.Lock()
        self._compiler: tuple[int, L4Compiler] | None = None
        self._conflicts: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._head: Compiled | None = None
        # The kept revisions this process has read or compiled, newest last.
        self._states: OrderedDict[int, Compiled] = OrderedDict()
        self._shared_changes: OrderedDict[tuple[int, int], _SharedChanges] = OrderedDict()
        # What each agent last said it applied, so a long-poll writes only on a change;
        # those not written yet, and the writer's lock (see `_flush_acks`).
        self._acked: dict[str, int] = {}
        self._pending_acks: dict[str, int] = {}
        self._ack_lock = threading.Lock()
        self._ack_write = threading.Lock()
        # How many verdict states this process compiled (what a change costs, for tests
        # and benchmarks).
        self.compilations = 0

    # -- compilation ---------------------------------------------------------------------

    def current(self, sources: Sources) -> Compiled:
        """The verdict revision compiled from `sources` or later, compiling it first if no
        replica has.

        Raises:
            NotReady: no policy revision is active. PolicyEvaluationError: the engine failed.
        """
        head = self._head
        if head is not None and head.sources == sources:
            return head
        with self._lock:
            head = self._head
            if head is not None and head.sources == sources:
                return head
            return self._compile_or_load()

    def _compile_or_load(self) -> Compiled:
        self._policy.reload_if_changed()
        active = self._policy.active
        with transaction(self._engine) as session:
            lock_compilation(session)
            # Read under the lock: a compiler that waited for another sees what it stored.
            stored = fetch_revision_head(session)
            read = fetch_sources(session)
            sources = Sources(active.revision, read.sync, read.revocation)
            if stored is not None and stored.sources == sources:
                compiled = self._kept(session, stored)
            else:
                compiled = self._compile(session, stored, sources, active)
        self._head = compiled
        return compiled

    def _kept(self, session: Session, head: RevisionHead) -> Compiled:
        held = self._states.get(head.revision)
        if held is not None:
            compiled = Compiled(head.revision, head.sources, held.policy_revision, held.state)
        else:
            found = fetch_revision_state(session, head.revision)
            assert found is not None
            state = VerdictState.model_validate(found[1])
            compiled = Compiled(head.revision, head.sources, found[0], state)
        self._remember(compiled)
        return compiled

    def _compile(
        self,
        session: Session,
        stored: RevisionHead | None,
        sources: Sources,
        active: ActivePolicy,
    ) -> Compiled:
        with_mesh = {n: s for n, s in active.bundle.modules.items() if MESH_PACKAGE in s}
        if self._compiler is None or self._compiler[0] != active.revision:
            self._compiler = (active.revision, L4Compiler(with_mesh, active.bundle.data))
        compiler = self._compiler[1]
        now = self._clock.now()
        entries = list_entry_identities(session)
        # Quarantined identities are denied whatever the policy says (a revoked certificate
        # is not: its holder gets a new one, and proxies refuse the revoked serial).
        revoked_ids = list_quarantined_spiffe_ids(session, now)
        spiffe_ids = {spiffe_id for _, spiffe_id, _ in entries}
        numbers = create_numeric_identities(session, spiffe_ids | revoked_ids, now)
        policy: dict[str, list[PolicyVerdict]] = defaultdict(list)
        for (dst, src, port, proto), allowed in compiler.verdicts(spiffe_ids).items():
            verdict = PolicyVerdict(numbers[dst], numbers[src], port, PROTOCOLS[proto], allowed)
            policy[dst].append(verdict)
        ipcache, held_back, ambiguous = resolve_ipcache(
            entries, numbers, list_reported_addresses(session)
        )
        self._note_conflicts(held_back, ambiguous)
        identities = {s: numbers[s] for s in sorted(spiffe_ids)}
        if AMBIGUOUS_IDENTITY in ipcache.values():
            identities[AMBIGUOUS] = AMBIGUOUS_IDENTITY
        state = VerdictState(
            identities=identities,
            ipcache=ipcache,
            policy={dst: sorted(verdicts) for dst, verdicts in sorted(policy.items())},
            revoked=sorted(numbers[s] for s in revoked_ids),
            cut_established=cuts_established(active.bundle.data),
        )
        document = state.model_dump(mode="json")
        digest = _digest({"policy_revision": active.revision, **document})
        self.compilations += 1
        if stored is not None and stored.digest == digest:
            # Nothing an agent holds changes: the revision stands for the new sources too.
            update_revision_sources(session, stored.revision, sources)
            compiled = Compiled(stored.revision, sources, active.revision, state)
        else:
            revision = (stored.revision if stored else 0) + 1
            create_revision(session, revision, sources, digest, document, now, KEEP_REVISIONS)
            compiled = Compiled(revision, sources, active.revision, state)
        # Which revision first carried each quarantine: the agents that applied it enforce it.
        update_quarantines_compiled(session, revoked_ids, compiled.revision)
        self._remember(compiled)
        return compiled

    def _remember(self, compiled: Compiled) -> None:
        self._states[compiled.revision] = compiled
        self._states.move_to_end(compiled.revision)
        while len(self._states) > KEEP_REVISIONS:
            self._states.popitem(last=False)

    def _note_conflicts(self, held_back: list[str], ambiguous: list[str]) -> None:
        metrics.IPCACHE_CONFLICTS.labels("declared").set(len(held_back))
        metrics.IPCACHE_CONFLICTS.labels("ambiguous").set(len(ambiguous))
        conflicts = (tuple(held_back), tuple(ambiguous))
        # Say so once per change, not on every recompilation that meets the same ones.
        if conflicts == self._conflicts:
            return
        self._conflicts = conflicts
        if held_back or ambiguous:
            log.warning(
                "ipcache_conflicts",
                held_back=held_back[:MAX_LOGGED],
                ambiguous=ambiguous[:MAX_LOGGED],
                held_back_count=len(held_back),
                ambiguous_count=len(ambiguous),
            )

    # -- a node's delta ------------------------------------------------------------------

    def _revision(self, revision: int, head: Compiled) -> Compiled | None:
        """A kept revision (None: not kept, or never made)."""
        if revision == head.revision:
            return head
        held = self._states.get(revision)
        if held is not None or not 0 < revision < head.revision:
            return held
        with transaction(self._engine) as session:
            found = fetch_revision_state(session, revision)
        if found is None:
            return None
        # Its sources are not needed: it is only ever a base.
        state = VerdictState.model_validate(found[1])
        compiled = Compiled(revision, Sources(found[0], 0, 0), found[0], state)
        with self._lock:
            self._states[revision] = compiled
            self._states.move_to_end(revision, last=False)
        return compiled

    def delta_for(
        self, node_id: str, local: Iterable[str], sources: Sources, since: int
    ) -> VerdictDelta | None:
        """The node's verdicts as a delta from revision `since`, the one its agent applied
        (the full state when `since` is 0 or not kept), `local` being the SPIFFE IDs of its
        entries; None when it holds the newest revision. `since` is recorded as applied.

        Raises:
            NotReady: no policy revision is active. PolicyEvaluationError: the engine failed.
        """
        head = self.current(sources)
        # `since` is what the agent applied: its acknowledgement, unless trustd never
        # made that revision.
        if since <= head.revision:
            self.note_applied(node_id, since)
        if since == head.revision:
            return None
        local = frozenset(local)
        base = self._revision(since, head) if since > 0 else None
        policy = node_policy(head.state, local)
        # Built from states already checked against the wire model: constructed, not
        # validated again (a full state holds every identity and prefix, per node).
        if base is None:
            state = head.state
            changes = VerdictChanges.model_construct(
                identities=IdentityChanges.model_construct(set=state.identities, remove=[]),
                ipcache=IpcacheChanges.model_construct(set=state.ipcache, remove=[]),
                policy=PolicyChanges.model_construct(
                    set=[PolicyVerdict(*k, v) for k, v in sorted(policy.items())], remove=[]
                ),
                revoked=RevokedChanges.model_construct(set=state.revoked, remove=[]),
            )
        else:
            shared = self._shared(base, head)
            before = node_policy(base.state, local)
            changes = VerdictChanges.model_construct(
                identities=shared.identities,
                ipcache=shared.ipcache,
                policy=PolicyChanges.model_construct(
                    set=[
                        PolicyVerdict(*k, v)
                        for k, v in sorted(policy.items())
                        if before.get(k) != v
                    ],
                    remove=sorted(before.keys() - policy.keys()),
                ),
                revoked=shared.revoked,
            )
        send_l7 = base is None or base.policy_revision != head.policy_revision
        cut = head.state.cut_established
        return VerdictDelta.model_construct(
            revision=head.revision,
            base=0 if base is None else base.revision,
            changes=changes,
            cut_established=cut if base is None or base.state.cut_established != cut else None,
            l7=self._l7() if send_l7 else None,
        )

    def _shared(self, base: Compiled, head: Compiled) -> _SharedChanges:
        """The shared sections' changes from `base` to `head`, once per pair."""
        key = (base.revision, head.revision)
        found = self._shared_changes.get(key)
        if found is None:
            old, new = base.state, head.state
            ids_set, ids_removed = _mapping_changes(old.identities, new.identities)
            ip_set, ip_removed = _mapping_changes(old.ipcache, new.ipcache)
            found = _SharedChanges(
                IdentityChanges.model_construct(set=ids_set, remove=ids_removed),
                IpcacheChanges.model_construct(set=ip_set, remove=ip_removed),
                RevokedChanges.model_construct(
                    set=sorted(set(new.revoked) - set(old.revoked)),
                    remove=sorted(set(old.revoked) - set(new.revoked)),
                ),
            )
            with self._lock:
                self._shared_changes[key] = found
                while len(self._shared_changes) > KEEP_REVISIONS:
                    self._shared_changes.popitem(last=False)
        return found

    def _l7(self) -> L7Policy:
        active = self._policy.active
        return L7Policy(
            revision=active.revision,
            modules={n: s for n, s in active.bundle.modules.items() if MESH_PACKAGE in s},
            data={"mesh": active.bundle.data.get("mesh", {})},
        )

    # -- acknowledgements ----------------------------------------------------------------

    def acknowledge(self, node_id: str, revision: int) -> None:
        """Record the verdict revision the node's agent applied."""
        with self._ack_lock:
            self._pending_acks[node_id] = revision
        self._flush_acks()

    def note_applied(self, node_id: str, revision: int) -> None:
        """The agent's long-poll says it holds `revision`: recorded when that is news."""
        if self._acked.get(node_id) != revision:
            self.acknowledge(node_id, revision)

    def _flush_acks(self) -> None:
        """Write every pending acknowledgement. The long-polls one change wakes come back
        with their acknowledgements together: whichever thread finds no write under way
        writes all that are pending in one statement (a group commit), the others return
        and the writer takes theirs on its next pass."""
        while self._pending_acks:
            if not self._ack_write.acquire(blocking=False):
                return
            try:
                with self._ack_lock:
                    batch, self._pending_acks = self._pending_acks, {}
                try:
                    with transaction(self._engine) as session:
                        update_verdict_acks(session, batch, self._clock.now())
                except Exception:
                    with self._ack_lock:
                        self._pending_acks = {**batch, **self._pending_acks}
                    raise
                self._acked.update(batch)
            finally:
                self._ack_write.release()

    def record_lag_metrics(self) -> None:
        """Set the agent-lag gauges (`trustd_verdict_revision`, `trustd_agents_behind`,
        `trustd_agents_behind_oldest_applied_timestamp_seconds`) from `lag`, when /metrics
        is read: one query per scrape, none on the sync path."""
        lags = [row for row in self.lag() if row.applied_at is not None]
        behind = [row for row in lags if row.lag > 0]
        metrics.VERDICT_HEAD.set(max((row.revision for row in lags), default=0))
        metrics.AGENTS_BEHIND.set(len(behind))
        oldest = min((row.applied_at for row in behind if row.applied_at), default=None)
        metrics.AGENTS_BEHIND_APPLIED.set((oldest or self._clock.now()).timestamp())

    def lag(self) -> list[AgentLag]:
        """Per node: the newest verdict revision, the one its agent applied, and when (a
        node whose agent never enforced is at revision 0)."""
        self._flush_acks()
        with transaction(self._engine) as session:
            head = fetch_revision_head(session)
            newest = head.revision if head is not None else 0
            return [
                AgentLag(node_id, newest, ack.applied_revision, ack.applied_at)
                if ack is not None
                else AgentLag(node_id, 0, 0, None)
                for node_id, ack in list_verdict_acks(session)
            ]
