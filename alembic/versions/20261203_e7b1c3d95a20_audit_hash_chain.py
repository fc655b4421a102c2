"""audit hash chain: each audit event carries the hash of the one before it

Adds `seq`, `prev_hash` and `hash` to `audit_events` and the one-row `audit_chain` head.
Events recorded before are chained here, in the order they were written (by id), so the
chain covers the whole log from its first event.

Revision ID: e7b1c3d95a20
Revises: 7f3b2c9d1e60
Create Date: 2026-12-03 15:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from trustd.domain.audit import GENESIS_HASH, ChainedAuditEvent
from trustd.store.types import UTCDateTime

revision: str = "e7b1c3d95a20"
down_revision: str | None = "7f3b2c9d1e60"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_events = sa.table(
    "audit_events",
    sa.column("id", sa.Integer()),
    sa.column("at", UTCDateTime()),
    sa.column("actor", sa.String()),
    sa.column("action", sa.String()),
    sa.column("target", sa.String()),
    sa.column("outcome", sa.String()),
    sa.column("request_id", sa.String()),
    sa.column("details", sa.JSON()),
    sa.column("seq", sa.BigInteger()),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    seq, prev = 0, GENESIS_HASH
    rows = connection.execute(sa.select(_events).order_by(_events.c.id)).mappings().all()
    for row in rows:
        seq += 1
        event = ChainedAuditEvent(
            seq=seq,
            at=row["at"],
            actor=row["actor"],
            action=row["action"],
            target=row["target"],
            outcome=row["outcome"],
            request_id=row["request_id"],
            details=dict(row["details"]),
            prev_hash=prev,
            hash="",
        )
        digest = event.computed_hash()
        connection.execute(
            _events.update()
            .where(_events.c.id == row["id"])
            .values(seq=seq, prev_hash=prev, hash=digest)
        )
        prev = digest
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch.create_unique_constraint("uq_audit_events_seq", ["seq"])
    chain = op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(chain, [{"id": 1, "seq": seq, "hash": prev}])


def downgrade() -> None:
    op.drop_table("audit_chain")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_seq", type_="unique")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
