"""What every ACME resource service shares: settings, the database, the clock, the audit log
and the URLs it hands out."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import Engine

from pki.clock import Clock
from trustd.services.acme.urls import AcmeUrls
from trustd.services.audit import AuditLog
from trustd.settings import Settings


@dataclass(frozen=True)
class AcmeContext:
    settings: Settings
    engine: Engine
    clock: Clock
    audit: AuditLog
    urls: AcmeUrls


def new_id() -> str:
    """A fresh resource id: 96 random bits, URL-safe (it becomes part of resource URLs)."""
    return secrets.token_urlsafe(12)


def actor(account_id: str) -> str:
    """The audit actor of a request signed by the account *account_id*."""
    return f"acme:{account_id}"
