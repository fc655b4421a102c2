"""Federation relationships: fetching foreign trust domains' bundles from their bundle
endpoints (SPIFFE Federation §5, §6) and keeping the last good one.

The leader fetches each relationship's bundle when its refresh is due (`refresh_due`, one
of the rotation ticker's duties), at the bundle's refresh hint, bounded, and with backoff
and jitter after failures. A fetched bundle replaces the held one only when it passes
`pki.federation.check_update`; anything else (an unreachable, slow or redirecting endpoint,
an oversized or malformed body, a bundle for another trust domain, a sequence that goes
backwards) is recorded on the relationship's status and leaves the held bundle alone. Each
change of a held bundle advances the sync revision (agents get it on the sync channel) and
is an audit event.
"""

from __future__ import annotations

import asyncio
import builtins
import random
import ssl
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

import httpx
import structlog
from cryptography import x509
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pki.bundle import MAX_BUNDLE_BYTES, TrustBundle
from pki.ca import certificate_pem, load_pem_certificates
from pki.clock import Clock
from pki.errors import InvalidBundle, InvalidSvid, TrustdError
from pki.federation import (
    BundleEndpointProfile,
    InvalidEndpoint,
    check_update,
    endpoint_spiffe_id,
    next_refresh,
    parse_endpoint_url,
    trust_domain_of,
)
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import validate_x509_svid
from trustd import metrics
from trustd.bus import Bus
from trustd.domain.audit import AuditOutcome
from trustd.domain.federation import (
    BUNDLE_REFUSED,
    BUNDLE_UPDATED,
    CREATED,
    DELETED,
    Federation,
    FederationStatus,
)
from trustd.errors import BundleEndpointError, Conflict, InvalidRequest, NotFound
from trustd.leader import FenceCheck
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.ca import CertificateAuthority
from trustd.services.sync import announce, bump_revision
from trustd.settings import Settings
from trustd.store.db import transaction
from trustd.store.federation import (
    create_federation,
    delete_federation,
    fetch_federation,
    list_due_federations,
    list_federated_bundles,
    list_federations,
    update_federation_bundle,
    update_federation_status,
)

log = structlog.get_logger("trustd.federation")
ACTOR = "trustd"


def parse_bootstrap_bundle(document: str, trust_domain: TrustDomain) -> TrustBundle:
    """A bootstrap bundle as the operator gave it: a SPIFFE bundle (JWKS) or PEM roots.

    Raises:
        InvalidBundle: neither, or malformed.
    """
    if document.lstrip().startswith("-----BEGIN"):
        roots = load_pem_certificates(document.encode())
        return TrustBundle(trust_domain, tuple(roots), {}, 0, 0)
    return TrustBundle.from_jwks(document.encode(), trust_domain)


