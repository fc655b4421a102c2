"""The negative suite (RFC 8555 §6): every refused request is an RFC 8555 problem document
with the right type and a fresh nonce, and changes nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import func, select

from pki.acme.jws import jwk_of
from tests.acme_support import Signer, b64, forge
from tests.functional.acme_client import AcmeEnv, acme_env, csr_b64, problem
from trustd.store.acme import AcmeOrder
from trustd.store.certificates import IssuedCertificate
from trustd.store.db import transaction


@pytest.fixture(params=["in-process", "redis"])
def env(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[AcmeEnv]:
    # Nonces and rate limits both ways: in this process, and shared through Redis.
    redis_url = "redis://127.0.0.1:6379/0" if request.param == "redis" else None
    with acme_env(tmp_path, database_url, redis_url=redis_url) as environment:
        environment.dns.add("svc.example.org", "A", "127.0.0.1")
        assert environment.new_account().status_code == 201
        yield environment


def _count(env: AcmeEnv, model: type[AcmeOrder] | type[IssuedCertificate]) -> int:
    with transaction(env.services.engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def test_replayed_nonce_is_refused_with_a_fresh_one(env: AcmeEnv) -> None:
    url = env.url("/acme/new-order")
    body = env.signer.sign(
        url, {"identifiers": [{"type": "dns", "value": "svc.example.org"}]}, env.nonce()
    )
    assert env.send(url, body).status_code == 201
    replay = env.send(url, body)
    problem(replay, "badNonce", 400)
    # The fresh nonce in the error works (clients retry with it, §6.5).
    retry = env.post(
        url,
        {"identifiers": [{"type": "dns", "value": "svc.example.org"}]},
        nonce=replay.headers["Replay-Nonce"],
    )
    assert retry.status_code == 201
    assert _count(env, AcmeOrder) == 2


def test_unknown_nonce_is_refused(env: AcmeEnv) -> None:
    problem(
        env.post(env.url("/acme/new-order"), {"identifiers": []}, nonce="AAAAAAAAAAAAAAAAAAAAAA"),
        "badNonce",
        400,
    )


def test_wrong_url_is_unauthorized(env: AcmeEnv) -> None:
    body = env.signer.sign(env.url("/acme/new-account"), {"identifiers": []}, env.nonce())
    problem(env.send(env.url("/acme/new-order"), body), "unauthorized", 403)
    assert _count(env, AcmeOrder) == 0


def _es256(key: ec.EllipticCurvePrivateKey, header: dict[str, object], payload: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    protected = b64(json.dumps(header).encode())
    der = key.sign(f"{protected}.{b64(payload)}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return json.dumps(
        {"protected": protected, "payload": b64(payload), "signature": b64(signature)}
    ).encode()


def test_both_jwk_and_kid_is_malformed(env: AcmeEnv) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    url = env.url("/acme/new-order")
    header = {
        "alg": "ES256",
        "nonce": env.nonce(),
        "url": url,
        "kid": env.signer.kid,
        "jwk": jwk_of(key.public_key()),
    }
    problem(env.send(url, _es256(key, header, b'{"identifiers": []}')), "malformed", 400)


def test_jwk_where_kid_is_required_is_malformed(env: AcmeEnv) -> None:
    url = env.url("/acme/new-order")
    body = env.signer.sign(url, {"identifiers": []}, env.nonce(), use_jwk=True)
    problem(env.send(url, body), "malformed", 400)


def test_hs256_with_an_embedded_key_is_refused(env: AcmeEnv) -> None:
    # The attack acme.jws itself would accept: a MAC keyed by a key the request carries.
    secret = b"k" * 32
    url = env.url("/acme/new-account")
    header = {
        "alg": "HS256",
        "nonce": env.nonce(),
        "url": url,
        "jwk": {"kty": "oct", "k": b64(secret)},
    }
    protected = b64(json.dumps(header).encode())
    payload = b64(b"{}")
    mac = hmac.new(secret, f"{protected}.{payload}".encode(), hashlib.sha256).digest()
    body = json.dumps({"protected": protected, "payload": payload, "signature": b64(mac)})
    document = problem(env.send(url, body.encode()), "badSignatureAlgorithm", 400)
    assert document["algorithms"] == ["ES256", "ES384", "RS256", "PS256", "EdDSA"]


def test_alg_none_is_refused(env: AcmeEnv) -> None:
    url = env.url("/acme/new-account")
    key = ec.generate_private_key(ec.SECP256R1())
    header = {"alg": "none", "nonce": env.nonce(), "url": url, "jwk": jwk_of(key.public_key())}
    problem(env.send(url, forge(header, b"{}", b"")), "badSignatureAlgorithm", 400)


def test_bad_signature_is_malformed(env: AcmeEnv) -> None:
    url = env.url("/acme/new-order")
    good = json.loads(env.signer.sign(url, {"identifiers": []}, env.nonce()))
    good["signature"] = b64(b"\x01" * 64)
    problem(env.send(url, json.dumps(good).encode()), "malformed", 400)


def test_wrong_content_type_is_415(env: AcmeEnv) -> None:
    url = env.url("/acme/new-order")
    body = env.signer.sign(url, {"identifiers": []}, env.nonce())
    problem(env.send(url, body, content_type="application/json"), "malformed", 415)


def test_unknown_account_kid(env: AcmeEnv) -> None:
    stranger = Signer()
    stranger.kid = env.url("/acme/account/nope")
    problem(
        env.post(env.url("/acme/new-order"), {"identifiers": []}, signer=stranger),
        "accountDoesNotExist",
        400,
    )
    found = env.new_account(signer=Signer(), onlyReturnExisting=True)
    problem(found, "accountDoesNotExist", 400)


def test_finalize_before_ready_is_order_not_ready(env: AcmeEnv) -> None:
    order = env.new_order("svc.example.org").json()
    key = ec.generate_private_key(ec.SECP256R1())
    response = env.post(order["finalize"], {"csr": csr_b64(key, ["svc.example.org"])})
    problem(response, "orderNotReady", 403)
    assert _count(env, IssuedCertificate) == 0
    # The nonce of an error raised past authentication is as good as any (§6.5).
    again = env.post(
        env.url("/acme/new-order"), {"identifiers": []}, nonce=response.headers["Replay-Nonce"]
    )
    problem(again, "malformed", 400)


def test_csr_with_extra_names_is_refused_and_nothing_is_issued(env: AcmeEnv) -> None:
    created = env.new_order("svc.example.org")
    env.authorize_http01(created.json())
    order = env.post(created.headers["Location"], None).json()
    assert order["status"] == "ready"
    key = ec.generate_private_key(ec.SECP256R1())
    extra = env.post(
        order["finalize"], {"csr": csr_b64(key, ["svc.example.org", "db.example.org"])}
    )
    document = problem(extra, "badCSR", 400)
    assert "db.example.org" in document["detail"]
    # Using the account key as the certificate key is refused too (RFC 8555 §11.1).
    own = env.post(
        order["finalize"], {"csr": csr_b64(env.signer.key.key._wrapped, ["svc.example.org"])}
    )
    problem(own, "badCSR", 400)
    # The order is still ready and nothing was issued; a correct CSR then succeeds.
    assert env.post(created.headers["Location"], None).json()["status"] == "ready"
    assert _count(env, IssuedCertificate) == 0
    good = env.post(order["finalize"], {"csr": csr_b64(key, ["svc.example.org"])})
    assert good.json()["status"] == "valid"
    problem(
        env.post(order["finalize"], {"csr": csr_b64(key, ["svc.example.org"])}),
        "orderNotReady",
        403,
    )
    assert _count(env, IssuedCertificate) == 1


def test_weak_csr_key_is_refused(env: AcmeEnv) -> None:
    created = env.new_order("svc.example.org")
    env.authorize_http01(created.json())
    order = env.post(created.headers["Location"], None).json()
    weak = ec.generate_private_key(ec.SECP256K1())
    problem(env.post(order["finalize"], {"csr": csr_b64(weak, ["svc.example.org"])}), "badCSR", 400)
    assert _count(env, IssuedCertificate) == 0


def test_policy_rejects_names_outside_the_allowed_suffixes(env: AcmeEnv) -> None:
    response = env.new_order("svc.example.org", "evil.com", "10.1.2.3")
    document = problem(response, "rejectedIdentifier", 400)
    rejected = {s["identifier"]["value"] for s in document["subproblems"]}
    assert rejected == {"evil.com", "10.1.2.3"}
    assert _count(env, AcmeOrder) == 0


def test_bad_identifiers(env: AcmeEnv) -> None:
    problem(env.new_order("-bad-.example.org"), "rejectedIdentifier", 400)
    problem(
        env.post(
            env.url("/acme/new-order"),
            {"identifiers": [{"type": "email", "value": "a@example.org"}]},
        ),
        "unsupportedIdentifier",
        400,
    )
    problem(env.post(env.url("/acme/new-order"), {"identifiers": []}), "malformed", 400)
    problem(env.new_order("svc.example.org", profile="nope"), "invalidProfile", 400)
    assert _count(env, AcmeOrder) == 0


def test_other_accounts_objects_are_invisible(env: AcmeEnv) -> None:
    order = env.new_order("svc.example.org")
    other = Signer()
    assert env.new_account(signer=other).status_code == 201
    problem(env.post(order.headers["Location"], None, signer=other), "malformed", 404)
    problem(env.post(order.json()["authorizations"][0], None, signer=other), "malformed", 404)
    problem(env.post(env.signer.kid or "", None, signer=other), "unauthorized", 403)
