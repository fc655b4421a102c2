"""dns-01 validation and the validation-target deny list, through the in-process app with a
real DNS server on loopback."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.acme_client import AcmeEnv, acme_env


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> Iterator[AcmeEnv]:
    with acme_env(tmp_path, database_url) as environment:
        created = environment.new_account()
        assert created.status_code == 201, created.text
        yield environment


def _challenge(env: AcmeEnv, order: dict[str, Any], kind: str) -> dict[str, Any]:
    authz = env.post(order["authorizations"][0], None).json()
    return dict(next(c for c in authz["challenges"] if c["type"] == kind))


def _dns01_value(env: AcmeEnv, token: str) -> str:
    # RFC 8555 §8.4: the TXT record holds base64url(SHA-256(key authorization)).
    digest = hashlib.sha256(f"{token}.{env.signer.thumbprint()}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_dns01_validates_with_the_right_txt_record(env: AcmeEnv) -> None:
    created = env.new_order("dns.example.org")
    assert created.status_code == 201, created.text
    challenge = _challenge(env, created.json(), "dns-01")
    env.dns.add(
        "_acme-challenge.dns.example.org", "TXT", f'"{_dns01_value(env, challenge["token"])}"'
    )
    assert env.post(challenge["url"], {}).status_code == 200
    order = env.post(created.headers["Location"], None).json()
    assert order["status"] == "ready", order


def test_dns01_with_a_wrong_record_invalidates_the_order(env: AcmeEnv) -> None:
    created = env.new_order("wrong.example.org")
    challenge = _challenge(env, created.json(), "dns-01")
    env.dns.add("_acme-challenge.wrong.example.org", "TXT", '"not-the-digest"')
    env.post(challenge["url"], {})
    authz = env.post(created.json()["authorizations"][0], None).json()
    assert authz["status"] == "invalid"
    failed = next(c for c in authz["challenges"] if c["type"] == "dns-01")
    # RFC 8555 §6.7: the response did not match what the challenge requires.
    assert failed["error"]["type"] == "urn:ietf:params:acme:error:incorrectResponse"
    order = env.post(created.headers["Location"], None).json()
    assert order["status"] == "invalid"


def test_http01_never_connects_to_denied_networks(env: AcmeEnv) -> None:
    # A name that resolves to the cloud metadata address: validation must refuse to connect.
    env.dns.add("metadata.example.org", "A", "169.254.169.254")
    created = env.new_order("metadata.example.org")
    challenge = _challenge(env, created.json(), "http-01")
    token = challenge["token"]
    env.http01.tokens[token] = f"{token}.{env.signer.thumbprint()}"
    env.post(challenge["url"], {})
    authz = env.post(created.json()["authorizations"][0], None).json()
    assert authz["status"] == "invalid"
    failed = next(c for c in authz["challenges"] if c["type"] == "http-01")
    assert "may not reach" in failed["error"]["detail"]
    assert not env.http01.requests
