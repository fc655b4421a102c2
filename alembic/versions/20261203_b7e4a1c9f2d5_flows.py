"""flows: what agents observed their datapath and ext_authz decide

One row per flow report (an aggregate of one key over one interval), indexed by time,
source, destination and verdict; pruned by age and count by the leader.

Revision ID: b7e4a1c9f2d5
Revises: b61e0c4d9a57
Create Date: 2026-12-03 18:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trustd.store.types

revision: str = "b7e4a1c9f2d5"
down_revision: str | None = "b61e0c4d9a57"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    when = trustd.store.types.UTCDateTime()
    op.create_table(
        "flows",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("node", sa.String(length=2048), nullable=False),
        sa.Column("interval_start", when, nullable=False),
        sa.Column("interval_end", when, nullable=False),
        sa.Column("source", sa.String(length=2048), nullable=True),
        sa.Column("destination", sa.String(length=2048), nullable=True),
        sa.Column("source_address", sa.String(length=45), nullable=False),
        sa.Column("destination_address", sa.String(length=45), nullable=False),
        sa.Column("destination_port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("observer", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", when, nullable=False),
        sa.Column("last_seen", when, nullable=False),
        sa.Column("l7_method", sa.String(length=16), nullable=True),
        sa.Column("l7_path", sa.String(length=1024), nullable=True),
        sa.Column("l7_host", sa.String(length=255), nullable=True),
        sa.Column("l7_status", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_flows_last_seen", "flows", ["last_seen"])
    op.create_index("ix_flows_source_last_seen", "flows", ["source", "last_seen"])
    op.create_index("ix_flows_destination_last_seen", "flows", ["destination", "last_seen"])
    op.create_index("ix_flows_verdict_last_seen", "flows", ["verdict", "last_seen"])


def downgrade() -> None:
    op.drop_index("ix_flows_verdict_last_seen", table_name="flows")
    op.drop_index("ix_flows_destination_last_seen", table_name="flows")
    op.drop_index("ix_flows_source_last_seen", table_name="flows")
    op.drop_index("ix_flows_last_seen", table_name="flows")
    op.drop_table("flows")
