"""Attested nodes: the states a node moves through (evicted nodes attest again, banned never)."""

from __future__ import annotations

from enum import StrEnum


class NodeStatus(StrEnum):
    ACTIVE = "active"
    EVICTED = "evicted"
    BANNED = "banned"
