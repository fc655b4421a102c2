"""verdict revisions shared by every node, replacing per-node verdict sets

Verdicts are compiled once per change into one state every node slices, so the per-node
full-state rows go.

Revision ID: 5e1d0c7a9b42
Revises: bb0265926579
Create Date: 2026-12-03 09:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import trustd.store.types

revision: str = "5e1d0c7a9b42"
down_revision: str | None = "bb0265926579"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "verdict_revisions",
        sa.Column("revision", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("policy_revision", sa.Integer(), nullable=False),
        sa.Column("sync_revision", sa.Integer(), nullable=False),
        sa.Column("revocation_revision", sa.Integer(), nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("created_at", trustd.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_verdict_revisions")),
    )
    # Agents holding a per-node revision get the full state on their next sync: the
    # revision they name is no longer kept.
    op.drop_index(op.f("ix_node_verdict_sets_revision"), table_name="node_verdict_sets")
    op.drop_index(op.f("ix_node_verdict_sets_node_id"), table_name="node_verdict_sets")
    op.drop_table("node_verdict_sets")


def downgrade() -> None:
    op.create_table(
        "node_verdict_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("policy_revision", sa.Integer(), nullable=False),
        sa.Column("sync_revision", sa.Integer(), nullable=False),
        sa.Column("revocation_revision", sa.Integer(), nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("created_at", trustd.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_verdict_sets")),
        sa.UniqueConstraint("node_id", "revision", name="uq_node_verdict_revision"),
    )
    op.create_index(
        op.f("ix_node_verdict_sets_node_id"), "node_verdict_sets", ["node_id"], unique=False
    )
    op.create_index(
        op.f("ix_node_verdict_sets_revision"), "node_verdict_sets", ["revision"], unique=False
    )
    op.drop_table("verdict_revisions")
