"""Attested nodes and the single-use join tokens they attest with."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from trustd.domain.nodes import NodeStatus
from trustd.store.types import UTCDateTime


class JoinToken(SQLModel, table=True):
    """Single-use node attestation secret; only its hash is kept."""

    __tablename__ = "join_tokens"

    id: str = Field(primary_key=True, max_length=32)
    token_hash: str = Field(max_length=64)
    selectors: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Node(SQLModel, table=True):
    """An attested agent. Evicted nodes must attest again; banned nodes cannot."""

    __tablename__ = "nodes"

    spiffe_id: str = Field(primary_key=True, max_length=2048)
    attestor: str = Field(max_length=32)
    agent_id: str = Field(max_length=512)
    selectors: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16, index=True)
    # The node SVID the agent holds now and the one before it: node credentials signed with
    # either key are accepted, so a renewal never locks the agent out mid-flight.
    svid_serial: str = Field(max_length=64, index=True)
    svid_public_key_pem: str = Field(sa_column=Column(Text, nullable=False))
    previous_svid_serial: str | None = Field(default=None, max_length=64, index=True)
    previous_public_key_pem: str | None = Field(default=None, sa_column=Column(Text))
    svid_not_after: datetime = Field(sa_type=UTCDateTime)
    attested_at: datetime = Field(sa_type=UTCDateTime)
    last_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    applied_revision: int = 0


__all__ = ["JoinToken", "Node", "NodeStatus"]
