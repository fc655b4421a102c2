"""Fencing tokens of the singleton loops' leader."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, SQLModel

from trustd.store.types import UTCDateTime


class LeaderFence(SQLModel, table=True):
    """Fencing token of a singleton loop: a leader whose lock expired (a long GC pause, a
    partition) holds a smaller epoch than its successor and its writes are refused.
    """

    __tablename__ = "leader_fences"

    name: str = Field(primary_key=True, max_length=64)
    epoch: int = Field(sa_column=Column(BigInteger, nullable=False))
    holder: str = Field(max_length=128)
    updated_at: datetime = Field(sa_type=UTCDateTime)
