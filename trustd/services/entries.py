"""Registration entries: who gets which SPIFFE ID, under which parent, by which selectors."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pki.clock import Clock
from pki.keys import KeyType, ca_chain
from pki.selectors import parse_selectors
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import dns_name_problem
from policy.engine import EmbeddedEngine, PolicyEngine
from trustd.bus import Bus
from trustd.domain.certificates import CertificateKind
from trustd.domain.entries import Entry, EntryAddress
from trustd.domain.nodes import Node, NodeStatus
from trustd.errors import Conflict, InvalidRequest, NotFound
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.issuance import (
    AGENT_PATH,
    JWT_SVID,
    SERVER_PATH,
    CredentialKind,
    lifetime,
    require_unreserved,
)
from trustd.services.sync import announce, bump_revision
from trustd.services.verdicts import prune_reported_addresses
from trustd.settings import Settings
from trustd.store.db import transaction
from trustd.store.entries import (
    count_entries,
    create_entries,
    delete_entry,
    fetch_entry,
    list_entries,
    list_entries_by_parent,
    update_entry,
)
from trustd.store.nodes import list_nodes
from trustd.store.verdicts import list_entry_addresses

DEFAULT_ATTESTATION_POLICY = Path(__file__).resolve().parents[2] / "rego" / "attestation.rego"
ATTESTATION_RULE = "data.trustd.attestation.allowed"
MAX_BATCH = 500
MAX_PAGE = 1000
MAX_IP_ADDRESSES = 64


_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _ipv6_problem(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
    if not isinstance(network, ipaddress.IPv6Network):
        return None
    if network.overlaps(_LINK_LOCAL):
        return "a link-local prefix names no one workload"
    if network.overlaps(_IPV4_MAPPED):
        return "an IPv4-mapped prefix is never on the wire: give the IPv4 address"
    return None


def canonical_prefixes(values: Sequence[str]) -> list[str]:
    """Addresses or CIDR prefixes in canonical form (`10.0.0.1` -> `10.0.0.1/32`).

    IPv4 and IPv6 are both enforced (trustd/agent/bpf/enforce.c), with two IPv6 ranges
    refused: link-local (fe80::/10, RFC 4291 §2.5.6), reused on every link so naming no
    one workload, and IPv4-mapped (::ffff:0:0/96, RFC 4291 §2.5.5.2), which no packet
    carries on the wire: the IPv4 address is what the datapath sees.

    Raises:
        InvalidRequest: a value is not an IP address or prefix, is in a refused range, or
            there are too many.
    """
    if len(values) > MAX_IP_ADDRESSES:
        raise InvalidRequest(f"at most {MAX_IP_ADDRESSES} ip_addresses per entry")
    prefixes = []
    for value in values:
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError:
            raise InvalidRequest(f"not an IP address or prefix: {value!r}") from None
        problem = _ipv6_problem(network)
        if problem is not None:
            raise InvalidRequest(f"{problem}: {value!r}")
        prefixes.append(str(network))
    return sorted(set(prefixes))


@dataclass(frozen=True)
class EntrySpec:
    """What an administrator asks for; validated by `Entries` before anything is stored."""

    spiffe_id: str
    parent_id: str
    selectors: Sequence[str]
    x509_ttl: int | None = None
    jwt_ttl: int | None = None
    dns_names: Sequence[str] = ()
    admin: bool = False
    downstream: bool = False
    hint: str = ""
    ip_addresses: Sequence[str] = ()
    federates_with: Sequence[str] = ()
    # The key type the entry's X509-SVIDs are issued for; None: the trust domain's default.
    key_type: KeyType | None = None


# What an `EntryPatch` sets `key_type` to for "back to the trust domain's default".
DEFAULT_KEY_TYPE: Final = "default"


@dataclass(frozen=True)
class EntryPatch:
    """Fields to change; None leaves a field as it is."""

    spiffe_id: str | None = None
    parent_id: str | None = None
    selectors: Sequence[str] | None = None
    x509_ttl: int | None = None
    jwt_ttl: int | None = None
    dns_names: Sequence[str] | None = None
    admin: bool | None = None
    downstream: bool | None = None
    hint: str | None = None
    ip_addresses: Sequence[str] | None = None
    federates_with: Sequence[str] | None = None
    key_type: KeyType | Literal["default"] | None = None


@dataclass(frozen=True)
class EntryFilter:
    spiffe_id: str | None = None
    parent_id: str | None = None
    selector: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class NodeView:
    """What the attestation policy knows of a node."""

    spiffe_id: str
    selectors: frozenset[str]
    aliases: tuple[str, ...] = field(default=())


class Entries:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Clock,
        audit: AuditLog,
        bus: Bus,
        policy: PolicyEngine | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._bus = bus
        self._td = settings.trust_domain_obj
        self.server_id = str(SpiffeId.from_parts(self._td, SERVER_PATH))
        path = settings.attestation_policy or DEFAULT_ATTESTATION_POLICY
        self._policy = policy or EmbeddedEngine({path.name: path.read_text()})

    # -- validation ----------------------------------------------------------------------

    def required_key_type(self, entry: Entry) -> KeyType | None:
        """The key type a CSR for *entry* must hold: the entry's own, or the trust
        domain's default when that is ML-DSA (an ML-DSA trust domain issues ML-DSA SVIDs);
        None: any allowed classical key, as agents configure theirs."""
        if entry.key_type is not None:
            return entry.key_type
        default = self._settings.key_type
        return default if default.post_quantum else None

    def _key_type(self, value: KeyType | None) -> KeyType | None:
        if value is None:
            return None
        try:
            key_type = KeyType(value)
        except ValueError:
            raise InvalidRequest(f"key_type {value!r} is not one of {', '.join(KeyType)}") from None
        chains = self._settings.ca_key_types
        if ca_chain(key_type) not in chains:
            raise InvalidRequest(
                f"key_type {key_type}: this trust domain has no {ca_chain(key_type)} CA chain "
                f"to sign such SVIDs (it keeps {', '.join(str(k) for k in chains.values())}); "
                f"add {key_type} to TRUSTD_ADDITIONAL_CA_KEY_TYPES and restart trustd first"
            )
        return key_type

    def _ttl(self, name: str, kind: CredentialKind, seconds: int | None) -> int:
        requested = timedelta(seconds=seconds) if seconds else None
        try:
            return int(lifetime(self._settings, kind, requested).total_seconds())
        except InvalidRequest as exc:
            raise InvalidRequest(f"{name}: {exc.detail}") from None

    def _validated(self, spec: EntrySpec) -> dict[str, Any]:
        spiffe_id = SpiffeId.parse(spec.spiffe_id)
        spiffe_id.require_member_of(self._td)
        if spiffe_id.is_trust_domain_id:
            raise InvalidRequest("an entry's SPIFFE ID needs a path (SPIFFE-ID §2.2)")
        require_unreserved(spiffe_id)
        parent = SpiffeId.parse(spec.parent_id)
        parent.require_member_of(self._td)
        if parent == spiffe_id:
            raise InvalidRequest("an entry cannot be its own parent")
        selectors = sorted(str(sel) for sel in parse_selectors(spec.selectors))
        if not selectors:
            raise InvalidRequest("an entry needs at least one selector")
        # The lifetimes the entry's SVIDs will be issued with, checked by the same rule
        # issuance applies.
        x509_ttl = self._ttl("x509_ttl", CertificateKind.X509_SVID, spec.x509_ttl)
        jwt_ttl = self._ttl("jwt_ttl", JWT_SVID, spec.jwt_ttl)
        dns_names = [name.lower() for name in spec.dns_names]
        for name in dns_names:
            problem = dns_name_problem(name)
            if problem:
                raise InvalidRequest(f"{problem}: {name!r}")
        if len(spec.hint) > 256:
            raise InvalidRequest("hint is longer than 256 characters")
        ip_addresses = canonical_prefixes(spec.ip_addresses)
        federates_with = sorted({TrustDomain.parse(td).name for td in spec.federates_with})
        if self._td.name in federates_with:
            raise InvalidRequest(
                f"federates_with names {self._td.name}, this deployment's own trust domain"
            )
        return {
            "spiffe_id": str(spiffe_id),
            "parent_id": str(parent),
            "selectors": tuple(selectors),
            "x509_ttl": x509_ttl,
            "jwt_ttl": jwt_ttl,
            "dns_names": tuple(dns_names),
            "admin": spec.admin,
            "downstream": spec.downstream,
            "hint": spec.hint,
            "ip_addresses": tuple(ip_addresses),
            "federates_with": tuple(federates_with),
            "key_type": self._key_type(spec.key_type),
        }

    # -- writes --------------------------------------------------------------------------

    def create(self, actor: Principal, specs: Sequence[EntrySpec]) -> list[Entry]:
        """Create one or more entries atomically: all are stored or none is.

        Raises:
            InvalidSpiffeId, InvalidSelector, InvalidRequest: a spec is invalid (the message
                names its index in a batch).
            Conflict: an entry with the same SPIFFE ID, parent and selectors exists.
        """
        if not specs:
            raise InvalidRequest("no entries given")
        if len(specs) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} entries per batch")
        values = []
        for index, spec in enumerate(specs):
            try:
                values.append(self._validated(spec))
            except InvalidRequest as exc:
                # The same kind of error (its problem type), naming the entry in a batch.
                raise type(exc)(
                    exc.detail if len(specs) == 1 else f"entry {index}: {exc.detail}", **exc.fields
                ) from None
        keys = [(v["spiffe_id"], v["parent_id"], v["selectors"]) for v in values]
        if len(set(keys)) != len(keys):
            raise Conflict("the batch holds the same entry twice")
        now = self._clock.now()
        try:
            with transaction(self._engine) as session:
                revision = bump_revision(session)
                rows = [
                    Entry(
                        id=secrets.token_hex(12),
                        revision=revision,
                        created_by=actor.name,
                        created_at=now,
                        updated_at=now,
                        **v,
                    )
                    for v in values
                ]
                create_entries(session, rows)
                for row in rows:
                    self._audit.record(
                        session,
                        actor.name,
                        "entry:registration:created",
                        target=row.id,
                        details={
                            "spiffe_id": row.spiffe_id,
                            "parent_id": row.parent_id,
                            "key_type": row.key_type,
                        },
                    )
        except IntegrityError:
            raise Conflict(
                "an entry with the same SPIFFE ID, parent ID and selectors already exists"
            ) from None
        announce(self._bus, revision)
        return rows

    def update(self, actor: Principal, entry_id: str, patch: EntryPatch) -> Entry:
        """Change the fields `patch` names; the result is validated as a new entry would be.

        Raises:
            NotFound: no such entry. Conflict: the change duplicates another entry.
            InvalidRequest and friends: the result would be invalid.
        """
        try:
            with transaction(self._engine) as session:
                row = fetch_entry(session, entry_id)
                if row is None:
                    raise NotFound(f"no entry {entry_id!r}")
                merged = EntrySpec(
                    spiffe_id=patch.spiffe_id if patch.spiffe_id is not None else row.spiffe_id,
                    parent_id=patch.parent_id if patch.parent_id is not None else row.parent_id,
                    selectors=patch.selectors if patch.selectors is not None else row.selectors,
                    x509_ttl=patch.x509_ttl or row.x509_ttl,
                    jwt_ttl=patch.jwt_ttl or row.jwt_ttl,
                    dns_names=patch.dns_names if patch.dns_names is not None else row.dns_names,
                    admin=patch.admin if patch.admin is not None else row.admin,
                    downstream=patch.downstream if patch.downstream is not None else row.downstream,
                    hint=patch.hint if patch.hint is not None else row.hint,
                    ip_addresses=(
                        patch.ip_addresses if patch.ip_addresses is not None else row.ip_addresses
                    ),
                    federates_with=(
                        patch.federates_with
                        if patch.federates_with is not None
                        else row.federates_with
                    ),
                    key_type=(
                        row.key_type
                        if patch.key_type is None
                        else None
                        if patch.key_type == DEFAULT_KEY_TYPE
                        else KeyType(patch.key_type)
                    ),
                )
                updated = replace(
                    row,
                    **self._validated(merged),
                    revision=bump_revision(session),
                    updated_at=self._clock.now(),
                )
                update_entry(session, updated)
                prune_reported_addresses(session, row.spiffe_id)
                self._audit.record(
                    session,
                    actor.name,
                    "entry:registration:updated",
                    target=updated.id,
                    details={
                        "spiffe_id": updated.spiffe_id,
                        "parent_id": updated.parent_id,
                        "key_type": updated.key_type,
                    },
                )
        except IntegrityError:
            raise Conflict("the change would duplicate another entry") from None
        announce(self._bus, updated.revision)
        return updated

    def delete(self, actor: Principal, entry_id: str) -> None:
        """Delete the entry; agents stop serving its SVIDs on their next sync.

        Raises:
            NotFound: no such entry.
        """
        with transaction(self._engine) as session:
            row = delete_entry(session, entry_id)
            if row is None:
                raise NotFound(f"no entry {entry_id!r}")
            prune_reported_addresses(session, row.spiffe_id)
            revision = bump_revision(session)
            self._audit.record(
                session,
                actor.name,
                "entry:registration:deleted",
                target=entry_id,
                details={"spiffe_id": row.spiffe_id},
            )
        announce(self._bus, revision)

    # -- reads ---------------------------------------------------------------------------

    def get(self, entry_id: str) -> Entry:
        """The entry `entry_id`.

        Raises:
            NotFound: no such entry.
        """
        with transaction(self._engine) as session:
            row = fetch_entry(session, entry_id)
        if row is None:
            raise NotFound(f"no entry {entry_id!r}")
        return row

    def reported_addresses(self, spiffe_id: str) -> list[EntryAddress]:
        """What agents reported their workloads with `spiffe_id` hold, by node."""
        with transaction(self._engine) as session:
            return list_entry_addresses(session, spiffe_id)

    def search(self, query: EntryFilter) -> tuple[list[Entry], int]:
        """A page of entries and the total matching count.

        Raises:
            InvalidRequest: the page size is out of range.
        """
        if not 0 < query.limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be 1..{MAX_PAGE}")
        filters = {
            "spiffe_id": query.spiffe_id,
            "parent_id": query.parent_id,
            "selector": query.selector,
        }
        with transaction(self._engine) as session:
            total = count_entries(session, **filters)
            rows = list_entries(session, **filters, limit=query.limit, offset=query.offset)
        return rows, total

    def parent_choices(self) -> list[tuple[str, str]]:
        """(SPIFFE ID, what it is) of every parent an entry can name: the active attested
        nodes, the node aliases (entries parented by the server), and the server itself."""
        with transaction(self._engine) as session:
            nodes = [n for n in list_nodes(session) if n.status == NodeStatus.ACTIVE]
            aliases = list_entries(session, parent_id=self.server_id)
        return [
            *((n.spiffe_id, f"node ({n.attestor})") for n in nodes),
            *((a.spiffe_id, "node alias") for a in aliases),
            (self.server_id, "the server: parent of node aliases"),
        ]

    def agent_id_example(self) -> str:
        """What an attested node's SPIFFE ID looks like here (`AGENT_PATH`/attestor/id)."""
        return f"spiffe://{self._td}{AGENT_PATH}/join_token/…"

    def receivers(self, entry: Entry) -> list[Node]:
        """The active nodes that receive `entry`: those it is parented to, directly or
        through a node alias, that the attestation policy lets have it (`for_node`, the
        rule the nodes' sync applies).

        Raises:
            PolicyEvaluationError: the attestation policy failed.
        """
        with transaction(self._engine) as session:
            receiving = []
            for node in list_nodes(session):
                if node.status != NodeStatus.ACTIVE:
                    continue
                selectors = frozenset(node.selectors)
                aliases = self.aliases_of(session, selectors)
                if entry.parent_id != node.spiffe_id and entry.parent_id not in aliases:
                    continue
                view = NodeView(node.spiffe_id, selectors, aliases)
                if any(e.id == entry.id for e in self.for_node(session, view)):
                    receiving.append(node)
        return receiving

    # -- what a node may receive ---------------------------------------------------------

    def aliases_of(self, session: Session, selectors: frozenset[str]) -> tuple[str, ...]:
        """Node aliases: entries parented by the server whose selectors the node has all of."""
        rows = list_entries(session, parent_id=self.server_id)
        return tuple(sorted(r.spiffe_id for r in rows if set(r.selectors) <= selectors))

    def for_node(self, session: Session, node: NodeView) -> list[Entry]:
        """The entries `node` may receive: candidates by the parent relation, filtered by the
        attestation policy (`rego/attestation.rego`).

        Raises:
            PolicyEvaluationError: the policy failed; the node gets nothing (default deny).
        """
        parents = [node.spiffe_id, *node.aliases]
        candidates = list_entries_by_parent(session, parents)
        if not candidates:
            return []
        allowed = self._policy.evaluate(
            ATTESTATION_RULE,
            {
                "node": {
                    "spiffe_id": node.spiffe_id,
                    "selectors": sorted(node.selectors),
                    "aliases": list(node.aliases),
                },
                "entries": [
                    {
                        "id": e.id,
                        "spiffe_id": e.spiffe_id,
                        "parent_id": e.parent_id,
                        "selectors": list(e.selectors),
                        "admin": e.admin,
                        "downstream": e.downstream,
                    }
                    for e in candidates
                ],
            },
        )
        granted = set(allowed) if isinstance(allowed, set | list | tuple) else set()
        return [e for e in candidates if e.id in granted]
