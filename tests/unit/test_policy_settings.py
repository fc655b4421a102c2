"""Policy settings refuse unsafe combinations."""

from __future__ import annotations

import pytest

from trustd.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy_api_auth": "none", "listen": "0.0.0.0:8443"}, "loopback"),
        ({"policy_engine": "remote"}, "TRUSTD_POLICY_REMOTE_URL"),
        ({"policy_api_auth": "mtls"}, "TRUSTD_POLICY_API_IDENTITIES"),
        ({"policy_api_token": "changeme"}, "at least 16"),
    ],
)
def test_unsafe_policy_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(**overrides)


def test_loopback_may_skip_authentication() -> None:
    settings = load_settings(policy_api_auth="none", listen="127.0.0.1:8443")
    assert settings.policy_api_auth == "none"
    assert settings.policy_api_token is None


@pytest.mark.parametrize(
    ("header", "identity"),
    [
        (
            "By=spiffe://example.org/envoy;Hash=ab12;URI=spiffe://example.org/web",
            "spiffe://example.org/web",
        ),
        ('Hash=ab12;uri="spiffe://example.org/web"', "spiffe://example.org/web"),
        ("Hash=ab12", None),
        # Two elements: two hops, so the local proxy did not sanitise the header.
        ("URI=spiffe://example.org/a,URI=spiffe://example.org/b", None),
    ],
)
def test_forwarded_client_cert_identity(header: str, identity: str | None) -> None:
    from trustd.api.opa import _xfcc_identity

    assert _xfcc_identity(header) == identity
