"""Verdicts for the nodes: numeric identities, the IP -> identity table, and which
(source identity, port, protocol) may reach each local destination identity at L4.

The L4 verdicts are computed from the mesh Rego policy itself, not re-implemented here:
the policy's rules are data (`data.mesh.allow` / `data.mesh.deny`), so the rules' source and
destination patterns say which (source, destination, port) tuples could possibly be allowed;
only those candidates are evaluated by the engine, never every pair. L7 fields (methods,
paths) are left to the proxy filters: an allow rule with L7 fields opens its port at L4
(as Cilium does when it redirects to its proxy) and a deny rule with L7 fields denies at L7
only. Evaluations are memoised per policy revision, so a change to entries or IPs evaluates
only the new candidates.

Each node's state is stored with a per-node revision; agents get a delta from the revision
they applied when it is still kept, the full state otherwise. Every node's state is one
node-independent part (identities, IP cache, revocations, and the verdicts of every
destination) with the verdicts of its own destinations: the part is compiled once per
(policy, sync, revocation) revision in each process, not once per node, so a change that
wakes every agent's long-poll costs one compilation and a slice per node.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from pki.clock import Clock
from policy.engine import EmbeddedEngine
from policy.errors import PolicyEvaluationError, UnknownPath
from trustd import metrics
from trustd.domain.certificates import CertificateStatus
from trustd.domain.entries import Entry
from trustd.services.policy import PolicyService
from trustd.store.certificates import IssuedCertificate
from trustd.store.db import transaction
from trustd.store.entries import RegistrationEntry
from trustd.store.nodes import Node
from trustd.store.verdicts import NodeVerdictAck, NodeVerdictSet, NumericIdentity, ReportedAddress

log = structlog.get_logger("trustd.verdicts")

MESH_ALLOW = "trustd/mesh/allow"
MESH_PACKAGE = "package trustd.mesh"
# Identity 0 is "unknown" (an address in no entry); allocated identities start above the
# range Cilium reserves for its own fixed identities, so numbers read the same way.
FIRST_IDENTITY = 256
# Reserved: an address that reports give to more than one identity. It is in no policy,
# so traffic from or to it is denied.
AMBIGUOUS_IDENTITY = 255
AMBIGUOUS = "reserved:ambiguous"
MAX_LOGGED = 20
PROTOCOLS = {"tcp": 6, "udp": 17}
# L7 protocols ride on TCP.
L4_OF = {"tcp": "tcp", "http": "tcp", "http2": "tcp", "grpc": "tcp", "udp": "udp"}
ANY_PORT = 0
KEEP_REVISIONS = 16
COMPILE_ATTEMPTS = 3
SECTIONS = ("identities", "ipcache", "policy", "revoked")


@dataclass(frozen=True)
class VerdictUpdate:
    """What an agent must apply: the full state (`base` 0) or the changes since `base`."""

    revision: int
    base: int
    changes: dict[str, dict[str, Any]]
    l7: dict[str, Any] | None


@dataclass(frozen=True)
class AgentLag:
    node_id: str
    revision: int
    applied_revision: int
    applied_at: datetime | None

    @property
    def lag(self) -> int:
        return self.revision - self.applied_revision


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The mesh policy's globs ("*" one segment, "**" any) as a regex that matches at least
    what the policy's own `glob_matches` does; it only picks candidates, Rego decides."""
    parts = re.split(r"(\*\*|\*)", pattern)
    body = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part) for part in parts
    )
    return re.compile(body + r"\Z")


def _l4_rules(rules: Iterable[Any], allow: bool) -> list[dict[str, Any]]:
    out = []
    for rule in rules:
        if not isinstance(rule, Mapping):
            continue
        has_l7 = bool(rule.get("methods") or rule.get("paths"))
        if has_l7 and not allow:
            continue
        kept = {k: v for k, v in rule.items() if k not in ("methods", "paths")}
        protocols = rule.get("protocols") or []
        l4 = sorted({L4_OF[p] for p in protocols if p in L4_OF})
        if protocols and not l4:
            continue
        if protocols:
            kept["protocols"] = l4
        out.append(kept)
    return out


