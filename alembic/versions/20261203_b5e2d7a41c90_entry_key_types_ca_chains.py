"""entries ask for an SVID key type; CA keys belong to a chain (classical or ML-DSA)

Revision ID: b5e2d7a41c90
Revises: b7e4a1c9f2d5
Create Date: 2026-12-03 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b5e2d7a41c90"
down_revision: str | None = "b7e4a1c9f2d5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "registration_entries", sa.Column("key_type", sa.String(length=16), nullable=True)
    )
    # Every key made before this revision is classical: TRUSTD_KEY_TYPE=ml-dsa-* was refused.
    op.add_column(
        "ca_keys", sa.Column("chain", sa.Text(), server_default="classical", nullable=False)
    )
    op.create_index(op.f("ix_ca_keys_chain"), "ca_keys", ["chain"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_ca_keys_chain"), table_name="ca_keys")
    op.drop_column("ca_keys", "chain")
    op.drop_column("registration_entries", "key_type")
