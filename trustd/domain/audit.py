"""Audit events: how an audited action ended."""

from __future__ import annotations

from enum import StrEnum


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"
