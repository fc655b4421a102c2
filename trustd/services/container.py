"""Wiring: builds every service once per process from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from pki.clock import Clock, SystemClock
from trustd.bus import Bus, create_bus
from trustd.services.acme import AcmeService, build_acme_service
from trustd.services.audit import AuditLog
from trustd.services.auth import AdminTokens
from trustd.services.ca import CertificateAuthority
from trustd.services.issuance import Issuer
from trustd.settings import Settings
from trustd.store.db import create_db_engine


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    clock: Clock
    bus: Bus
    audit: AuditLog
    tokens: AdminTokens
    ca: CertificateAuthority
    issuer: Issuer
    acme: AcmeService


def build_services(settings: Settings, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    engine = create_db_engine(settings.resolved_database_url)
    audit = AuditLog(clock)
    ca = CertificateAuthority(settings, engine, clock, audit)
    bus = create_bus(settings.redis_url)
    return Services(
        settings=settings,
        engine=engine,
        clock=clock,
        bus=bus,
        audit=audit,
        tokens=AdminTokens(engine, clock, audit),
        ca=ca,
        issuer=Issuer(settings, engine, ca, clock, audit),
        acme=build_acme_service(settings, engine, ca, clock, audit, bus),
    )
