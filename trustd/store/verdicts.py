"""Verdict tables and every query on them: numeric identities, workload addresses reported
by agents, the compiled verdict revisions (one per change, shared by every node and every
replica), and the revision each agent applied."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, func, text
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel, col, delete, select

from trustd.domain.entries import EntryAddress
from trustd.store.entries import RegistrationEntry
from trustd.store.nodes import Node
from trustd.store.types import UTCDateTime, to_domain

# pg_advisory_xact_lock key of verdict compilation ("trustd verdicts", any fixed number).
_COMPILE_LOCK = 0x7472757374643176


class NumericIdentity(SQLModel, table=True):
    """A SPIFFE ID's number in the eBPF maps. Rows are never deleted, so a number is never
    handed to another SPIFFE ID while an agent may still hold it."""

    __tablename__ = "numeric_identities"

    id: int | None = Field(default=None, primary_key=True)
    spiffe_id: str = Field(max_length=2048, unique=True)
    created_at: datetime = Field(sa_type=UTCDateTime)


class ReportedAddress(SQLModel, table=True):
    """An address a node's agent found held by a workload with `spiffe_id` (the caller of
    its Workload API). A node's report replaces all its rows; the rows go when the node is
    evicted, banned or attests again, and when the last entry with that SPIFFE ID goes."""

    __tablename__ = "reported_addresses"

    node_id: str = Field(primary_key=True, max_length=2048)
    spiffe_id: str = Field(primary_key=True, max_length=2048, index=True)
    # IPv4 dotted quad or IPv6 in RFC 5952 form (at most 39 characters: IPv4-mapped
    # addresses are refused, trustd.addresses); the IP cache gets it as a /32 or a /128.
    address: str = Field(primary_key=True, max_length=39)
    # When this node first reported this address for this SPIFFE ID.
    reported_at: datetime = Field(sa_type=UTCDateTime)


class VerdictRevision(SQLModel, table=True):
    """One compiled verdict state, shared by every node (each takes the verdicts of its own
    destinations). The last few are kept so an agent that is a little behind gets a delta."""

    __tablename__ = "verdict_revisions"

    revision: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    # What the state was compiled from (policy, sync and revocation revisions), and its
    # digest: a recompilation that changes nothing keeps the revision.
    policy_revision: int
    sync_revision: int
    revocation_revision: int
    digest: str = Field(max_length=64)
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_type=UTCDateTime)


class NodeVerdictAck(SQLModel, table=True):
    """The verdict revision each agent last applied, for lag reporting."""

    __tablename__ = "node_verdict_acks"

    node_id: str = Field(primary_key=True, max_length=2048)
    applied_revision: int = 0
    applied_at: datetime = Field(sa_type=UTCDateTime)


@dataclass(frozen=True)
class Sources:
    """The revisions a verdict state is compiled from."""

    policy: int
    sync: int
    revocation: int


@dataclass(frozen=True)
class RevisionHead:
    """A verdict revision without its state."""

    revision: int
    sources: Sources
    digest: str


# -- what verdicts are compiled from ---------------------------------------------------------


# One statement, one snapshot, no ORM: every woken long-poll asks it.
_SOURCES = text(
    "SELECT"
    " (SELECT revision FROM policy_activations ORDER BY id DESC LIMIT 1),"
    " (SELECT revision FROM sync_state WHERE id = 1),"
    " (SELECT revision FROM revocation_state WHERE id = 1)"
)


def fetch_sources(session: Session) -> Sources:
    """The active policy revision, the sync revision and the revocation revision, in one
    statement (one snapshot)."""
    row = session.connection().execute(_SOURCES).one()
    return Sources(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0))


def list_entry_identities(session: Session) -> list[tuple[str, str, list[str]]]:
    """(entry ID, SPIFFE ID, declared prefixes) of every registration entry."""
    rows = session.exec(
        select(RegistrationEntry.id, RegistrationEntry.spiffe_id, RegistrationEntry.ip_addresses)
    ).all()
    return [(r[0], r[1], list(r[2] or [])) for r in rows]


# -- numeric identities ----------------------------------------------------------------------


def _insert(session: Session, table: type[SQLModel]) -> Any:
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table)


def create_numeric_identities(
    session: Session, spiffe_ids: Iterable[str], now: datetime
) -> dict[str, int]:
    """Numbers for every SPIFFE ID, allocating the missing ones above the highest.

    Idempotent: a number another transaction committed for the same SPIFFE ID meanwhile
    is kept (the insert does nothing), so concurrent compilers agree without retrying.
    """
    wanted = set(spiffe_ids)
    known = _numbers(session, wanted)
    missing = sorted(wanted - known.keys())
    if missing:
        top = session.exec(select(func.max(NumericIdentity.id))).one()
        next_id = max(FIRST_IDENTITY, int(top or 0) + 1)
        rows = [
            {"id": next_id + offset, "spiffe_id": spiffe_id, "created_at": now}
            for offset, spiffe_id in enumerate(missing)
        ]
        statement = _insert(session, NumericIdentity).values(rows).on_conflict_do_nothing()
        session.connection().execute(statement)
        known = _numbers(session, wanted)
    return known


def _numbers(session: Session, spiffe_ids: set[str]) -> dict[str, int]:
    if not spiffe_ids:
        return {}
    rows = session.exec(
        select(NumericIdentity.spiffe_id, NumericIdentity.id).where(
            col(NumericIdentity.spiffe_id).in_(spiffe_ids)
        )
    ).all()
    return {spiffe_id: int(number or 0) for spiffe_id, number in rows}


# Identity 0 is "unknown" (an address in no entry); allocated identities start above the
# range Cilium reserves for its own fixed identities, so numbers read the same way.
FIRST_IDENTITY = 256


# -- reported addresses ----------------------------------------------------------------------


def list_reported_addresses(session: Session) -> list[tuple[str, str]]:
    """(SPIFFE ID, address) of every report."""
    rows = session.exec(select(ReportedAddress.spiffe_id, ReportedAddress.address)).all()
    return [(r[0], r[1]) for r in rows]


def list_node_reported_addresses(session: Session, node_id: str) -> list[ReportedAddress]:
    return list(
        session.exec(select(ReportedAddress).where(ReportedAddress.node_id == node_id)).all()
    )


def update_node_reported_addresses(
    session: Session,
    node_id: str,
    removed: Sequence[ReportedAddress],
    added: Sequence[tuple[str, str]],
    now: datetime,
) -> None:
    """Drop `removed` rows and add (SPIFFE ID, address) rows for the node."""
    for row in removed:
        session.delete(row)
    session.add_all(
        ReportedAddress(node_id=node_id, spiffe_id=spiffe_id, address=address, reported_at=now)
        for spiffe_id, address in added
    )


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


# -- verdict revisions -----------------------------------------------------------------------


def lock_compilation(session: Session) -> None:
    """Serialise compilers across replicas until the transaction ends: the first one
    compiles the change, the next finds it compiled. SQLite serves one process, whose
    compilers a thread lock already serialises."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _COMPILE_LOCK}
        )


