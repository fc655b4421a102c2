"""dns-01 and tls-alpn-01 validation, the validation-target deny list, and when a
challenge's answer shows its validation, through the in-process app with a real DNS server,
http-01 responder and TLS responder on loopback."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.acme_support import tls_alpn_certificate
from tests.functional.acme_client import AcmeEnv, acme_env
from trustd.services.acme.authorizations import POLL_INTERVAL


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


def _answer_http01(env: AcmeEnv, name: str) -> tuple[dict[str, Any], httpx.Response]:
    env.dns.add(name, "A", "127.0.0.1")
    created = env.new_order(name)
    assert created.status_code == 201, created.text
    challenge = _challenge(env, created.json(), "http-01")
    token = challenge["token"]
    env.http01.tokens[token] = f"{token}.{env.signer.thumbprint()}"
    return created.json(), env.post(challenge["url"], {})


def test_a_prompt_validation_is_final_in_the_challenge_answer(env: AcmeEnv) -> None:
    order, answered = _answer_http01(env, "prompt.example.org")
    # The validation finished within acme_validation_wait: the answer shows it, and the
    # first poll of the authorization finds it valid, with nothing to wait for.
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "valid"
    assert "validated" in answered.json()
    assert "Retry-After" not in answered.headers
    authz = env.post(order["authorizations"][0], None)
    assert authz.json()["status"] == "valid"
    assert "Retry-After" not in authz.headers


def test_a_failed_validation_is_final_in_the_challenge_answer(env: AcmeEnv) -> None:
    env.dns.add("absent.example.org", "A", "127.0.0.1")
    created = env.new_order("absent.example.org")
    challenge = _challenge(env, created.json(), "http-01")
    # The responder has no such token: it answers 404.
    answered = env.post(challenge["url"], {})
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "invalid"
    assert answered.json()["error"]["type"] == "urn:ietf:params:acme:error:connection"
    assert env.post(created.json()["authorizations"][0], None).json()["status"] == "invalid"


def test_a_slow_validation_answers_processing_with_retry_after(
    tmp_path: Path, database_url: str
) -> None:
    with acme_env(tmp_path, database_url, acme_validation_wait=0) as env:
        assert env.new_account().status_code == 201
        env.http01.gate.clear()
        try:
            order, answered = _answer_http01(env, "slow.example.org")
            # RFC 8555 §7.5.1: still in progress, so the client is told when to poll.
            assert answered.json()["status"] == "processing"
            assert answered.headers["Retry-After"] == str(POLL_INTERVAL)
            polled = env.post(order["authorizations"][0], None)
            assert polled.json()["status"] == "pending"
            assert polled.headers["Retry-After"] == str(POLL_INTERVAL)
        finally:
            env.http01.gate.set()
        # The validation goes on after the answer and completes the authorization.
        deadline = time.monotonic() + 30
        while (
            status := env.post(order["authorizations"][0], None).json()["status"]
        ) == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == "valid"


def _tls_alpn01(env: AcmeEnv, name: str) -> tuple[httpx.Response, dict[str, Any], str]:
    """An order for *name* and its tls-alpn-01 challenge: (order response, challenge, key
    authorization)."""
    created = env.new_order(name)
    assert created.status_code == 201, created.text
    challenge = _challenge(env, created.json(), "tls-alpn-01")
    return created, challenge, f"{challenge['token']}.{env.signer.thumbprint()}"


def test_tls_alpn01_validates_against_a_tls_responder(env: AcmeEnv) -> None:
    env.dns.add("alpn.example.org", "A", "127.0.0.1")
    created, challenge, key_authz = _tls_alpn01(env, "alpn.example.org")
    env.tls_alpn.certificates["alpn.example.org"] = tls_alpn_certificate(
        x509.DNSName("alpn.example.org"), key_authz
    )
    answered = env.post(challenge["url"], {})
    assert answered.json()["status"] == "valid", answered.text
    # RFC 8737 §3: the name travels in SNI.
    assert env.tls_alpn.server_names == ["alpn.example.org"]
    assert env.post(created.headers["Location"], None).json()["status"] == "ready"


def test_tls_alpn01_for_an_address_sends_its_reverse_name(env: AcmeEnv) -> None:
    created, challenge, key_authz = _tls_alpn01(env, "127.0.0.1")
    # RFC 8738 §6: SNI is the in-addr.arpa name; the certificate names the address.
    env.tls_alpn.certificates["1.0.0.127.in-addr.arpa"] = tls_alpn_certificate(
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), key_authz
    )
    assert env.post(challenge["url"], {}).json()["status"] == "valid"
    assert env.tls_alpn.server_names == ["1.0.0.127.in-addr.arpa"]
    assert env.post(created.headers["Location"], None).json()["status"] == "ready"


@pytest.mark.parametrize("flaw", ["digest of another key authorization", "non-critical"])
def test_tls_alpn01_refuses_a_certificate_that_proves_nothing(env: AcmeEnv, flaw: str) -> None:
    env.dns.add("flawed.example.org", "A", "127.0.0.1")
    created, challenge, key_authz = _tls_alpn01(env, "flawed.example.org")
    if flaw == "non-critical":
        cert = tls_alpn_certificate(x509.DNSName("flawed.example.org"), key_authz, critical=False)
    else:
        cert = tls_alpn_certificate(x509.DNSName("flawed.example.org"), key_authz + "x")
    env.tls_alpn.certificates["flawed.example.org"] = cert
    answered = env.post(challenge["url"], {})
    assert answered.json()["status"] == "invalid"
    assert answered.json()["error"]["type"] == "urn:ietf:params:acme:error:incorrectResponse"
    assert env.post(created.headers["Location"], None).json()["status"] == "invalid"


def test_tls_alpn01_without_a_certificate_for_the_name_is_a_tls_problem(env: AcmeEnv) -> None:
    env.dns.add("nocert.example.org", "A", "127.0.0.1")
    _, challenge, _ = _tls_alpn01(env, "nocert.example.org")
    answered = env.post(challenge["url"], {})
    assert answered.json()["status"] == "invalid"
    assert answered.json()["error"]["type"] == "urn:ietf:params:acme:error:tls"
