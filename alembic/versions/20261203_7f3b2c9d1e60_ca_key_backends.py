"""ca key backends: a CA key is sealed in its row (file) or named in a PKCS#11 token

Rows made before this revision are file keys: `key_backend` defaults to `file`. A pkcs11
row holds only the token object's label and CKA_ID; the key stays in the token.

Revision ID: 7f3b2c9d1e60
Revises: aca1379aed22
Create Date: 2026-12-03 15:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "7f3b2c9d1e60"
down_revision: str | None = "aca1379aed22"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ca_keys") as batch:
        batch.add_column(sa.Column("key_backend", sa.Text(), nullable=False, server_default="file"))
        batch.add_column(sa.Column("key_label", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("ca_keys") as batch:
        batch.drop_column("key_id")
        batch.drop_column("key_label")
        batch.drop_column("key_backend")