class L4Compiler:
    """Evaluates the mesh policy on candidate tuples, memoised for one policy revision."""

    def __init__(self, modules: Mapping[str, str], data: Mapping[str, Any]) -> None:
        mesh = data.get("mesh", {}) if isinstance(data.get("mesh"), Mapping) else {}
        self.allow_rules = _l4_rules(mesh.get("allow", []), allow=True)
        self.deny_rules = _l4_rules(mesh.get("deny", []), allow=False)
        l4_data = dict(data)
        l4_data["mesh"] = {"allow": self.allow_rules, "deny": self.deny_rules}
        self._engine = EmbeddedEngine(modules, l4_data)
        self._memo: dict[tuple[str, str, int, str], bool] = {}
        self.evaluations = 0

    def _allowed(self, src: str, dst: str, port: int, proto: str) -> bool:
        key = (src, dst, port, proto)
        found = self._memo.get(key)
        if found is None:
            self.evaluations += 1
            candidate = {"source": src, "destination": dst, "port": port, "protocol": proto}
            try:
                # The compiled program answers without cloning the engine per candidate,
                # which a change to a policy with many rules pays for every candidate.
                result = self._engine.query(MESH_ALLOW, json.dumps(candidate))
            except UnknownPath as exc:
                raise PolicyEvaluationError(exc.detail, rule=MESH_ALLOW) from None
            found = self._memo[key] = result.value is True
        return found

    def verdicts(self, identities: Iterable[str]) -> dict[tuple[str, str, int, str], bool]:
        """(destination, source, port, protocol) -> allowed, for the candidates the rules
        name; a wildcard port appears as port 0, and ports a deny rule names next to a
        wildcard allow get their own (deny) verdict, which the datapath checks first.

        Raises:
            PolicyEvaluationError: the engine failed on a candidate.
        """
        ids = sorted(identities)
        deny_ports = {
            (port, L4_OF.get(p, p))
            for rule in self.deny_rules
            for port in rule.get("ports") or []
            for p in rule.get("protocols") or list(PROTOCOLS)
        }
        out: dict[tuple[str, str, int, str], bool] = {}
        for rule in self.allow_rules:
            sources = glob_regex(str(rule.get("source", "**")))
            dests = glob_regex(str(rule.get("destination", "**")))
            ports = [int(p) for p in rule.get("ports") or [ANY_PORT]]
            protos = rule.get("protocols") or list(PROTOCOLS)
            for src in (i for i in ids if sources.match(i)):
                for dst in (i for i in ids if dests.match(i)):
                    for proto in protos:
                        for port in ports:
                            out[(dst, src, port, proto)] = self._allowed(src, dst, port, proto)
                        if ports == [ANY_PORT]:
                            for port, deny_proto in deny_ports:
                                if deny_proto == proto:
                                    allowed = self._allowed(src, dst, port, proto)
                                    out[(dst, src, port, proto)] = allowed
        return out


def delete_reported_addresses(session: Session, node_id: str) -> None:
    """Forget what the node's agent reported (it was evicted, banned or attested again)."""
    session.exec(delete(ReportedAddress).where(col(ReportedAddress.node_id) == node_id))


def prune_reported_addresses(session: Session, spiffe_id: str) -> None:
    """Forget the addresses reported for `spiffe_id` once no entry carries it any more
    (call after the entry change is flushed)."""
    in_use = session.exec(
        select(RegistrationEntry.id).where(RegistrationEntry.spiffe_id == spiffe_id).limit(1)
    ).first()
    if in_use is None:
        session.exec(delete(ReportedAddress).where(col(ReportedAddress.spiffe_id) == spiffe_id))


def _covering(
    address: ipaddress.IPv4Address,
    declared: Mapping[ipaddress.IPv4Network, int],
    lengths: Sequence[int],
) -> int | None:
    """The identity of the longest declared prefix holding `address` (None: none does)."""
    for length in lengths:
        number = declared.get(ipaddress.IPv4Network((address, length), strict=False))
        if number is not None:
            return number
    return None


