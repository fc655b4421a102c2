"""node enforcement scope: unmanaged allow|deny and the always-allowed prefixes

Revision ID: aca1379aed22
Revises: 52d7b1dcbf00
Create Date: 2026-12-03 15:01:31.478857
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "aca1379aed22"
down_revision: str | None = "52d7b1dcbf00"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing nodes keep what the datapath did so far: unmanaged destinations allowed.
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "unmanaged",
                sqlmodel.sql.sqltypes.AutoString(length=8),
                server_default="allow",
                nullable=False,
            )
        )
        batch_op.add_column(
            sa.Column("always_allowed", sa.JSON(), server_default="[]", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("always_allowed")
        batch_op.drop_column("unmanaged")
