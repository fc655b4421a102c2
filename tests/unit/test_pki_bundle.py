"""SPIFFE bundles as JWK Sets (Trust Domain and Bundle §4, X509-SVID §6, JWT-SVID §6)."""

from __future__ import annotations

import base64
import copy
import json
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from pki.bundle import TrustBundle, public_key_from_jwk, public_key_to_jwk
from pki.ca import load_pem_certificates
from pki.errors import InvalidBundle
from pki.keys import KeyType, PublicKey, key_id, same_public_key
from pki.spiffe_id import TrustDomain
from tests.unit.pki_helpers import TestCA, cached_ec_key, cached_key, cached_rsa_key

TD = TrustDomain("example.org")


@cache
def roots() -> tuple[x509.Certificate, ...]:
    """One root per CA key type (P-256, P-384, Ed25519, RSA-2048, ML-DSA-44/65/87)."""
    return tuple(TestCA(root_key_type=kt, with_intermediate=False).root for kt in KeyType)


@cache
def jwt_keys() -> tuple[PublicKey, ...]:
    # ML-DSA keys sign no JWT (pki.keys.jws_algorithm): never JWT authorities.
    keys: list[PublicKey] = [cached_key(kt).public_key() for kt in KeyType if not kt.post_quantum]
    keys.append(cached_ec_key("secp521r1").public_key())
    keys.append(cached_rsa_key(3072).public_key())
    return tuple(keys)


def _bundle(**overrides: Any) -> TrustBundle:
    args: dict[str, Any] = {
        "trust_domain": TD,
        "x509_authorities": roots()[:2],
        "jwt_authorities": {key_id(k): k for k in jwt_keys()[:2]},
        "sequence": 7,
        "refresh_hint": 300,
    }
    args.update(overrides)
    return TrustBundle(**args)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --------------------------------------------------------------------------- publishing


def test_to_jwks_shape() -> None:
    bundle = _bundle()
    doc = bundle.to_jwks()
    assert doc["spiffe_sequence"] == 7
    assert doc["spiffe_refresh_hint"] == 300
    x509_entries = [k for k in doc["keys"] if k["use"] == "x509-svid"]
    jwt_entries = [k for k in doc["keys"] if k["use"] == "jwt-svid"]
    assert len(x509_entries) == 2
    assert len(jwt_entries) == 2
    for entry, cert in zip(x509_entries, bundle.x509_authorities, strict=True):
        # X509-SVID §6.1: no kid; x5c holds exactly one base64 (not base64url) DER cert.
        assert "kid" not in entry
        assert entry["x5c"] == [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        ]
        assert same_public_key(public_key_from_jwk(entry), cert.public_key())
    for entry in jwt_entries:
        # JWT-SVID §6.1: kid MUST be set.
        assert entry["kid"] in bundle.jwt_authorities
        assert "x5c" not in entry
    json.dumps(doc)  # serialisable as is


def test_jwk_parameters_per_key_type() -> None:
    p256 = cached_key(KeyType.EC_P256).public_key()
    jwk = public_key_to_jwk(p256)
    assert isinstance(p256, ec.EllipticCurvePublicKey)
    numbers = p256.public_numbers()
    assert jwk == {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    rsa_key = cached_key(KeyType.RSA_2048).public_key()
    assert isinstance(rsa_key, rsa.RSAPublicKey)
    jwk = public_key_to_jwk(rsa_key)
    assert jwk["kty"] == "RSA"
    assert jwk["e"] == "AQAB"
    assert len(base64.urlsafe_b64decode(jwk["n"] + "==")) == 256
    ed = cached_key(KeyType.ED25519).public_key()
    jwk = public_key_to_jwk(ed)
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(ed.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)),
    }


def test_ec_coordinates_are_zero_padded() -> None:
    # RFC 7518 §6.2.1.2: coordinates are always full length, even with leading zero bytes.
    # One key in 256 has a leading zero byte in x; 5000 tries miss with p ~ 3e-9.
    key = next(
        k
        for k in (ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(5000))
        if k.public_numbers().x.bit_length() <= 248
    )
    jwk = public_key_to_jwk(key)
    assert len(base64.urlsafe_b64decode(jwk["x"] + "=")) == 32
    assert same_public_key(public_key_from_jwk(jwk), key)