def _digest(state: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def diff_states(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per section: keys to set (with values) and keys to remove."""
    changes: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        before, after = old.get(section, {}), new.get(section, {})
        put = {k: v for k, v in after.items() if before.get(k) != v}
        removed = sorted(k for k in before if k not in after)
        if put or removed:
            changes[section] = {"set": put, "remove": removed}
    return changes


def full_changes(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {s: {"set": dict(state.get(s, {})), "remove": []} for s in SECTIONS}


@dataclass(frozen=True)
class SharedState:
    """What every node's state is made from at one (policy, sync, revocation) revision: the
    sections as sent, except "policy", which maps each destination SPIFFE ID to the
    verdicts for its traffic."""

    sources: tuple[int, int, int]
    sections: Mapping[str, Any]


def node_state(shared: SharedState, local: Iterable[str], l7_revision: int) -> dict[str, Any]:
    """A node's state: the shared sections, with the verdicts of its local destinations."""
    by_destination: Mapping[str, dict[str, int]] = shared.sections["policy"]
    policy: dict[str, int] = {}
    for spiffe_id in set(local):
        policy.update(by_destination.get(spiffe_id, {}))
    return {**shared.sections, "policy": policy, "l7_revision": l7_revision}


class Verdicts:
    def __init__(self, engine: Engine, clock: Clock, policy: PolicyService) -> None:
        self._engine = engine
        self._clock = clock
        self._policy = policy
        self._lock = threading.Lock()
        self._compiler: tuple[int, L4Compiler] | None = None
        self._conflicts: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        # The newest shared state; compiling it holds this lock, so threads woken by the
        # same change wait for one compilation instead of each running their own.
        self._shared_lock = threading.Lock()
        self._shared: SharedState | None = None

    # -- identities ----------------------------------------------------------------------

    def _identities(self, session: Session, spiffe_ids: Iterable[str]) -> dict[str, int]:
        """Numbers for every SPIFFE ID, allocating the missing ones in this transaction."""
        wanted = set(spiffe_ids)
        rows = session.exec(
            select(NumericIdentity).where(col(NumericIdentity.spiffe_id).in_(wanted))
        ).all()
        known = {r.spiffe_id: int(r.id or 0) for r in rows}
        missing = sorted(wanted - known.keys())
        if missing:
            top = session.exec(
                select(col(NumericIdentity.id)).order_by(col(NumericIdentity.id).desc()).limit(1)
            ).first()
            next_id = max(FIRST_IDENTITY, (top or 0) + 1)
            for offset, spiffe_id in enumerate(missing):
                row = NumericIdentity(
                    id=next_id + offset, spiffe_id=spiffe_id, created_at=self._clock.now()
                )
                session.add(row)
                known[spiffe_id] = next_id + offset
            session.flush()
        return known

    # -- compilation ---------------------------------------------------------------------

    def _l4(self) -> tuple[int, L4Compiler, dict[str, Any]]:
        self._policy.reload_if_changed()
        active = self._policy.active
        modules = {n: s for n, s in active.bundle.modules.items() if MESH_PACKAGE in s}
        with self._lock:
            if self._compiler is None or self._compiler[0] != active.revision:
                self._compiler = (active.revision, L4Compiler(modules, active.bundle.data))
            compiler = self._compiler[1]
        l7 = {
            "revision": active.revision,
            "modules": modules,
            "data": {"mesh": active.bundle.data.get("mesh", {})},
        }
        return active.revision, compiler, l7

    def _state(self, session: Session, compiler: L4Compiler) -> dict[str, Any]:
        """The sections every node shares; "policy" maps each destination SPIFFE ID to the
        verdicts for its traffic (see `node_state`)."""
        entries = session.exec(select(RegistrationEntry)).all()
        now = self._clock.now()
        revoked_ids: set[str] = {
            spiffe_id
            for spiffe_id in session.exec(
                select(IssuedCertificate.spiffe_id)
                .where(IssuedCertificate.status == CertificateStatus.REVOKED)
                .where(col(IssuedCertificate.not_after) > now)
            ).all()
            if spiffe_id
        }
        spiffe_ids = {e.spiffe_id for e in entries}
        numbers = self._identities(session, spiffe_ids | revoked_ids)
        verdicts = compiler.verdicts(spiffe_ids)
        policy: dict[str, dict[str, int]] = {}
        for (dst, src, port, proto), allowed in verdicts.items():
            key = f"{numbers[dst]}/{numbers[src]}/{port}/{PROTOCOLS[proto]}"
            policy.setdefault(dst, {})[key] = int(allowed)
        ipcache = self._ipcache(session, entries, numbers)
        identities = {s: numbers[s] for s in sorted(spiffe_ids)}
        if AMBIGUOUS_IDENTITY in ipcache.values():
            identities[AMBIGUOUS] = AMBIGUOUS_IDENTITY
        return {
            "identities": identities,
            "ipcache": ipcache,
            "policy": policy,
            "revoked": {str(numbers[s]): 1 for s in sorted(revoked_ids)},
        }

    def _ipcache(
        self, session: Session, entries: Sequence[RegistrationEntry], numbers: Mapping[str, int]
    ) -> dict[str, int]:
        """Prefix -> identity: the entries' declared prefixes, then the addresses agents
        reported, as /32s.

        Declared prefixes win: a reported address inside one (at any length) that names
        another identity is held back, since the /32 would override the operator's prefix
        in the longest-prefix match. A reported address two identities claim (two
        workloads sharing a network namespace, or an address moving) cannot be told apart:
        it maps to the reserved ambiguous identity, which no policy allows to or from, so
        it fails closed; leaving it out would make it unknown, and traffic to an unknown
        destination is not judged at all (enforce.c: C_UNMANAGED).
        """
        ipcache: dict[str, int] = {}
        for entry in sorted(entries, key=lambda e: e.id):
            for prefix in entry.ip_addresses:
                ipcache.setdefault(prefix, numbers[entry.spiffe_id])
        declared = {ipaddress.IPv4Network(prefix): number for prefix, number in ipcache.items()}
        lengths = sorted({net.prefixlen for net in declared}, reverse=True)
        in_use = {e.spiffe_id for e in entries}
        claims: dict[str, set[int]] = defaultdict(set)
        for spiffe_id, address in session.exec(
            select(ReportedAddress.spiffe_id, ReportedAddress.address)
        ).all():
            # A report racing the deletion of the last entry with its SPIFFE ID may leave
            # rows behind; they count for nothing.
            if spiffe_id in in_use:
                claims[address].add(numbers[spiffe_id])
        held_back, ambiguous = [], []
        for address, claimants in sorted(claims.items()):
            covering = _covering(ipaddress.IPv4Address(address), declared, lengths)
            if covering is not None:
                if claimants != {covering}:
                    held_back.append(address)
            elif len(claimants) > 1:
                ambiguous.append(address)
                ipcache[f"{address}/32"] = AMBIGUOUS_IDENTITY
            else:
                ipcache[f"{address}/32"] = next(iter(claimants))
        self._note_conflicts(held_back, ambiguous)
        return ipcache

    def _note_conflicts(self, held_back: list[str], ambiguous: list[str]) -> None:
        metrics.IPCACHE_CONFLICTS.labels("declared").set(len(held_back))
        metrics.IPCACHE_CONFLICTS.labels("ambiguous").set(len(ambiguous))
        conflicts = (tuple(held_back), tuple(ambiguous))
        with self._lock:
            # Every node's compilation meets the same conflicts: say so once per change.
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

    def update_for(
        self,
        node_id: str,
        local: list[Entry],
        sync_revision: int,
        revocation_revision: int,
        since: int,
    ) -> VerdictUpdate | None:
        """The node's verdict state as a delta from `since` (full when `since` is 0 or no
        longer kept), compiling and storing a new revision first if anything changed;
        None when the node already holds the newest revision.

        Raises:
            NotReady: no policy revision is active. PolicyEvaluationError: the engine failed.
        """
        policy_revision, compiler, l7 = self._l4()
        sources = (policy_revision, sync_revision, revocation_revision)
        attempt = 1
        while True:
            try:
                shared = self._shared_state(sources, compiler)
                state = node_state(shared, (e.spiffe_id for e in local), policy_revision)
                return self._update(node_id, state, sources, since, l7)
            except IntegrityError:
                # A replica sharing the database compiled at the same moment and committed
                # first: numbers for the same new SPIFFE IDs, or this node's next revision.
                # Compiling again reads what it committed.
                if attempt == COMPILE_ATTEMPTS:
                    raise
                attempt += 1

    def _shared_state(self, sources: tuple[int, int, int], compiler: L4Compiler) -> SharedState:
        """The shared state at `sources`, compiled (and new identities numbered, committed)
        by the first caller after a change; the others wait for it.

        Raises:
            IntegrityError: another replica numbered the same new SPIFFE IDs first.
            PolicyEvaluationError: the engine failed.
        """
        with self._shared_lock:
            shared = self._shared
            if shared is None or shared.sources != sources:
                with transaction(self._engine) as session:
                    sections = self._state(session, compiler)
                shared = self._shared = SharedState(sources, sections)
            return shared

    def _update(
        self,
        node_id: str,
        state: dict[str, Any],
        sources: tuple[int, int, int],
        since: int,
        l7: dict[str, Any],
    ) -> VerdictUpdate | None:
        policy_revision = sources[0]
        with transaction(self._engine) as session:
            latest = session.exec(
                select(NodeVerdictSet)
                .where(NodeVerdictSet.node_id == node_id)
                .order_by(col(NodeVerdictSet.revision).desc())
                .limit(1)
            ).first()
            fresh = latest is not None and sources == (
                latest.policy_revision,
                latest.sync_revision,
                latest.revocation_revision,
            )
            previous = latest
            if not fresh:
                digest = _digest(state)
                if latest is None or latest.digest != digest:
                    latest = NodeVerdictSet(
                        node_id=node_id,
                        revision=(latest.revision if latest else 0) + 1,
                        policy_revision=policy_revision,
                        sync_revision=sources[1],
                        revocation_revision=sources[2],
                        digest=digest,
                        state=state,
                        created_at=self._clock.now(),
                    )
                    session.add(latest)
                    session.flush()
                    session.exec(
                        delete(NodeVerdictSet)
                        .where(col(NodeVerdictSet.node_id) == node_id)
                        .where(col(NodeVerdictSet.revision) <= latest.revision - KEEP_REVISIONS)
                    )
                else:
                    (
                        latest.policy_revision,
                        latest.sync_revision,
                        latest.revocation_revision,
                    ) = sources
                    session.add(latest)
            assert latest is not None
            if latest.revision <= since:
                return None
            base = previous if previous is not None and previous.revision == since else None
            if base is None and since > 0:
                base = session.exec(
                    select(NodeVerdictSet)
                    .where(NodeVerdictSet.node_id == node_id)
                    .where(NodeVerdictSet.revision == since)
                ).first()
            if base is None:
                changes, base_revision = full_changes(latest.state), 0
            else:
                changes, base_revision = diff_states(base.state, latest.state), since
            send_l7 = base is None or base.state.get("l7_revision") != policy_revision
            return VerdictUpdate(latest.revision, base_revision, changes, l7 if send_l7 else None)

    # -- acknowledgements ----------------------------------------------------------------

    def acknowledge(self, node_id: str, revision: int) -> None:
        """Record the verdict revision the node's agent applied."""
        with transaction(self._engine) as session:
            row = session.get(NodeVerdictAck, node_id) or NodeVerdictAck(
                node_id=node_id, applied_at=self._clock.now()
            )
            row.applied_revision = revision
            row.applied_at = self._clock.now()
            session.add(row)

    def lag(self) -> list[AgentLag]:
        """Per node: the newest verdict revision, the one its agent applied, and when."""
        with transaction(self._engine) as session:
            nodes = session.exec(select(Node.spiffe_id).order_by(col(Node.spiffe_id))).all()
            acks = {a.node_id: a for a in session.exec(select(NodeVerdictAck)).all()}
            out = []
            for node_id in nodes:
                newest = session.exec(
                    select(col(NodeVerdictSet.revision))
                    .where(NodeVerdictSet.node_id == node_id)
                    .order_by(col(NodeVerdictSet.revision).desc())
                    .limit(1)
                ).first()
                ack = acks.get(node_id)
                out.append(
                    AgentLag(
                        node_id,
                        newest or 0,
                        ack.applied_revision if ack else 0,
                        ack.applied_at if ack else None,
                    )
                )
        return out
