"""decision verdicts: allowed or denied, whatever the shape of the result

The decision log's "denied" filter matched only results that are exactly `false`; the mesh
decision answers an object (`{"allowed": false, ...}`). Each logged decision now carries
its verdict. Rows logged before hold one only where the result was a plain boolean, found
through the result hash (indexed), so the backfill reads no JSON.

Revision ID: c4a9e2f1d7b3
Revises: 5e1d0c7a9b42
Create Date: 2026-12-03 12:40:00.000000
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4a9e2f1d7b3"
down_revision: str | None = "5e1d0c7a9b42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# `services.policy.result_hash` of the results true and false (SHA-256 of their JSON).
_TRUE = hashlib.sha256(b"true").hexdigest()
_FALSE = hashlib.sha256(b"false").hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("policy_decisions") as batch:
        batch.add_column(sa.Column("verdict", sa.Boolean(), nullable=True))
        batch.create_index("ix_policy_decisions_verdict_at", ["verdict", "at"], unique=False)
    op.execute(
        sa.text(
            "UPDATE policy_decisions SET verdict = (result_hash = :true) "
            "WHERE result_hash IN (:true, :false)"
        ).bindparams(true=_TRUE, false=_FALSE)
    )


def downgrade() -> None:
    with op.batch_alter_table("policy_decisions") as batch:
        batch.drop_index("ix_policy_decisions_verdict_at")
        batch.drop_column("verdict")
