"""CA key rotation: the key slots the rotation manager moves through their states, and the
outcome of one manual change. Values only; no I/O here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyChange:
    """The outcome of one manual key change: the key's new status and the bundle sequence
    that announces it."""

    kid: str
    kind: str
    status: str
    sequence: int
