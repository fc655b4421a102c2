"""federation relationships: foreign trust domains and their last good bundles

Revision ID: 9d28d1e6ec63
Revises: e7b1c3d95a20
Create Date: 2026-12-03 15:46:31.985124
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import trustd.store.types

revision: str = "9d28d1e6ec63"
down_revision: str | None = "e7b1c3d95a20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "federations",
        sa.Column("trust_domain", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column(
            "bundle_endpoint_url", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False
        ),
        sa.Column("profile", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column(
            "endpoint_spiffe_id", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=True
        ),
        sa.Column("bundle_jwks", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("bundle_sequence", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("created_at", trustd.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_success_at", trustd.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
        sa.Column("last_error_at", trustd.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_refresh_at", trustd.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("trust_domain", name=op.f("pk_federations")),
    )
    op.create_index(
        op.f("ix_federations_next_refresh_at"), "federations", ["next_refresh_at"], unique=False
    )
    op.create_index(op.f("ix_federations_revision"), "federations", ["revision"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_federations_revision"), table_name="federations")
    op.drop_index(op.f("ix_federations_next_refresh_at"), table_name="federations")
    op.drop_table("federations")
