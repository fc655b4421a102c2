"""identity quarantines: SPIFFE IDs every node cuts off until released or `until`

Revision ID: 52d7b1dcbf00
Revises: c4a9e2f1d7b3
Create Date: 2026-12-03 14:42:35.276541
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import trustd.store.types

revision: str = "52d7b1dcbf00"
down_revision: str | None = "c4a9e2f1d7b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identity_quarantines",
        sa.Column("spiffe_id", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("quarantined_by", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("quarantined_at", trustd.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("until", trustd.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("verdict_revision", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("spiffe_id", name=op.f("pk_identity_quarantines")),
    )
    op.create_index(
        op.f("ix_identity_quarantines_until"), "identity_quarantines", ["until"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_identity_quarantines_until"), table_name="identity_quarantines")
    op.drop_table("identity_quarantines")