async def _get(
    url: str, context: ssl.SSLContext, expected: SpiffeId | None, deadline: float
) -> bytes:
    """GET *url* over TLS with *context*; with *expected*, the server's certificate must be
    an X509-SVID for that SPIFFE ID (SPIFFE Federation §5.2.2.4)."""
    # SPIFFE Federation §7.5.1: a redirect may lead to an endpoint the relationship was
    # never configured for; trustd fetches the configured URL only and refuses redirects.
    timeout = httpx.Timeout(deadline)
    async with (
        asyncio.timeout(deadline),
        httpx.AsyncClient(verify=context, follow_redirects=False, timeout=timeout) as client,
        client.stream("GET", url, headers={"Accept": "application/json"}) as response,
    ):
        if expected is not None:
            stream = response.extensions.get("network_stream")
            tls = stream.get_extra_info("ssl_object") if stream is not None else None
            der = tls.getpeercert(binary_form=True) if tls is not None else None
            if not der:
                raise BundleEndpointError("the bundle endpoint presented no certificate")
            leaf = x509.load_der_x509_certificate(der)
            try:
                presented = validate_x509_svid(leaf, expected.trust_domain)
            except InvalidSvid as exc:
                raise BundleEndpointError(
                    f"the bundle endpoint's certificate is not an X509-SVID: {exc.detail}"
                ) from None
            if presented != expected:
                raise BundleEndpointError(
                    f"the bundle endpoint presented {presented}, not {expected}"
                )
        if response.is_redirect:
            raise BundleEndpointError(
                f"the bundle endpoint redirected ({response.status_code}); redirects are refused"
            )
        if response.status_code != 200:
            raise BundleEndpointError(f"the bundle endpoint answered {response.status_code}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BUNDLE_BYTES:
            raise BundleEndpointError(f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > MAX_BUNDLE_BYTES:
                raise BundleEndpointError(f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
        return bytes(body)


def fetch_bundle_document(
    url: str, context: ssl.SSLContext, expected: SpiffeId | None, timeout: float
) -> bytes:
    """The body the bundle endpoint at *url* answers, fetched within *timeout* seconds in
    all (a slow endpoint cannot hold the caller longer).

    Raises:
        BundleEndpointError: unreachable, TLS or SPIFFE ID refused, a redirect, a status
            other than 200, too large, or too slow.
    """
    try:
        return asyncio.run(_get(url, context, expected, timeout))
    except TimeoutError:
        raise BundleEndpointError(
            f"the bundle endpoint did not answer within {timeout:g} s"
        ) from None
    except httpx.HTTPError as exc:
        raise BundleEndpointError(
            f"fetching the bundle failed: {exc or type(exc).__name__}"
        ) from None
    except ssl.SSLError as exc:
        raise BundleEndpointError(f"TLS with the bundle endpoint failed: {exc}") from None


class Federations:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Clock,
        audit: AuditLog,
        bus: Bus,
        ca: CertificateAuthority,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._bus = bus
        self._ca = ca
        self._rng = rng or random.SystemRandom()

    # -- reads -----------------------------------------------------------------------------

    def list(self) -> list[Federation]:
        """Every relationship, by trust domain."""
        with transaction(self._engine) as session:
            return list_federations(session)

    def show(self, trust_domain: str) -> Federation:
        """The relationship with *trust_domain*.

        Raises:
            InvalidTrustDomain: malformed. NotFound: no relationship.
        """
        name = trust_domain_of(trust_domain).name
        with transaction(self._engine) as session:
            found = fetch_federation(session, name)
        if found is None:
            raise NotFound(f"no federation with {name}")
        return found

    def bundles_in(
        self, session: Session, trust_domains: Sequence[str]
    ) -> builtins.list[Federation]:
        """Inside the caller's transaction, the relationships of *trust_domains* that hold a
        bundle (what agents serve to entries that federate with them)."""
        return list_federated_bundles(session, list(trust_domains))

    # -- changes ---------------------------------------------------------------------------

    def create(
        self,
        principal: Principal,
        trust_domain: str,
        bundle_endpoint_url: str,
        profile: BundleEndpointProfile,
        endpoint_id: str | None,
        bootstrap: str | None = None,
    ) -> Federation:
        """Federate with *trust_domain*: its bundle is fetched from *bundle_endpoint_url*
        from the next leader tick on. *bootstrap* (JWKS or PEM) is the bundle to start from,
        which a self-serving `https_spiffe` endpoint needs to be authenticated the first
        time (SPIFFE Federation §5.2.2.2).

        Raises:
            InvalidTrustDomain, InvalidSpiffeId, InvalidEndpoint, InvalidBundle: malformed
                parameters. InvalidRequest: the own trust domain, or a self-serving
                https_spiffe endpoint without a bootstrap bundle. Conflict: federated
                already. StoreUnavailable: nothing changed.
        """
        domain = trust_domain_of(trust_domain)
        if domain.name == self._settings.trust_domain:
            raise InvalidRequest(f"{domain.name} is this deployment's own trust domain")
        url = parse_endpoint_url(bundle_endpoint_url)
        endpoint = endpoint_spiffe_id(profile, endpoint_id)
        bundle = None
        if bootstrap is not None:
            bundle = parse_bootstrap_bundle(bootstrap, domain)
            check_update(None, bundle)
        if endpoint is not None and endpoint.trust_domain == domain and bundle is None:
            raise InvalidRequest(
                f"the bundle endpoint {endpoint} is in {domain.name} itself: give its bundle "
                "to authenticate the first fetch (SPIFFE Federation §5.2.2.2)"
            )
        now = self._clock.now()
        revision = 0
        try:
            with transaction(self._engine) as session:
                if fetch_federation(session, domain.name) is not None:
                    raise Conflict(f"{domain.name} is federated already")
                if bundle is not None:
                    revision = bump_revision(session)
                made = Federation(
                    trust_domain=domain.name,
                    bundle_endpoint_url=url,
                    profile=profile,
                    endpoint_spiffe_id=str(endpoint) if endpoint else None,
                    bundle=bundle,
                    revision=revision,
                    created_by=principal.name,
                    created_at=now,
                    status=FederationStatus(next_refresh_at=now),
                )
                create_federation(session, made)
                self._audit.record(
                    session,
                    principal.name,
                    CREATED,
                    target=domain.name,
                    details={
                        "bundle_endpoint_url": url,
                        "profile": profile.value,
                        "endpoint_spiffe_id": made.endpoint_spiffe_id,
                        "bootstrap_sequence": bundle.sequence if bundle else None,
                        "revision": revision or None,
                    },
                )
        except IntegrityError:
            raise Conflict(f"{domain.name} was federated meanwhile") from None
        if revision:
            announce(self._bus, revision)
        return made

    def delete(self, principal: Principal, trust_domain: str) -> Federation:
        """End the relationship with *trust_domain*: agents stop serving its bundle.

        Raises:
            InvalidTrustDomain: malformed. NotFound: no relationship.
        """
        name = trust_domain_of(trust_domain).name
        with transaction(self._engine) as session:
            held = fetch_federation(session, name, for_update=True)
            if held is None or not delete_federation(session, name):
                raise NotFound(f"no federation with {name}")
            revision = bump_revision(session)
            self._audit.record(
                session, principal.name, DELETED, target=name, details={"revision": revision}
            )
        announce(self._bus, revision)
        return held

    def refresh(self, principal: Principal, trust_domain: str) -> Federation:
        """Fetch *trust_domain*'s bundle now.

        Raises:
            NotFound: no relationship. BundleEndpointError: the fetch failed or the bundle
                was refused (recorded on the status; the held bundle stays).
        """
        federation = self.show(trust_domain)
        updated, error = self._refresh(federation, principal.name)
        if error is not None:
            raise BundleEndpointError(f"{federation.trust_domain}: {error}")
        return updated

    def refresh_due(self, fenced: FenceCheck | None = None) -> int:
        """Fetch every relationship whose refresh is due (the leader's duty, each outcome
        written *fenced* by its epoch); returns how many were fetched.

        Raises:
            LostLeadership: a successor leads; the outcome of the fetch at hand was not
                written.
        """
        with transaction(self._engine) as session:
            due = list_due_federations(session, self._clock.now())
        for name in due:
            with transaction(self._engine) as session:
                federation = fetch_federation(session, name)
            if federation is not None:
                self._refresh(federation, ACTOR, fenced)
        return len(due)

    # -- fetching --------------------------------------------------------------------------

    def _endpoint_roots(self, federation: Federation) -> builtins.list[x509.Certificate]:
        """The roots that authenticate an https_spiffe endpoint: those of the trust domain
        of its SPIFFE ID (SPIFFE Federation §5.2.2.4): the held bundle for a self-serving
        endpoint, else this deployment's own bundle or another relationship's."""
        assert federation.endpoint_spiffe_id is not None
        domain = SpiffeId.parse(federation.endpoint_spiffe_id).trust_domain.name
        if domain == self._settings.trust_domain:
            bundle: TrustBundle | None = self._ca.state.bundle
        elif domain == federation.trust_domain:
            bundle = federation.bundle
        else:
            with transaction(self._engine) as session:
                other = fetch_federation(session, domain)
            bundle = other.bundle if other is not None else None
        if bundle is None or not bundle.x509_authorities:
            raise BundleEndpointError(
                f"no bundle of {domain} is held to authenticate the bundle endpoint"
            )
        return list(bundle.x509_authorities)

    def _context(self, federation: Federation) -> ssl.SSLContext:
        if federation.profile is BundleEndpointProfile.HTTPS_SPIFFE:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            # SPIFFE Federation §5.2.2.4: the server is authenticated by its SPIFFE ID
            # (checked on the presented X509-SVID), not by a DNS name.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_REQUIRED
            roots = self._endpoint_roots(federation)
            context.load_verify_locations(cadata="".join(certificate_pem(c) for c in roots))
            return context
        # SPIFFE Federation §5.2.1.4: RFC 6125 validation against locally trusted roots.
        web_roots = self._settings.federation_web_ca_bundle
        if web_roots is not None:
            return ssl.create_default_context(cafile=str(web_roots))
        return ssl.create_default_context()

    def _fetch(self, federation: Federation) -> TrustBundle:
        """Fetch and parse the bundle, and check it may replace the held one.

        Raises:
            BundleEndpointError: the fetch failed or the bundle is refused.
        """
        expected = (
            SpiffeId.parse(federation.endpoint_spiffe_id) if federation.endpoint_spiffe_id else None
        )
        timeout = self._settings.federation_fetch_timeout.total_seconds()
        try:
            context = self._context(federation)
        except (ssl.SSLError, OSError) as exc:
            raise BundleEndpointError(f"cannot set up TLS for the bundle endpoint: {exc}") from None
        body = fetch_bundle_document(federation.bundle_endpoint_url, context, expected, timeout)
        try:
            fetched = TrustBundle.from_jwks(body, TrustDomain.parse(federation.trust_domain))
            check_update(federation.bundle, fetched)
        except (InvalidBundle, InvalidEndpoint) as exc:
            raise BundleEndpointError(f"bundle refused: {exc.detail}") from None
        return fetched

    def _refresh(
        self, federation: Federation, actor: str, fenced: FenceCheck | None = None
    ) -> tuple[Federation, str | None]:
        """Fetch, then record the outcome (*fenced* when the leader's duty records it);
        returns the relationship as now held and the error (None: success)."""
        name = federation.trust_domain
        try:
            fetched: TrustBundle | None = self._fetch(federation)
            error = None
        except BundleEndpointError as exc:
            fetched, error = None, exc.detail
        except TrustdError as exc:
            fetched, error = None, exc.detail
        now = self._clock.now()
        revision = 0
        with transaction(self._engine) as session:
            if fenced is not None:
                fenced(session)
            held = fetch_federation(session, name, for_update=True)
            if held is None:
                return federation, error or "the relationship was deleted meanwhile"
            status = held.status
            changed = False
            if fetched is not None:
                try:
                    # Checked again under the row lock: another fetch may have won.
                    changed = check_update(held.bundle, fetched)
                except InvalidBundle as exc:
                    error = f"bundle refused: {exc.detail}"
            if error is None:
                assert fetched is not None
                hint = fetched.refresh_hint
                status = FederationStatus(
                    last_success_at=now,
                    last_error=None,
                    last_error_at=None,
                    failures=0,
                    next_refresh_at=self._next(now, hint, 0),
                )
                if changed:
                    revision = bump_revision(session)
                    update_federation_bundle(session, name, fetched, revision)
                    self._audit.record(
                        session,
                        actor,
                        BUNDLE_UPDATED,
                        target=name,
                        details={
                            "sequence": fetched.sequence,
                            "previous_sequence": held.bundle.sequence if held.bundle else None,
                            "x509_authorities": len(fetched.x509_authorities),
                            "jwt_authorities": len(fetched.jwt_authorities),
                            "revision": revision,
                        },
                    )
            else:
                failures = status.failures + 1
                hint = held.bundle.refresh_hint if held.bundle else 0
                status = replace(
                    status,
                    last_error=error,
                    last_error_at=now,
                    failures=failures,
                    next_refresh_at=self._next(now, hint, failures),
                )
                # One audit event per streak of failures (the status keeps the latest).
                if failures == 1:
                    self._audit.record(
                        session,
                        actor,
                        BUNDLE_REFUSED,
                        target=name,
                        outcome=AuditOutcome.FAILURE,
                        details={"error": error},
                    )
            update_federation_status(session, name, status)
            now_held = fetch_federation(session, name)
        outcome = "failed" if error else ("updated" if revision else "unchanged")
        metrics.FEDERATION_REFRESHES.labels(trust_domain=name, outcome=outcome).inc()
        if error:
            log.warning("federated_bundle_refused", trust_domain=name, error=error)
        if revision:
            log.info("federated_bundle_updated", trust_domain=name, revision=revision)
            announce(self._bus, revision)
        assert now_held is not None
        return now_held, error

    def _next(self, now: datetime, hint: int, failures: int) -> datetime:
        s = self._settings
        return next_refresh(
            now, hint, failures, s.federation_refresh_min, s.federation_refresh_max, self._rng
        )
