"""registration entries federate with foreign trust domains

Revision ID: 4fda43280e7c
Revises: 9d28d1e6ec63
Create Date: 2026-12-03 16:04:33.483834
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4fda43280e7c"
down_revision: str | None = "9d28d1e6ec63"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "registration_entries",
        sa.Column("federates_with", sa.JSON(), server_default="[]", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("registration_entries", "federates_with")