def test_to_pem() -> None:
    bundle = _bundle()
    assert load_pem_certificates(bundle.to_pem().encode()) == list(bundle.x509_authorities)


def test_bundle_is_frozen_and_canonical() -> None:
    keys = {key_id(k): k for k in jwt_keys()[:1]}
    bundle = _bundle(x509_authorities=[roots()[0], roots()[0]], jwt_authorities=keys)
    assert bundle.x509_authorities == (roots()[0],)
    keys.clear()  # the bundle kept its own read-only copy
    assert len(bundle.jwt_authorities) == 1
    with pytest.raises(TypeError):
        bundle.jwt_authorities["x"] = jwt_keys()[0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sequence": -1}, "sequence"),
        ({"refresh_hint": 2**63}, "refresh_hint"),
        ({"sequence": True}, "sequence"),
        ({"jwt_authorities": {"": jwt_keys()[0]}}, "kid must be a non-empty string"),
        ({"jwt_authorities": {"k": cached_rsa_key(1024).public_key()}}, "RSA-1024"),
        ({"x509_authorities": ("not a cert",)}, "must be a Certificate"),
        ({"trust_domain": "example.org"}, "must be a TrustDomain"),
    ],
)
def test_bundle_construction_errors(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidBundle, match=reason):
        _bundle(**overrides)


# --------------------------------------------------------------------------- consuming


def test_from_jwks_accepts_bytes_and_mapping() -> None:
    bundle = _bundle()
    assert TrustBundle.from_jwks(bundle.to_json().encode(), TD) == bundle
    assert TrustBundle.from_jwks(bundle.to_jwks(), TD) == bundle


def test_unknown_use_and_kty_are_ignored() -> None:
    doc = _bundle().to_jwks()
    doc["keys"].append({"kty": "EC", "use": "cwt-svid", "crv": "P-256", "x": "AA", "y": "AA"})
    doc["keys"].append({"kty": "oct", "use": "jwt-svid", "kid": "sym", "k": "c2VjcmV0"})
    doc["keys"].append({"kty": "PQC", "use": "x509-svid", "x5c": ["AAAA"]})
    doc["keys"].append({"use": "future-svid", "anything": ["goes"]})
    # Trust Domain and Bundle §4.1: unknown top-level parameters are allowed.
    doc["spiffe_future"] = {"anything": True}
    parsed = TrustBundle.from_jwks(doc, TD)
    assert parsed == _bundle()
    assert "sym" not in parsed.jwt_authorities


def test_x509_entry_without_x5c_is_ignored_and_extra_x5c_values_are_too() -> None:
    doc = _bundle().to_jwks()
    first = doc["keys"][0]
    del first["x5c"]
    doc["keys"][1]["x5c"].append("not even base64")  # X509-SVID §6.2: all but the first ignored
    parsed = TrustBundle.from_jwks(doc, TD)
    assert parsed.x509_authorities == (roots()[1],)


def test_missing_sequence_and_refresh_hint_default_to_zero() -> None:
    doc = _bundle().to_jwks()
    del doc["spiffe_sequence"]
    del doc["spiffe_refresh_hint"]
    parsed = TrustBundle.from_jwks(doc, TD)
    assert (parsed.sequence, parsed.refresh_hint) == (0, 0)


def _mutated(mutate: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_bundle().to_jwks())
    mutate(doc)
    return doc


def _swap_x5c(doc: dict[str, Any]) -> None:
    doc["keys"][0]["x5c"], doc["keys"][1]["x5c"] = doc["keys"][1]["x5c"], doc["keys"][0]["x5c"]


