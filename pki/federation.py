"""SPIFFE Federation rules: bundle endpoint parameters, which fetched bundle may replace the
one held, and when to fetch again. Pure: no I/O, time and randomness are arguments.
"""

from __future__ import annotations

import random
import urllib.parse
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509

from pki.bundle import TrustBundle
from pki.ca import spiffe_uris
from pki.errors import InvalidBundle, TrustdError, echo
from pki.spiffe_id import SpiffeId, TrustDomain

# What a refresh waits for when the bundle gives no hint (Trust Domain and Bundle §4.1.2:
# spiffe_refresh_hint SHOULD be set; when it is not, the consumer picks).
DEFAULT_REFRESH = timedelta(minutes=5)
MAX_URL = 2048


class BundleEndpointProfile(StrEnum):
    """SPIFFE Federation §5.2: how a bundle endpoint is reached and authenticated."""

    HTTPS_WEB = "https_web"
    HTTPS_SPIFFE = "https_spiffe"


class InvalidEndpoint(TrustdError):
    title = "Invalid bundle endpoint"


def parse_endpoint_url(url: str) -> str:
    """The bundle endpoint URL, checked as SPIFFE Federation §5.2.1.1 and §5.2.2.1 require.

    Raises:
        InvalidEndpoint: not https, userinfo in the authority, no host, or too long.
    """
    if len(url) > MAX_URL:
        raise InvalidEndpoint(f"bundle endpoint URL is longer than {MAX_URL} characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidEndpoint(f"bundle endpoint URL {echo(url)} is malformed: {exc}") from None
    # SPIFFE Federation §5.2.1.1/§5.2.2.1: scheme MUST be https, no userinfo.
    if parts.scheme != "https":
        raise InvalidEndpoint(f"bundle endpoint URL {echo(url)} must use https")
    if "@" in parts.netloc:
        raise InvalidEndpoint(f"bundle endpoint URL {echo(url)} must not carry userinfo")
    if not parts.hostname:
        raise InvalidEndpoint(f"bundle endpoint URL {echo(url)} has no host")
    if parts.fragment:
        raise InvalidEndpoint(f"bundle endpoint URL {echo(url)} must not carry a fragment")
    del port
    return url


def endpoint_spiffe_id(profile: BundleEndpointProfile, spiffe_id: str | None) -> SpiffeId | None:
    """The endpoint's SPIFFE ID, required by `https_spiffe` (SPIFFE Federation §5.2.2.2) and
    meaningless for `https_web` (§5.2.1.2: no parameters beyond the common ones).

    Raises:
        InvalidEndpoint: missing for https_spiffe, given for https_web.
        InvalidSpiffeId: malformed.
    """
    if profile is BundleEndpointProfile.HTTPS_WEB:
        if spiffe_id:
            raise InvalidEndpoint("https_web takes no endpoint SPIFFE ID")
        return None
    if not spiffe_id:
        raise InvalidEndpoint("https_spiffe needs the endpoint's SPIFFE ID")
    return SpiffeId.parse(spiffe_id)


def check_authorities(bundle: TrustBundle) -> None:
    """Refuse a bundle whose X.509 authorities name another trust domain: a CA certificate
    carrying a SPIFFE ID (X509-SVID §3.2: the trust domain's ID) or URI name constraints
    for a different trust domain was made for that domain, not for this one.

    Raises:
        InvalidBundle: an authority names another trust domain.
    """
    own = bundle.trust_domain
    for cert in bundle.x509_authorities:
        for uri in spiffe_uris(cert):
            try:
                named = SpiffeId.parse(uri).trust_domain
            except TrustdError:
                raise InvalidBundle(
                    f"authority carries a malformed SPIFFE ID {echo(uri)}"
                ) from None
            if named != own:
                raise InvalidBundle(f"authority is for trust domain {named.name}, not {own.name}")
        try:
            nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            continue
        permitted = [
            name.value
            for name in nc.permitted_subtrees or ()
            if isinstance(name, x509.UniformResourceIdentifier)
        ]
        if permitted and own.name not in permitted:
            raise InvalidBundle(
                f"authority is constrained to {', '.join(permitted)}, not {own.name}"
            )


def check_update(held: TrustBundle | None, fetched: TrustBundle) -> bool:
    """Whether *fetched* replaces *held* (False: the same bundle again).

    Raises:
        InvalidBundle: *fetched* is for another trust domain, has no X.509 authority,
            its sequence is lower than the held one's (Trust Domain and Bundle §4.1.1: the
            sequence is increased on every change, so a lower one is an older bundle
            replayed), or it changes the keys without changing the sequence.
    """
    if not fetched.x509_authorities:
        raise InvalidBundle("bundle has no X.509 authority")
    check_authorities(fetched)
    if held is None:
        return True
    if fetched.trust_domain != held.trust_domain:
        raise InvalidBundle(
            f"bundle is for {fetched.trust_domain.name}, not {held.trust_domain.name}"
        )
    if fetched.sequence < held.sequence:
        raise InvalidBundle(f"spiffe_sequence went backwards: {fetched.sequence} < {held.sequence}")
    same = fetched.to_jwks()["keys"] == held.to_jwks()["keys"]
    if fetched.sequence == held.sequence and not same and fetched.sequence != 0:
        raise InvalidBundle(f"keys changed but spiffe_sequence stayed at {fetched.sequence}")
    return not same or (fetched.sequence, fetched.refresh_hint) != (
        held.sequence,
        held.refresh_hint,
    )


def refresh_interval(hint: int, minimum: timedelta, maximum: timedelta) -> timedelta:
    """The wait before the next fetch after a success: the bundle's refresh hint (Trust
    Domain and Bundle §4.1.2), or `DEFAULT_REFRESH` without one, bounded to
    [*minimum*, *maximum*] so that no endpoint makes trustd hammer it or forget it."""
    wanted = timedelta(seconds=hint) if hint > 0 else DEFAULT_REFRESH
    return min(max(wanted, minimum), maximum)


def backoff(failures: int, minimum: timedelta, maximum: timedelta, rng: random.Random) -> timedelta:
    """The wait before retrying after *failures* consecutive failures: doubling from
    *minimum*, capped at *maximum*, with "equal jitter" (half fixed, half random) so that
    many relationships failing together do not retry together."""
    base: timedelta = min(minimum * (2 ** min(max(failures - 1, 0), 30)), maximum)
    return base / 2 + base / 2 * rng.random()


def next_refresh(
    now: datetime,
    hint: int,
    failures: int,
    minimum: timedelta,
    maximum: timedelta,
    rng: random.Random,
) -> datetime:
    """When to fetch next: at the hint after a success, with backoff after a failure (never
    later than the hint would say)."""
    interval = refresh_interval(hint, minimum, maximum)
    if failures:
        interval = min(interval, backoff(failures, minimum, maximum, rng))
    return now + interval


def trust_domain_of(value: str) -> TrustDomain:
    """A trust domain name (or its `spiffe://` ID) in canonical form.

    Raises:
        InvalidTrustDomain: malformed.
    """
    return TrustDomain.parse(value)
