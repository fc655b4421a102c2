"""reported workload addresses hold IPv6 too: the address column widens to 39 characters

Revision ID: b61e0c4d9a57
Revises: 4fda43280e7c
Create Date: 2026-12-03 18:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "b61e0c4d9a57"
down_revision: str | None = "4fda43280e7c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reported_addresses", schema=None) as batch_op:
        batch_op.alter_column(
            "address",
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=15),
            type_=sqlmodel.sql.sqltypes.AutoString(length=39),
            existing_nullable=False,
        )


def downgrade() -> None:
    # The IPv6 rows do not fit the old column; they are only a cache of the agents'
    # reports (the IP cache loses those addresses until an agent reports them again).
    op.execute(sa.text("DELETE FROM reported_addresses WHERE address LIKE '%:%'"))
    with op.batch_alter_table("reported_addresses", schema=None) as batch_op:
        batch_op.alter_column(
            "address",
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=39),
            type_=sqlmodel.sql.sqltypes.AutoString(length=15),
            existing_nullable=False,
        )
