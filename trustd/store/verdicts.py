"""Verdict tables: numeric identities, workload addresses reported by agents, and the
compiled per-node verdict sets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from trustd.store.types import UTCDateTime


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
    # IPv4, dotted quad: the IP cache gets it as a /32.
    address: str = Field(primary_key=True, max_length=15)
    # When this node first reported this address for this SPIFFE ID.
    reported_at: datetime = Field(sa_type=UTCDateTime)


class NodeVerdictSet(SQLModel, table=True):
    """One compiled verdict state of one node: what its agent enforces at `revision`.
    The last few are kept so an agent that is a little behind gets a delta."""

    __tablename__ = "node_verdict_sets"
    __table_args__ = (UniqueConstraint("node_id", "revision", name="uq_node_verdict_revision"),)

    id: int | None = Field(default=None, primary_key=True)
    node_id: str = Field(max_length=2048, index=True)
    revision: int = Field(index=True)
    # What the state was compiled from (policy, sync and revocation revisions), and its
    # digest: a recompilation that changes nothing keeps the revision.
    policy_revision: int
    sync_revision: int
    revocation_revision: int = 0
    digest: str = Field(max_length=64)
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_type=UTCDateTime)


class NodeVerdictAck(SQLModel, table=True):
    """The verdict revision each agent last applied, for lag reporting."""

    __tablename__ = "node_verdict_acks"

    node_id: str = Field(primary_key=True, max_length=2048)
    applied_revision: int = 0
    applied_at: datetime = Field(sa_type=UTCDateTime)
