"""Attested nodes and the single-use join tokens they attest with."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, Session, SQLModel, col, select

from trustd.domain import nodes as domain
from trustd.domain.nodes import NodeStatus, Unmanaged
from trustd.errors import NotFound
from trustd.store.types import UTCDateTime, overwrite_row, row_values, to_domain


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
    # Its enforcement scope: what its workloads' packets to unmanaged destinations get, and
    # the IPv4 and IPv6 prefixes they always reach.
    unmanaged: str = Field(
        default=Unmanaged.ALLOW, max_length=8, sa_column_kwargs={"server_default": "allow"}
    )
    always_allowed: list[str] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False, server_default="[]"),
    )


def _node(row: Node) -> domain.Node:
    return to_domain(
        domain.Node, row, status=NodeStatus(row.status), unmanaged=Unmanaged(row.unmanaged)
    )


# -- nodes ----------------------------------------------------------------------------


def fetch_node(session: Session, spiffe_id: str, *, for_update: bool = False) -> domain.Node | None:
    """The node `spiffe_id`, row-locked until the transaction ends with `for_update`."""
    row = session.get(Node, spiffe_id, with_for_update=for_update)
    return _node(row) if row is not None else None


def fetch_node_by_serial(session: Session, serial: str) -> domain.Node | None:
    """The node whose current or previous node SVID has `serial`."""
    row = session.exec(
        select(Node).where(
            (col(Node.svid_serial) == serial) | (col(Node.previous_svid_serial) == serial)
        )
    ).first()
    return _node(row) if row is not None else None


def list_nodes(session: Session) -> list[domain.Node]:
    """Every node, by SPIFFE ID."""
    return [_node(r) for r in session.exec(select(Node).order_by(col(Node.spiffe_id)))]


def create_node(session: Session, node: domain.Node) -> None:
    """Add `node` to `session`."""
    session.add(Node(**row_values(node)))
    session.flush()


def update_node(session: Session, node: domain.Node) -> None:
    """Store every field of `node` over the row with its SPIFFE ID.

    Raises:
        NotFound: no such node.
    """
    row = session.get(Node, node.spiffe_id)
    if row is None:
        raise NotFound(f"no node {node.spiffe_id!r}")
    overwrite_row(session, row, row_values(node))


# -- join tokens ----------------------------------------------------------------------


def create_join_token(session: Session, token: domain.JoinToken) -> None:
    """Add `token` to `session`."""
    session.add(JoinToken(**row_values(token)))


def fetch_join_token(
    session: Session, token_id: str, *, for_update: bool = False
) -> domain.JoinToken | None:
    """The join token `token_id`; with `for_update` its row is locked until the transaction
    ends, so two agents racing with one token cannot both consume it."""
    statement = select(JoinToken).where(JoinToken.id == token_id)
    if for_update:
        statement = statement.with_for_update()
    row = session.exec(statement).first()
    return to_domain(domain.JoinToken, row) if row is not None else None


def update_join_token_used(session: Session, token_id: str, used_at: datetime) -> None:
    """Mark the join token `token_id` as consumed at `used_at`."""
    row = session.get(JoinToken, token_id)
    if row is None:
        raise NotFound(f"no join token {token_id!r}")
    row.used_at = used_at
    session.add(row)
