"""pki.federation: endpoint parameters, which fetched bundle may replace the held one, and
the refresh schedule."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from pki.bundle import TrustBundle
from pki.errors import InvalidBundle
from pki.federation import (
    DEFAULT_REFRESH,
    BundleEndpointProfile,
    InvalidEndpoint,
    backoff,
    check_update,
    endpoint_spiffe_id,
    next_refresh,
    parse_endpoint_url,
    refresh_interval,
)
from pki.spiffe_id import SpiffeId, TrustDomain
from tests.unit.pki_helpers import T0, TestCA

B = TrustDomain.parse("b.example")
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)


def bundle(ca: TestCA, sequence: int, domain: TrustDomain = B) -> TrustBundle:
    return TrustBundle(domain, (ca.root,), {}, sequence, 60)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://b.example/bundle", "must use https"),
        ("https://user:pw@b.example/bundle", "userinfo"),
        ("https:///bundle", "no host"),
        ("https://b.example/bundle#x", "fragment"),
        ("https://b.example:99999/", "malformed"),
    ],
)
def test_endpoint_urls_follow_the_profiles(url: str, reason: str) -> None:
    with pytest.raises(InvalidEndpoint, match=reason):
        parse_endpoint_url(url)


def test_endpoint_url_accepted() -> None:
    assert parse_endpoint_url("https://b.example:8443/v1/bundle") == (
        "https://b.example:8443/v1/bundle"
    )


def test_endpoint_spiffe_id_belongs_to_https_spiffe_only() -> None:
    web, spiffe = BundleEndpointProfile.HTTPS_WEB, BundleEndpointProfile.HTTPS_SPIFFE
    assert endpoint_spiffe_id(web, None) is None
    with pytest.raises(InvalidEndpoint, match="takes no endpoint"):
        endpoint_spiffe_id(web, "spiffe://b.example/server")
    with pytest.raises(InvalidEndpoint, match="needs the endpoint"):
        endpoint_spiffe_id(spiffe, None)
    assert endpoint_spiffe_id(spiffe, "spiffe://b.example/server") == SpiffeId.parse(
        "spiffe://b.example/server"
    )


def test_update_rules() -> None:
    ca = TestCA("b.example")
    held = bundle(ca, 5)
    assert check_update(None, held)
    assert not check_update(held, bundle(ca, 5))
    assert check_update(held, bundle(ca, 6))
    with pytest.raises(InvalidBundle, match="went backwards: 4 < 5"):
        check_update(held, bundle(ca, 4))
    other = TestCA("b.example")
    with pytest.raises(InvalidBundle, match="keys changed but spiffe_sequence stayed at 5"):
        check_update(held, bundle(other, 5))
    with pytest.raises(InvalidBundle, match=r"no X\.509 authority"):
        check_update(held, TrustBundle(B, (), {}, 7, 0))


def test_a_bundle_made_for_another_trust_domain_is_refused() -> None:
    # The root names spiffe://a.example: whoever serves it as b.example's bundle lies.
    foreign = TestCA("a.example")
    with pytest.raises(InvalidBundle, match=r"for trust domain a\.example, not b\.example"):
        check_update(None, bundle(foreign, 1))


def test_refresh_interval_is_the_hint_bounded() -> None:
    assert refresh_interval(0, SECOND, HOUR) == DEFAULT_REFRESH
    assert refresh_interval(30, SECOND, HOUR) == timedelta(seconds=30)
    assert refresh_interval(0, timedelta(minutes=10), HOUR) == timedelta(minutes=10)
    assert refresh_interval(1, 10 * SECOND, HOUR) == 10 * SECOND
    assert refresh_interval(10**9, SECOND, HOUR) == HOUR


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for failures in range(1, 40):
        base = min(SECOND * 2 ** (failures - 1), timedelta(minutes=5))
        wait = backoff(failures, SECOND, timedelta(minutes=5), rng)
        assert base / 2 <= wait <= base
    waits = {backoff(3, SECOND, HOUR, rng) for _ in range(20)}
    assert len(waits) > 1  # jittered


def test_next_refresh_after_failure_never_waits_past_the_hint() -> None:
    rng = random.Random(1)
    assert next_refresh(T0, 60, 0, SECOND, HOUR, rng) == T0 + timedelta(seconds=60)
    assert next_refresh(T0, 60, 20, SECOND, HOUR, rng) <= T0 + timedelta(seconds=60)
    assert next_refresh(T0, 60, 1, SECOND, HOUR, rng) <= T0 + SECOND
