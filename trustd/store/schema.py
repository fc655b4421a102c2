"""Every table module, imported once so that one metadata holds the whole schema (Alembic)."""

from sqlmodel import SQLModel

from trustd.store import (  # noqa: F401
    acme,
    attestation,
    audit,
    ca_keys,
    certificates,
    entries,
    federation,
    flows,
    leader,
    nodes,
    policy,
    quarantines,
    revocations,
    sync,
    tokens,
    ui,
    verdicts,
)

metadata = SQLModel.metadata
