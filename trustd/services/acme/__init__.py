"""The ACME server service and its wiring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from pki.acme.challenges import TargetPolicy, ValidationConfig, Validator
from pki.clock import Clock
from policy.engine import EmbeddedEngine
from trustd.bus import Bus
from trustd.errors import InvalidRequest
from trustd.redis_clients import redis_target
from trustd.services.acme.nonces import LocalNonces, NonceStore, RedisNonces
from trustd.services.acme.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from trustd.services.acme.service import AcmeService
from trustd.services.audit import AuditLog
from trustd.services.ca import CertificateAuthority
from trustd.services.issuance import Issuer
from trustd.services.revocation import Revocations
from trustd.settings import Settings
from trustd.store.db import deployment_scope

__all__ = ["AcmeService", "build_acme_service"]

POLICY_PATH = Path(__file__).resolve().parents[3] / "rego" / "acme.rego"


def policy_data(settings: Settings) -> dict[str, Any]:
    """`data.acme` for rego/acme.rego: the settings' lists, then the optional JSON file.

    Raises:
        InvalidRequest: the policy data file is unreadable or not a JSON object.
    """
    data: dict[str, Any] = {
        "dns_suffixes": [s.lower().strip(".") for s in settings.acme_dns_suffixes]
        or [settings.trust_domain],
        "ip_networks": list(settings.acme_ip_networks),
    }
    if settings.acme_policy_data is not None:
        try:
            extra = json.loads(settings.acme_policy_data.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot read ACME policy data: {exc}") from None
        if not isinstance(extra, dict):
            raise InvalidRequest("ACME policy data must be a JSON object")
        data.update(extra)
    return data


def build_acme_service(
    settings: Settings,
    engine: Engine,
    ca: CertificateAuthority,
    issuer: Issuer,
    clock: Clock,
    audit: AuditLog,
    bus: Bus,
    kek: bytes,
    revocations: Revocations,
) -> AcmeService:
    nonces: NonceStore
    limiter: RateLimiter
    target = redis_target(settings)
    if target is not None:
        client = target.client()
        scope = deployment_scope(settings.trust_domain, engine)
        nonces, limiter = RedisNonces(client, scope), RedisRateLimiter(client, scope)
    else:
        nonces, limiter = LocalNonces(), LocalRateLimiter()
    policy = EmbeddedEngine({"acme.rego": POLICY_PATH.read_text()}, {"acme": policy_data(settings)})
    validator = Validator(
        ValidationConfig(
            targets=TargetPolicy.parse(
                settings.acme_validation_allow, settings.acme_validation_deny
            ),
            http_port=settings.acme_http01_port,
            tls_port=settings.acme_tlsalpn01_port,
            resolver=settings.acme_dns_resolver,
            timeout=settings.acme_validation_timeout.total_seconds(),
        )
    )
    return AcmeService(
        settings,
        engine,
        ca,
        issuer,
        clock,
        audit,
        bus,
        nonces,
        limiter,
        policy,
        validator,
        kek,
        revocations,
    )
