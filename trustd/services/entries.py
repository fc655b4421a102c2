"""Registration entries: who gets which SPIFFE ID, under which parent, by which selectors."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from pki.ca import dns_name_problem
from pki.clock import Clock
from pki.selectors import parse_selectors
from pki.spiffe_id import SpiffeId
from policy.engine import EmbeddedEngine, PolicyEngine
from trustd.bus import Bus
from trustd.errors import Conflict, InvalidRequest, NotFound
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.sync import announce, bump_revision
from trustd.services.verdicts import prune_reported_addresses
from trustd.settings import Settings
from trustd.store.db import transaction
from trustd.store.entries import RegistrationEntry
from trustd.store.verdicts import ReportedAddress

SERVER_PATH = "/trustd/server"
DEFAULT_ATTESTATION_POLICY = Path(__file__).resolve().parents[2] / "rego" / "attestation.rego"
ATTESTATION_RULE = "data.trustd.attestation.allowed"
MAX_BATCH = 500
MAX_PAGE = 1000
MAX_IP_ADDRESSES = 64


def canonical_prefixes(values: Sequence[str]) -> list[str]:
    """Addresses or CIDR prefixes in canonical form (`10.0.0.1` -> `10.0.0.1/32`).

    Raises:
        InvalidRequest: a value is not an IPv4 address or prefix, or there are too many.
    """
    if len(values) > MAX_IP_ADDRESSES:
        raise InvalidRequest(f"at most {MAX_IP_ADDRESSES} ip_addresses per entry")
    prefixes = []
    for value in values:
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError:
            raise InvalidRequest(f"not an IP address or prefix: {value!r}") from None
        # The eBPF IP cache holds IPv4 prefixes (trustd/agent/bpf/enforce.c).
        if network.version != 4:
            raise InvalidRequest(f"only IPv4 addresses are enforced: {value!r}")
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

    def _validated(self, spec: EntrySpec) -> dict[str, Any]:
        s = self._settings
        spiffe_id = SpiffeId.parse(spec.spiffe_id)
        spiffe_id.require_member_of(self._td)
        if spiffe_id.is_trust_domain_id:
            raise InvalidRequest("an entry's SPIFFE ID needs a path (SPIFFE-ID §2.2)")
        parent = SpiffeId.parse(spec.parent_id)
        parent.require_member_of(self._td)
        if parent == spiffe_id:
            raise InvalidRequest("an entry cannot be its own parent")
        selectors = sorted(str(sel) for sel in parse_selectors(spec.selectors))
        if not selectors:
            raise InvalidRequest("an entry needs at least one selector")
        x509_ttl = spec.x509_ttl or int(s.x509_svid_ttl.total_seconds())
        jwt_ttl = spec.jwt_ttl or int(s.jwt_svid_ttl.total_seconds())
        if not 0 < x509_ttl <= s.x509_svid_max_ttl.total_seconds():
            raise InvalidRequest(
                f"x509_ttl must be 1..{int(s.x509_svid_max_ttl.total_seconds())} seconds"
            )
        if not 0 < jwt_ttl <= s.jwt_svid_max_ttl.total_seconds():
            raise InvalidRequest(
                f"jwt_ttl must be 1..{int(s.jwt_svid_max_ttl.total_seconds())} seconds"
            )
        dns_names = [name.lower() for name in spec.dns_names]
        for name in dns_names:
            problem = dns_name_problem(name)
            if problem:
                raise InvalidRequest(f"{problem}: {name!r}")
        if len(spec.hint) > 256:
            raise InvalidRequest("hint is longer than 256 characters")
        ip_addresses = canonical_prefixes(spec.ip_addresses)
        return {
            "spiffe_id": str(spiffe_id),
            "parent_id": str(parent),
            "selectors": selectors,
            "selectors_key": "|".join(selectors),
            "x509_ttl": x509_ttl,
            "jwt_ttl": jwt_ttl,
            "dns_names": dns_names,
            "admin": spec.admin,
            "downstream": spec.downstream,
            "hint": spec.hint,
            "ip_addresses": ip_addresses,
        }

    # -- writes --------------------------------------------------------------------------

    def create(self, actor: Principal, specs: Sequence[EntrySpec]) -> list[RegistrationEntry]:
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
                raise InvalidRequest(
                    exc.detail if len(specs) == 1 else f"entry {index}: {exc.detail}"
                ) from None
        keys = [(v["spiffe_id"], v["parent_id"], v["selectors_key"]) for v in values]
        if len(set(keys)) != len(keys):
            raise Conflict("the batch holds the same entry twice")
        now = self._clock.now()
        try:
            with transaction(self._engine) as session:
                revision = bump_revision(session)
                rows = [
                    RegistrationEntry(
                        id=secrets.token_hex(12),
                        revision=revision,
                        created_by=actor.name,
                        created_at=now,
                        updated_at=now,
                        **v,
                    )
                    for v in values
                ]
                session.add_all(rows)
                session.flush()
                for row in rows:
                    self._audit.record(
                        session,
                        actor.name,
                        "entry:registration:created",
                        target=row.id,
                        details={"spiffe_id": row.spiffe_id, "parent_id": row.parent_id},
                    )
        except IntegrityError:
            raise Conflict(
                "an entry with the same SPIFFE ID, parent ID and selectors already exists"
            ) from None
        announce(self._bus, revision)
        return rows

    def update(self, actor: Principal, entry_id: str, patch: EntryPatch) -> RegistrationEntry:
        """Raises:
        NotFound: no such entry. Conflict: the change duplicates another entry.
        InvalidRequest and friends: the result would be invalid.
        """
        try:
            with transaction(self._engine) as session:
                row = session.get(RegistrationEntry, entry_id)
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
                )
                values = self._validated(merged)
                old_spiffe_id = row.spiffe_id
                for key, value in values.items():
                    setattr(row, key, value)
                row.revision = bump_revision(session)
                row.updated_at = self._clock.now()
                session.add(row)
                session.flush()
                prune_reported_addresses(session, old_spiffe_id)
                self._audit.record(
                    session,
                    actor.name,
                    "entry:registration:updated",
                    target=row.id,
                    details={"spiffe_id": row.spiffe_id, "parent_id": row.parent_id},
                )
        except IntegrityError:
            raise Conflict("the change would duplicate another entry") from None
        announce(self._bus, row.revision)
        return row

    def delete(self, actor: Principal, entry_id: str) -> None:
        """Raises:
        NotFound: no such entry.
        """
        with transaction(self._engine) as session:
            row = session.get(RegistrationEntry, entry_id)
            if row is None:
                raise NotFound(f"no entry {entry_id!r}")
            session.delete(row)
            session.flush()
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

    def get(self, entry_id: str) -> RegistrationEntry:
        """Raises:
        NotFound: no such entry.
        """
        with transaction(self._engine) as session:
            row = session.get(RegistrationEntry, entry_id)
        if row is None:
            raise NotFound(f"no entry {entry_id!r}")
        return row

    def reported_addresses(self, spiffe_id: str) -> list[ReportedAddress]:
        """What agents reported their workloads with `spiffe_id` hold, by node."""
        with transaction(self._engine) as session:
            return list(
                session.exec(
                    select(ReportedAddress)
                    .where(ReportedAddress.spiffe_id == spiffe_id)
                    .order_by(col(ReportedAddress.node_id), col(ReportedAddress.address))
                ).all()
            )

    def search(self, query: EntryFilter) -> tuple[list[RegistrationEntry], int]:
        """A page of entries and the total matching count."""
        if not 0 < query.limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be 1..{MAX_PAGE}")
        statement = select(RegistrationEntry)
        if query.spiffe_id:
            statement = statement.where(RegistrationEntry.spiffe_id == query.spiffe_id)
        if query.parent_id:
            statement = statement.where(RegistrationEntry.parent_id == query.parent_id)
        if query.selector:
            # selectors_key is the sorted selectors joined by '|': an exact element match.
            needle = query.selector
            statement = statement.where(
                or_(
                    col(RegistrationEntry.selectors_key) == needle,
                    col(RegistrationEntry.selectors_key).startswith(needle + "|"),
                    col(RegistrationEntry.selectors_key).endswith("|" + needle),
                    col(RegistrationEntry.selectors_key).contains("|" + needle + "|"),
                )
            )
        with transaction(self._engine) as session:
            total = session.exec(select(func.count()).select_from(statement.subquery())).one()
            rows = session.exec(
                statement.order_by(col(RegistrationEntry.spiffe_id), col(RegistrationEntry.id))
                .limit(query.limit)
                .offset(query.offset)
            ).all()
        return list(rows), int(total)

    # -- what a node may receive ---------------------------------------------------------

    def aliases_of(self, session: Session, selectors: frozenset[str]) -> tuple[str, ...]:
        """Node aliases: entries parented by the server whose selectors the node has all of."""
        rows = session.exec(
            select(RegistrationEntry).where(RegistrationEntry.parent_id == self.server_id)
        ).all()
        return tuple(sorted(r.spiffe_id for r in rows if set(r.selectors) <= selectors))

    def for_node(self, session: Session, node: NodeView) -> list[RegistrationEntry]:
        """The entries `node` may receive: candidates by the parent relation, filtered by the
        attestation policy (`rego/attestation.rego`).

        Raises:
            PolicyEvaluationError: the policy failed; the node gets nothing (default deny).
        """
        parents = [node.spiffe_id, *node.aliases]
        candidates = session.exec(
            select(RegistrationEntry)
            .where(col(RegistrationEntry.parent_id).in_(parents))
            .order_by(col(RegistrationEntry.id))
        ).all()
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
                        "selectors": e.selectors,
                        "admin": e.admin,
                        "downstream": e.downstream,
                    }
                    for e in candidates
                ],
            },
        )
        granted = set(allowed) if isinstance(allowed, set | list | tuple) else set()
        return [e for e in candidates if e.id in granted]
