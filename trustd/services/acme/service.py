"""The ACME server (RFC 8555 with ARI, RFC 9773, and certificate profiles), one service per
resource behind one facade.

Routes hand `authenticate` the raw JWS body and the URL it was posted to (§6.2-6.5), then call
the resource's service with what it returns. The services apply the state machines of §7.1.6
through `pki.acme.states`, keep their SQL in `trustd.store.acme`, and record everything they
issue before they return it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from pki.acme.challenges import Validator
from pki.clock import Clock
from policy.engine import PolicyEngine
from trustd.bus import Bus
from trustd.domain.acme import ResourceRef
from trustd.services.acme.accounts import Accounts
from trustd.services.acme.admin import AdminListings
from trustd.services.acme.authentication import Authenticated, Authenticator
from trustd.services.acme.authorizations import Authorizations
from trustd.services.acme.certificates import Certificates
from trustd.services.acme.challenges import Challenges
from trustd.services.acme.context import AcmeContext
from trustd.services.acme.directory import Directory, build_profiles
from trustd.services.acme.eab import EabKeys
from trustd.services.acme.housekeeping import Housekeeping
from trustd.services.acme.nonces import NonceStore
from trustd.services.acme.orders import Orders
from trustd.services.acme.ratelimit import RateLimiter
from trustd.services.acme.renewal import Renewals
from trustd.services.acme.revocation import AcmeRevocations
from trustd.services.acme.urls import AcmeUrls
from trustd.services.audit import AuditLog
from trustd.services.ca import CertificateAuthority
from trustd.services.issuance import Issuer
from trustd.services.revocation import Revocations
from trustd.settings import Settings

__all__ = ["AcmeService", "Authenticated"]


class AcmeService:
    """The ACME resources, each its own service, sharing one context."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        ca: CertificateAuthority,
        issuer: Issuer,
        clock: Clock,
        audit: AuditLog,
        bus: Bus,
        nonces: NonceStore,
        limiter: RateLimiter,
        policy: PolicyEngine,
        validator: Validator,
        kek: bytes,
        revocations: Revocations,
    ) -> None:
        context = AcmeContext(settings, engine, clock, audit, AcmeUrls(settings.base_url))
        self.urls = context.urls
        self.nonces = nonces
        profiles = build_profiles(settings)
        self.directory = Directory(context, profiles)
        self.authenticator = Authenticator(context, nonces)
        self.eab_keys = EabKeys(context, kek)
        self.accounts = Accounts(context, self.eab_keys)
        self.housekeeping = Housekeeping(context)
        self.orders = Orders(context, profiles, policy, limiter, self.housekeeping)
        self.authorizations = Authorizations(context)
        self.challenges = Challenges(context, validator)
        self.certificates = Certificates(context, ca, issuer, profiles)
        self.renewals = Renewals(context)
        self.revocations = AcmeRevocations(context, revocations, bus)
        self.admin = AdminListings(context)

    def close(self) -> None:
        """Finish the work running in background threads (challenge validations)."""
        self.challenges.close()

    def authenticate(
        self,
        body: bytes,
        url: str,
        *,
        allow_jwk: bool = False,
        target: ResourceRef | None = None,
        on_nonce: Callable[[str], None] = lambda _nonce: None,
    ) -> Authenticated:
        """Verify an ACME request JWS posted to *url* (RFC 8555 §6.2-§6.5), reading the
        account with the resource *target*; see `Authenticator.authenticate`.

        Raises:
            Malformed, BadSignatureAlgorithm, BadPublicKey, Unauthorized,
            AccountDoesNotExist, BadNonce: the request does not authenticate.
        """
        return self.authenticator.authenticate(
            body, url, allow_jwk=allow_jwk, target=target, on_nonce=on_nonce
        )