def _leaf_x5c(doc: dict[str, Any]) -> None:
    ca = TestCA(with_intermediate=False)
    leaf = ca.issue(key=cached_key(KeyType.EC_P256))
    doc["keys"][0] = {
        **public_key_to_jwk(cached_key(KeyType.EC_P256).public_key()),
        "use": "x509-svid",
        "x5c": [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()],
    }


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.pop("keys"), "no keys array"),
        (lambda d: d.update(keys={}), "no keys array"),
        (lambda d: d["keys"].append("x"), "not a JSON object"),
        (lambda d: d["keys"][0].pop("use"), "no use parameter"),
        (lambda d: d["keys"][0].pop("kty"), "no kty parameter"),
        (_swap_x5c, "does not match the JWK"),
        (_leaf_x5c, "not a CA certificate"),
        (lambda d: d["keys"][0].update(x5c=["%%%"]), "not a base64 DER"),
        (lambda d: d["keys"][0].update(x5c=[_b64url(b"\x30\x00")]), "not a base64 DER"),
        (lambda d: d["keys"][0].update(x5c="AAAA"), "array of base64"),
        (lambda d: d["keys"][2].pop("kid"), "no kid"),
        (lambda d: d["keys"][3].update(kid=d["keys"][2]["kid"]), "appears more than once"),
        (lambda d: d["keys"][2].update(crv="P-192"), "unsupported crv"),
        (lambda d: d["keys"][2].update(x=d["keys"][2]["y"]), "not describe a valid EC"),
        (lambda d: d["keys"][2].update(x=d["keys"][2]["x"] + "=="), "must not be padded"),
        (lambda d: d["keys"][2].update(x="!!"), "not base64url"),
        (lambda d: d["keys"][2].update(x=_b64url(b"\x01" * 31)), "must be 32 bytes"),
        (lambda d: d["keys"][2].pop("y"), "non-empty base64url"),
        (lambda d: d.update(spiffe_sequence=-1), "spiffe_sequence"),
        (lambda d: d.update(spiffe_sequence="7"), "spiffe_sequence"),
        (lambda d: d.update(spiffe_refresh_hint=2**64), "spiffe_refresh_hint"),
        (lambda d: d.update(spiffe_refresh_hint=1.5), "spiffe_refresh_hint"),
    ],
)
def test_from_jwks_rejections(mutate: Any, reason: str) -> None:
    with pytest.raises(InvalidBundle, match=reason):
        TrustBundle.from_jwks(_mutated(mutate), TD)


def test_weak_jwt_key_in_bundle_is_rejected() -> None:
    doc = _bundle().to_jwks()
    weak = cached_rsa_key(1024).public_key().public_numbers()
    doc["keys"].append(
        {
            "kty": "RSA",
            "use": "jwt-svid",
            "kid": "weak",
            "n": _b64url(weak.n.to_bytes(128, "big")),
            "e": "AQAB",
        }
    )
    with pytest.raises(InvalidBundle, match="RSA-1024"):
        TrustBundle.from_jwks(doc, TD)


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'"x"', b"\xff\xfe", b"{" * 10])
def test_from_jwks_garbage(data: bytes) -> None:
    with pytest.raises(InvalidBundle):
        TrustBundle.from_jwks(data, TD)


def test_from_jwks_size_limit() -> None:
    with pytest.raises(InvalidBundle, match="larger than"):
        TrustBundle.from_jwks(b" " * (1024 * 1024 + 1), TD)


# --------------------------------------------------------------------------- round trip


kids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


@st.composite
def bundles(draw: st.DrawFn) -> TrustBundle:
    certs = draw(st.lists(st.sampled_from(roots()), unique=True, max_size=len(roots())))
    keys = draw(st.dictionaries(kids, st.sampled_from(jwt_keys()), max_size=4))
    return TrustBundle(
        trust_domain=TD,
        x509_authorities=tuple(certs),
        jwt_authorities=keys,
        sequence=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        refresh_hint=draw(st.integers(min_value=0, max_value=2**63 - 1)),
    )


@settings(max_examples=60, deadline=None)
@given(bundles())
def test_jwks_round_trip(bundle: TrustBundle) -> None:
    doc = bundle.to_jwks()
    assert TrustBundle.from_jwks(doc, TD) == bundle
    # ... and through actual JSON bytes, as it travels between trust domains.
    again = TrustBundle.from_jwks(json.dumps(doc).encode(), TD)
    assert again == bundle
    assert again.to_jwks() == doc


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(jwt_keys()))
def test_jwk_round_trip(key: PublicKey) -> None:
    assert same_public_key(public_key_from_jwk(public_key_to_jwk(key)), key)
