"""Wiring: builds every service once per process from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from pki.clock import Clock, SystemClock
from trustd.bus import Bus, create_bus
from trustd.leader import create_leader
from trustd.redis_clients import redis_target
from trustd.services.acme import AcmeService, build_acme_service
from trustd.services.acme.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from trustd.services.agents import Agents
from trustd.services.audit import AuditLog, AuditTrail
from trustd.services.auth import AdminTokens
from trustd.services.authz import Authorizer
from trustd.services.ca import CertificateAuthority, key_encryption_key, open_token
from trustd.services.entries import Entries
from trustd.services.federation import Federations
from trustd.services.flows import Flows
from trustd.services.issuance import Issuer, ServingCredential
from trustd.services.nodes import Nodes, build_attestors
from trustd.services.policy import PolicyService
from trustd.services.quarantines import Quarantines
from trustd.services.revocation import Revocations
from trustd.services.rotation import RotationManager
from trustd.services.ui import UiAccounts, UiViews
from trustd.services.verdicts import Verdicts
from trustd.settings import Settings
from trustd.store.db import create_db_engine, deployment_scope


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    clock: Clock
    bus: Bus
    audit: AuditLog
    audit_trail: AuditTrail
    tokens: AdminTokens
    ca: CertificateAuthority
    issuer: Issuer
    # The server's own TLS certificate (issued only where `trustd serve` runs with TLS).
    serving: ServingCredential
    nodes: Nodes
    entries: Entries
    agents: Agents
    policy: PolicyService
    authz: Authorizer
    revocations: Revocations
    quarantines: Quarantines
    federation: Federations
    rotation: RotationManager
    acme: AcmeService
    verdicts: Verdicts
    ui: UiAccounts
    ui_views: UiViews
    flows: Flows


def build_services(settings: Settings, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    engine = create_db_engine(settings.resolved_database_url)
    audit = AuditLog(clock)
    bus = create_bus(redis_target(settings), deployment_scope(settings.trust_domain, engine))
    kek = key_encryption_key(settings, engine)
    ca = CertificateAuthority(settings, engine, clock, audit, kek, open_token(settings))
    issuer = Issuer(settings, engine, ca, clock, audit)
    nodes = Nodes(settings, engine, clock, audit, bus, issuer, build_attestors(settings, kek))
    entries = Entries(settings, engine, clock, audit, bus)
    leader = create_leader(settings, engine, clock, "ca-rotation")
    policy = PolicyService(settings, engine, clock, audit, bus)
    verdicts = Verdicts(engine, clock, policy)
    quarantines = Quarantines(engine, clock, audit, bus, verdicts)
    revocations = Revocations(settings, engine, clock, audit, ca, bus, quarantines)
    federation = Federations(settings, engine, clock, audit, bus, ca)
    agents = Agents(
        engine, clock, audit, bus, nodes, entries, issuer, ca, revocations, verdicts, federation
    )
    target = redis_target(settings)
    flow_limiter: RateLimiter = (
        RedisRateLimiter(target.client(), deployment_scope(settings.trust_domain, engine))
        if target is not None
        else LocalRateLimiter()
    )
    flows = Flows(settings, engine, clock, agents, policy, flow_limiter)
    return Services(
        settings=settings,
        engine=engine,
        clock=clock,
        bus=bus,
        audit=audit,
        audit_trail=AuditTrail(engine),
        tokens=AdminTokens(
            engine, clock, audit, settings.admin_token_ttl, settings.admin_token_max_ttl
        ),
        ca=ca,
        issuer=issuer,
        serving=ServingCredential(settings, issuer, ca, clock),
        nodes=nodes,
        entries=entries,
        agents=agents,
        policy=policy,
        authz=Authorizer(policy, engine, audit),
        revocations=revocations,
        quarantines=quarantines,
        federation=federation,
        rotation=RotationManager(
            settings,
            engine,
            clock,
            audit,
            ca,
            revocations,
            bus,
            leader,
            duties=[
                nodes.prune_replay_claims,
                quarantines.expire,
                federation.refresh_due,
                flows.prune,
            ],
        ),
        acme=build_acme_service(settings, engine, ca, issuer, clock, audit, bus, kek, revocations),
        verdicts=verdicts,
        ui=UiAccounts(settings, engine, clock, audit, kek),
        ui_views=UiViews(settings, engine, clock, policy),
        flows=flows,
    )
