"""Registration entries: selectors under a parent mapped to a SPIFFE ID."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Text, UniqueConstraint, or_
from sqlmodel import Field, Session, SQLModel, col, func, select
from sqlmodel.sql.expression import SelectOfScalar

from pki.keys import KeyType
from trustd.domain.entries import Entry
from trustd.errors import NotFound
from trustd.store.types import UTCDateTime, overwrite_row, row_values, to_domain


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
    # The foreign trust domains whose bundles the entry's workloads receive (SPIFFE
    # Workload API §4.6, federated bundles).
    federates_with: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    # The key type the entry's X509-SVIDs are issued for (`pki.keys.KeyType`); NULL: the
    # trust domain's TRUSTD_KEY_TYPE.
    key_type: str | None = Field(default=None, max_length=16)
    revision: int = Field(index=True)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


def _entry(row: RegistrationEntry) -> Entry:
    return to_domain(Entry, row, key_type=KeyType(row.key_type) if row.key_type else None)


def _values(entry: Entry) -> dict[str, Any]:
    return {**row_values(entry), "selectors_key": entry.selectors_key}


def create_entries(session: Session, entries: Sequence[Entry]) -> None:
    """Add `entries` to `session` and flush them.

    Raises:
        IntegrityError: an entry with the same SPIFFE ID, parent and selectors exists.
    """
    session.add_all([RegistrationEntry(**_values(e)) for e in entries])
    session.flush()


def fetch_entry(session: Session, entry_id: str) -> Entry | None:
    """The entry `entry_id`, if it exists."""
    row = session.get(RegistrationEntry, entry_id)
    return _entry(row) if row is not None else None


def update_entry(session: Session, entry: Entry) -> None:
    """Store every field of `entry` over the row with its id, and flush.

    Raises:
        NotFound: no such entry. IntegrityError: the change duplicates another entry.
    """
    row = session.get(RegistrationEntry, entry.id)
    if row is None:
        raise NotFound(f"no entry {entry.id!r}")
    overwrite_row(session, row, _values(entry))


def delete_entry(session: Session, entry_id: str) -> Entry | None:
    """Delete the entry `entry_id` and flush; returns what was deleted, None if nothing."""
    row = session.get(RegistrationEntry, entry_id)
    if row is None:
        return None
    entry = _entry(row)
    session.delete(row)
    session.flush()
    return entry


def _filtered(
    spiffe_id: str | None, parent_id: str | None, selector: str | None
) -> SelectOfScalar[RegistrationEntry]:
    statement = select(RegistrationEntry)
    if spiffe_id:
        statement = statement.where(RegistrationEntry.spiffe_id == spiffe_id)
    if parent_id:
        statement = statement.where(RegistrationEntry.parent_id == parent_id)
    if selector:
        # selectors_key is the sorted selectors joined by '|': an exact element match.
        key = col(RegistrationEntry.selectors_key)
        statement = statement.where(
            or_(
                key == selector,
                key.startswith(selector + "|"),
                key.endswith("|" + selector),
                key.contains("|" + selector + "|"),
            )
        )
    return statement


def list_entries(
    session: Session,
    *,
    spiffe_id: str | None = None,
    parent_id: str | None = None,
    selector: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Entry]:
    """Entries matching every filter given (`selector`: one of the entry's selectors), by
    SPIFFE ID then id."""
    statement = (
        _filtered(spiffe_id, parent_id, selector)
        .order_by(col(RegistrationEntry.spiffe_id), col(RegistrationEntry.id))
        .offset(offset)
    )
    if limit is not None:
        statement = statement.limit(limit)
    return [_entry(r) for r in session.exec(statement)]


def count_entries(
    session: Session,
    *,
    spiffe_id: str | None = None,
    parent_id: str | None = None,
    selector: str | None = None,
) -> int:
    """How many entries `list_entries` would return without a limit."""
    statement = _filtered(spiffe_id, parent_id, selector)
    return int(session.exec(select(func.count()).select_from(statement.subquery())).one())


def list_entries_by_parent(session: Session, parent_ids: Sequence[str]) -> list[Entry]:
    """Entries whose parent is one of `parent_ids`, by id."""
    return [
        _entry(r)
        for r in session.exec(
            select(RegistrationEntry)
            .where(col(RegistrationEntry.parent_id).in_(parent_ids))
            .order_by(col(RegistrationEntry.id))
        )
    ]
