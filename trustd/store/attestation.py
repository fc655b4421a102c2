"""Attestation evidence already used, for the attestors' replay guard."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel

from trustd.store.types import UTCDateTime


class AttestationReplay(SQLModel, table=True):
    """Evidence already used (a PSAT, an x509pop nonce), kept until it would expire anyway."""

    __tablename__ = "attestation_replay"

    digest: str = Field(primary_key=True, max_length=64)
    attestor: str = Field(max_length=32)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


_TABLE = AttestationReplay.metadata.tables["attestation_replay"]


def create_replay_claim(session: Session, digest: str, attestor: str, expires_at: datetime) -> bool:
    """Record that the evidence with `digest` was used; False if it already was.

    One `INSERT ... ON CONFLICT DO NOTHING`: of two attestations racing with the same
    evidence exactly one inserts the row (the other waits on the conflicting row and then
    sees it), so the check and the claim cannot be split by a concurrent transaction.
    """
    values = {"digest": digest, "attestor": attestor, "expires_at": expires_at}
    statement: postgresql.Insert | sqlite.Insert
    if session.get_bind().dialect.name == "postgresql":
        statement = postgresql.insert(_TABLE).values(values).on_conflict_do_nothing()
    else:
        statement = sqlite.insert(_TABLE).values(values).on_conflict_do_nothing()
    # RETURNING rather than the row count, which drivers need not report for an insert.
    inserted = session.connection().execute(statement.returning(_TABLE.c.digest)).first()
    return inserted is not None


def prune_replay_claims(session: Session, now: datetime) -> int:
    """Delete the claims of evidence that has expired anyway; returns how many went."""
    result = session.connection().execute(delete(_TABLE).where(_TABLE.c.expires_at <= now))
    return int(result.rowcount)
