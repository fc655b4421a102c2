"""Attestation evidence already used, for the attestors' replay guard."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from trustd.store.types import UTCDateTime


class AttestationReplay(SQLModel, table=True):
    """Evidence already used (a PSAT, an x509pop nonce), kept until it would expire anyway."""

    __tablename__ = "attestation_replay"

    digest: str = Field(primary_key=True, max_length=64)
    attestor: str = Field(max_length=32)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
