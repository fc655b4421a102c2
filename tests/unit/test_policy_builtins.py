"""Builtins added to the embedded engine, checked against OPA's documented behaviour."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from pki.ca import certificate_pem
from pki.keys import KeyType, public_key_pem
from policy.engine import EmbeddedEngine
from policy.errors import PolicyEvaluationError
from tests.unit.pki_helpers import T0, TestCA, cached_key

MODULE = """
package b
import rego.v1

decoded := io.jwt.decode(input.token)
es256 := io.jwt.verify_es256(input.token, input.key)
rs256 := io.jwt.verify_rs256(input.token, input.key)
ps256 := io.jwt.verify_ps256(input.token, input.key)
eddsa := io.jwt.verify_eddsa(input.token, input.key)
decode_verify := io.jwt.decode_verify(input.token, input.constraints)
certs := crypto.x509.parse_certificates(input.certs)
chain := crypto.x509.parse_and_verify_certificates(input.certs)
sha := crypto.sha256("abc")
"""


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine({"b.rego": MODULE})


def ask(engine: EmbeddedEngine, rule: str, **input: Any) -> Any:
    return engine.query(f"data.b.{rule}", json.dumps(input)).value


def token(key_type: KeyType, alg: str, **claims: Any) -> tuple[str, str]:
    key = cached_key(key_type)
    payload = {"sub": "spiffe://example.org/web", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, key, algorithm=alg), public_key_pem(key.public_key())


@pytest.mark.parametrize(
    ("key_type", "alg", "rule"),
    [
        (KeyType.EC_P256, "ES256", "es256"),
        (KeyType.RSA_2048, "RS256", "rs256"),
        (KeyType.RSA_2048, "PS256", "ps256"),
        (KeyType.ED25519, "EdDSA", "eddsa"),
    ],
)
def test_verify_accepts_the_right_key_only(
    engine: EmbeddedEngine, key_type: KeyType, alg: str, rule: str
) -> None:
    signed, pem = token(key_type, alg)
    assert ask(engine, rule, token=signed, key=pem) is True
    other = public_key_pem(cached_key(key_type, slot=1).public_key())
    assert ask(engine, rule, token=signed, key=other) is False
    # OPA: verify_es256 with an RS256 token is false, not an error.
    assert ask(engine, "es256" if rule != "es256" else "rs256", token=signed, key=pem) is False


def test_verify_accepts_jwks_and_certificates(engine: EmbeddedEngine) -> None:
    from pki.bundle import public_key_to_jwk

    signed, _ = token(KeyType.EC_P256, "ES256")
    jwk = public_key_to_jwk(cached_key(KeyType.EC_P256).public_key())
    assert ask(engine, "es256", token=signed, key=json.dumps({"keys": [jwk]})) is True
    assert ask(engine, "es256", token=signed, key=json.dumps(jwk)) is True


def test_hmac_and_none_tokens_never_verify(engine: EmbeddedEngine) -> None:
    hs = jwt.encode({"sub": "x"}, "secret-key-of-32-bytes-or-more!!", algorithm="HS256")
    _, pem = token(KeyType.EC_P256, "ES256")
    assert ask(engine, "es256", token=hs, key=pem) is False
    unsigned = jwt.encode({"sub": "x"}, None, algorithm="none")
    assert ask(engine, "es256", token=unsigned, key=pem) is False
    # A shared secret is refused loudly, never answered `false` where OPA would verify.
    constraints = {"secret": "secret-key-of-32-bytes-or-more!!"}
    with pytest.raises(PolicyEvaluationError, match="HMAC secrets are not accepted") as info:
        ask(engine, "decode_verify", token=hs, constraints=constraints)
    assert info.value.opa_code == "eval_builtin_error"


def test_decode_returns_header_payload_and_hex_signature(engine: EmbeddedEngine) -> None:
    signed, _ = token(KeyType.EC_P256, "ES256", aud="api")
    header, payload, signature = ask(engine, "decoded", token=signed)
    assert header == {"alg": "ES256", "typ": "JWT"}
    assert payload["aud"] == "api"
    assert len(signature) == 128 and int(signature, 16) >= 0


def test_decode_verify_checks_claims(engine: EmbeddedEngine) -> None:
    signed, pem = token(KeyType.EC_P256, "ES256", aud="api", iss="trustd")
    ok = ask(engine, "decode_verify", token=signed, constraints={"cert": pem, "aud": "api"})
    assert ok[0] is True and ok[2]["iss"] == "trustd"
    for constraints in (
        {"cert": pem},  # the token has an audience, the constraints none
        {"cert": pem, "aud": "other"},
        {"cert": pem, "aud": "api", "iss": "someone-else"},
        {"cert": pem, "aud": "api", "alg": "RS256"},
        {"cert": pem, "aud": "api", "time": (int(time.time()) + 3600) * 10**9},  # expired
    ):
        assert ask(engine, "decode_verify", token=signed, constraints=constraints) == [
            False,
            {},
            {},
        ]


def test_x509_parse_and_verify() -> None:
    ca = TestCA()
    leaf = ca.issue("/web")
    assert ca.intermediate is not None
    certs = certificate_pem(ca.root) + certificate_pem(ca.intermediate) + certificate_pem(leaf)
    now = int(T0.timestamp() * 10**9)
    from policy.builtins import parse_and_verify_certificates, parse_certificates

    parsed = parse_certificates(certificate_pem(leaf))
    assert parsed[0]["URIStrings"] == ["spiffe://example.org/web"]
    assert parsed[0]["IsCA"] is False
    valid, chain = parse_and_verify_certificates(certs, now)
    # Root first in, the verified chain leaf first out (as OPA returns Go's chain).
    assert valid is True and [c["IsCA"] for c in chain] == [False, True, True]
    assert chain[0]["URIStrings"] == ["spiffe://example.org/web"]
    assert chain[2]["EmailAddresses"] is None  # an empty list is Go's nil slice: null
    # Leaf first (the wrong order for OPA) or a missing intermediate does not verify.
    wrong = certificate_pem(leaf) + certificate_pem(ca.intermediate) + certificate_pem(ca.root)
    assert parse_and_verify_certificates(wrong, now) == [False, []]
    gap = certificate_pem(ca.root) + certificate_pem(leaf)
    assert parse_and_verify_certificates(gap, now) == [False, []]
    # After the leaf expires.
    later = now + 30 * 86400 * 10**9
    assert parse_and_verify_certificates(certs, later) == [False, []]


def test_x509_builtins_in_rego(engine: EmbeddedEngine) -> None:
    ca = TestCA()
    pem = certificate_pem(ca.issue("/db"))
    assert ask(engine, "certs", certs=pem)[0]["URIStrings"] == ["spiffe://example.org/db"]
    assert ask(engine, "sha") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
