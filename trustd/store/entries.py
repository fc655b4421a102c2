"""Registration entries: selectors under a parent mapped to a SPIFFE ID."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from trustd.store.types import UTCDateTime


class RegistrationEntry(SQLModel, table=True):
    """Maps selectors under a parent (node or node alias) to a SPIFFE ID."""

    __tablename__ = "registration_entries"
    __table_args__ = (
        UniqueConstraint("spiffe_id", "parent_id", "selectors_key", name="uq_entry_identity"),
    )

    id: str = Field(primary_key=True, max_length=32)
    spiffe_id: str = Field(max_length=2048, index=True)
    parent_id: str = Field(max_length=2048, index=True)
    selectors: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The selectors sorted and joined: what makes two entries the same entry.
    selectors_key: str = Field(sa_column=Column(Text, nullable=False))
    x509_ttl: int
    jwt_ttl: int
    dns_names: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    admin: bool = False
    downstream: bool = False
    hint: str = Field(default="", max_length=256)
    # The workload's addresses (CIDR prefixes), for the agents' IP -> identity table.
    ip_addresses: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    revision: int = Field(index=True)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