def fetch_revision_head(session: Session) -> RevisionHead | None:
    """The newest verdict revision, without its state."""
    row = (
        session.connection()
        .execute(
            sa_select(
                col(VerdictRevision.revision),
                col(VerdictRevision.policy_revision),
                col(VerdictRevision.sync_revision),
                col(VerdictRevision.revocation_revision),
                col(VerdictRevision.digest),
            )
            .order_by(col(VerdictRevision.revision).desc())
            .limit(1)
        )
        .first()
    )
    if row is None:
        return None
    return RevisionHead(row[0], Sources(row[1], row[2], row[3]), row[4])


def fetch_revision_state(session: Session, revision: int) -> tuple[int, dict[str, Any]] | None:
    """(policy revision, state) of a kept verdict revision."""
    row = session.exec(
        select(VerdictRevision.policy_revision, VerdictRevision.state).where(
            VerdictRevision.revision == revision
        )
    ).first()
    return None if row is None else (row[0], dict(row[1]))


def create_revision(
    session: Session,
    revision: int,
    sources: Sources,
    digest: str,
    state: dict[str, Any],
    now: datetime,
    keep: int,
) -> None:
    """Store a new verdict revision and drop those more than `keep` behind it."""
    session.add(
        VerdictRevision(
            revision=revision,
            policy_revision=sources.policy,
            sync_revision=sources.sync,
            revocation_revision=sources.revocation,
            digest=digest,
            state=state,
            created_at=now,
        )
    )
    session.flush()
    session.exec(delete(VerdictRevision).where(col(VerdictRevision.revision) <= revision - keep))


def update_revision_sources(session: Session, revision: int, sources: Sources) -> None:
    """A recompilation found the same state: the revision now stands for `sources` too."""
    row = session.get(VerdictRevision, revision)
    if row is not None:
        row.policy_revision = sources.policy
        row.sync_revision = sources.sync
        row.revocation_revision = sources.revocation
        session.add(row)


# -- acknowledgements ------------------------------------------------------------------------


def update_verdict_acks(session: Session, applied: Mapping[str, int], now: datetime) -> None:
    """Record the verdict revision each node's agent applied (node ID -> revision), in one
    statement whatever the number of nodes."""
    if not applied:
        return
    rows = [
        {"node_id": node_id, "applied_revision": revision, "applied_at": now}
        for node_id, revision in sorted(applied.items())
    ]
    insert = _insert(session, NodeVerdictAck).values(rows)
    session.connection().execute(
        insert.on_conflict_do_update(
            index_elements=[col(NodeVerdictAck.node_id)],
            set_={
                "applied_revision": insert.excluded.applied_revision,
                "applied_at": insert.excluded.applied_at,
            },
        )
    )


def list_verdict_acks(session: Session) -> list[tuple[str, NodeVerdictAck | None]]:
    """Every node, by SPIFFE ID, with the acknowledgement of its agent (None: never)."""
    acks = {a.node_id: a for a in session.exec(select(NodeVerdictAck)).all()}
    nodes = session.exec(select(Node.spiffe_id).order_by(col(Node.spiffe_id))).all()
    return [(node_id, acks.get(node_id)) for node_id in nodes]


__all__ = [
    "FIRST_IDENTITY",
    "NodeVerdictAck",
    "NumericIdentity",
    "ReportedAddress",
    "RevisionHead",
    "Sources",
    "VerdictRevision",
]


def list_entry_addresses(session: Session, spiffe_id: str) -> list[EntryAddress]:
    """What agents reported their workloads with `spiffe_id` hold, by node then address
    (an entry's page lists them)."""
    rows = session.exec(
        select(ReportedAddress)
        .where(ReportedAddress.spiffe_id == spiffe_id)
        .order_by(col(ReportedAddress.node_id), col(ReportedAddress.address))
    )
    return [to_domain(EntryAddress, r) for r in rows]
