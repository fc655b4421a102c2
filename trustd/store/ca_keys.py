"""CA key slots (root, intermediate, JWT key) and the trust bundle's sequence."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import datetime

from sqlalchemy import Column, LargeBinary, Text, func, inspect, update
from sqlmodel import Field, Session, SQLModel, col, select
from sqlmodel.sql.expression import SelectOfScalar

from pki.keys import CLASSICAL_CHAIN
from pki.rotation import SlotStatus
from trustd.domain.ca_keys import CaKeyInfo
from trustd.store.types import UTCDateTime, row_values, to_domain


class CaKey(SQLModel, table=True):
    __tablename__ = "ca_keys"

    id: int | None = Field(default=None, primary_key=True)
    kid: str = Field(max_length=64, unique=True)
    kind: str = Field(max_length=32, index=True)
    status: str = Field(max_length=16, index=True)
    key_type: str = Field(max_length=16)
    # Which CA chain the key belongs to (`pki.keys.ca_chain`): `classical`, or an ML-DSA
    # level's chain kept next to it; each rotates on its own, all share the bundle.
    chain: str = Field(
        default="classical",
        sa_column=Column(Text, nullable=False, server_default="classical", index=True),
    )
    # PKCS#8, encrypted with the key-encryption key; NULL when the key lives outside
    # trustd (an upstream authority whose key stays in the operator's files).
    encrypted_key: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    # Where the private key lives: `file` (encrypted_key above) or `pkcs11`, a token object
    # named by its label and CKA_ID (hex); the token keeps the key, the row only names it.
    key_backend: str = Field(
        default="file", sa_column=Column(Text, nullable=False, server_default="file")
    )
    key_label: str | None = Field(default=None, sa_column=Column(Text))
    key_id: str | None = Field(default=None, max_length=64)
    public_key_pem: str = Field(sa_column=Column(Text, nullable=False))
    certificate_pem: str | None = Field(default=None, sa_column=Column(Text))
    # Certificates between this authority and its root, PEM, excluding the root.
    chain_pem: str = Field(default="", sa_column=Column(Text, nullable=False))
    upstream: bool = False
    not_before: datetime = Field(sa_type=UTCDateTime)
    not_after: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    # The CA key that signed this certificate (an intermediate's root); NULL for roots.
    issuer_kid: str | None = Field(default=None, max_length=64, index=True)
    # For a root that replaced another: this root's key certified by its predecessor, so
    # verifiers that only hold the predecessor still reach the new root (cross-signing).
    cross_certificate_pem: str | None = Field(default=None, sa_column=Column(Text))
    status_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class BundleState(SQLModel, table=True):
    """One row: the trust bundle's `spiffe_sequence` (SPIFFE Trust Domain and Bundle §4.1)."""

    __tablename__ = "bundle_state"

    id: int = Field(default=1, primary_key=True)
    sequence: int = 0
    updated_at: datetime = Field(sa_type=UTCDateTime)


def ca_key_info(row: CaKey) -> CaKeyInfo:
    """The domain view of a CA key row."""
    return to_domain(CaKeyInfo, row)


def create_ca_key(session: Session, key: CaKeyInfo) -> CaKey:
    """Add the CA key `key` to `session` and flush it; returns its row."""
    row = CaKey(**row_values(key))
    session.add(row)
    session.flush()
    return row


def _by_status(statuses: Collection[str]) -> SelectOfScalar[CaKey]:
    return (
        select(CaKey)
        .where(col(CaKey.status).in_([str(s) for s in statuses]))
        .order_by(col(CaKey.created_at), col(CaKey.id))
    )


def list_ca_keys(session: Session, statuses: Collection[str]) -> list[CaKeyInfo]:
    """CA keys whose status is one of `statuses`, oldest first."""
    return [ca_key_info(r) for r in session.exec(_by_status(statuses))]


def list_ca_key_rows(session: Session, statuses: Collection[str]) -> list[CaKey]:
    """As `list_ca_keys`, but the rows themselves, for the rotation manager that changes
    their status in the same transaction."""
    return list(session.exec(_by_status(statuses)))


def fetch_ca_key(session: Session, kid: str, *, for_update: bool = False) -> CaKeyInfo | None:
    """The CA key `kid`, whatever its status; with `for_update`, its row stays locked until
    the transaction ends (the rotation manager's transitions)."""
    query = select(CaKey).where(CaKey.kid == kid)
    row = session.exec(query.with_for_update() if for_update else query).first()
    return ca_key_info(row) if row is not None else None


def fetch_active_ca_key(
    session: Session, kind: str, *, chain: str = CLASSICAL_CHAIN, for_update: bool = False
) -> CaKeyInfo | None:
    """The active CA key of `kind` in `chain`, if there is one; with `for_update`, locked
    until the transaction ends."""
    query = select(CaKey).where(
        CaKey.kind == kind, CaKey.status == SlotStatus.ACTIVE, col(CaKey.chain) == chain
    )
    row = session.exec(query.with_for_update() if for_update else query).first()
    return ca_key_info(row) if row is not None else None


def list_ca_key_timeline(session: Session) -> list[CaKeyInfo]:
    """Every CA key ever created, newest first (the rotation timeline), without key material:
    this is what the API and the UI show."""
    rows = session.exec(select(CaKey).order_by(col(CaKey.created_at).desc(), col(CaKey.id).desc()))
    return [replace(ca_key_info(row), encrypted_key=None) for row in rows]


def update_ca_key_status(session: Session, kid: str, status: str, changed_at: datetime) -> None:
    """Set the status of the CA key `kid` (the caller checked the transition).

    Rows of that key already loaded in `session` see the change too, so a later read in the
    same transaction (the next rotation step) finds the new status.
    """
    session.execute(
        update(CaKey)
        .where(col(CaKey.kid) == kid)
        .values(status=status, status_changed_at=changed_at)
        .execution_options(synchronize_session="evaluate")
    )


def fetch_bundle_sequence(session: Session) -> int | None:
    """The stored `spiffe_sequence`; None before the CA was initialised."""
    state = session.get(BundleState, 1)
    return state.sequence if state is not None else None


def update_bundle_sequence(session: Session, now: datetime) -> int:
    """Increase the stored `spiffe_sequence` (under a row lock) and return it."""
    state = session.get(BundleState, 1, with_for_update=True)
    if state is None:
        state = BundleState(id=1, sequence=1, updated_at=now)
    else:
        state.sequence += 1
        state.updated_at = now
    session.add(state)
    return state.sequence


def count_ca_keys(session: Session) -> int:
    """How many CA keys the database holds, whatever their status (0 before the first
    migration too: the table may not exist yet)."""
    if not inspect(session.connection()).has_table(CaKey.__tablename__):
        return 0
    return int(session.exec(select(func.count()).select_from(CaKey)).one())
