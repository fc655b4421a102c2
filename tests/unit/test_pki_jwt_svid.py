"""JWT-SVID minting and validation, including the classic JOSE attacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from pki.clock import FakeClock
from pki.errors import InvalidJwt, WeakKey
from pki.jwt_svid import (
    ALLOWED_ALGORITHMS,
    JwtSvid,
    audience_problem,
    mint_jwt_svid,
    validate_jwt_svid,
)
from pki.keys import KeyType, PrivateKey, PublicKey, key_id
from pki.spiffe_id import SpiffeId, TrustDomain
from tests.unit.pki_helpers import T0, cached_ec_key, cached_key, cached_rsa_key

TD = TrustDomain("example.org")
SID = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
AUD = "spiffe://example.org/reports"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: Any) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock.now().timestamp())
    claims: dict[str, Any] = {"sub": str(SID), "aud": [AUD], "exp": now + 300, "iat": now}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


class Signer:
    """Signs arbitrary headers and claims with a real key, to build hostile tokens."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        self.kid = key_id(key.public_key())

    @property
    def keys(self) -> dict[str, PublicKey]:
        return {self.kid: self.key.public_key()}

    def sign(self, claims: dict[str, Any], alg: str = "ES256", **headers: Any) -> str:
        merged = {"kid": self.kid, "typ": "JWT", **headers}
        merged = {k: v for k, v in merged.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm=alg, headers=merged)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(cached_key(KeyType.EC_P256))


def _mint(signer: Signer, clock: FakeClock, **kwargs: Any) -> JwtSvid:
    args: dict[str, Any] = {
        "key": signer.key,
        "kid": signer.kid,
        "spiffe_id": SID,
        "audience": [AUD],
        "ttl": timedelta(minutes=5),
        "clock": clock,
    }
    args.update(kwargs)
    return mint_jwt_svid(**args)


# --------------------------------------------------------------------------- minting


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (lambda: cached_key(KeyType.EC_P256), "ES256"),
        (lambda: cached_key(KeyType.EC_P384), "ES384"),
        (lambda: cached_ec_key("secp521r1"), "ES512"),
        (lambda: cached_key(KeyType.RSA_2048), "RS256"),
    ],
)
def test_mint_header_and_claims_are_exact(key: Any, clock: FakeClock, alg: str) -> None:
    signer = Signer(key())
    svid = _mint(signer, clock)
    header = jwt.get_unverified_header(svid.token)
    # JWT-SVID §2: no header beyond alg, kid, typ.
    assert header == {"alg": alg, "kid": signer.kid, "typ": "JWT"}
    claims = jwt.decode(svid.token, options={"verify_signature": False})
    now = int(T0.timestamp())
    assert claims == {"sub": str(SID), "aud": [AUD], "exp": now + 300, "iat": now}
    assert svid.spiffe_id == SID
    assert svid.audience == (AUD,)
    assert svid.expiry == T0 + timedelta(minutes=5)
    assert svid.issued_at == T0
    assert svid.kid == signer.kid
    assert validate_jwt_svid(svid.token, signer.keys, AUD, clock, TD) == svid


def test_mint_multiple_audiences_and_single_string(signer: Signer, clock: FakeClock) -> None:
    svid = _mint(signer, clock, audience=["a", "b"])
    assert svid.audience == ("a", "b")
    assert validate_jwt_svid(svid.token, signer.keys, "b", clock).audience == ("a", "b")
    assert _mint(signer, clock, audience="reports").audience == ("reports",)


@pytest.mark.parametrize("audience", [[], [""], ["ok", ""]])
def test_mint_refuses_empty_audience(signer: Signer, clock: FakeClock, audience: list[str]) -> None:
    with pytest.raises(InvalidJwt, match=r"§3\.2"):
        _mint(signer, clock, audience=audience)


def test_mint_refuses_bad_ttl_and_kid(signer: Signer, clock: FakeClock) -> None:
    with pytest.raises(InvalidJwt, match="at least one second"):
        _mint(signer, clock, ttl=timedelta(milliseconds=500))
    with pytest.raises(InvalidJwt, match="kid"):
        _mint(signer, clock, kid="")


def test_mint_refuses_ed25519(clock: FakeClock) -> None:
    # JWT-SVID §2.1 does not list EdDSA.
    with pytest.raises(WeakKey, match=r"JWT-SVID §2\.1"):
        _mint(Signer(cached_key(KeyType.ED25519)), clock)


def test_repr_hides_the_token(signer: Signer, clock: FakeClock) -> None:
    svid = _mint(signer, clock)
    assert svid.token not in repr(svid)
    assert str(SID) in repr(svid)


# --------------------------------------------------------------------------- validation: time


def test_expiry_uses_the_injected_clock(signer: Signer, clock: FakeClock) -> None:
    svid = _mint(signer, clock, ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=5) - timedelta(seconds=1))
    validate_jwt_svid(svid.token, signer.keys, AUD, clock)
    clock.advance(timedelta(seconds=1))  # now == exp: RFC 7519 §4.1.4 says reject
    with pytest.raises(InvalidJwt, match="expired at"):
        validate_jwt_svid(svid.token, signer.keys, AUD, clock)
    # Leeway is explicit and bounded by the caller.
    validate_jwt_svid(svid.token, signer.keys, AUD, clock, leeway=timedelta(seconds=30))
    with pytest.raises(InvalidJwt, match="leeway must not be negative"):
        validate_jwt_svid(svid.token, signer.keys, AUD, clock, leeway=timedelta(seconds=-1))


def test_expired_per_fake_clock_even_though_wall_clock_is_earlier(signer: Signer) -> None:
    # T0 is in 2030; a wall-clock check would call this token valid for years.
    clock = FakeClock(T0)
    svid = _mint(signer, clock)
    clock.advance(timedelta(hours=1))
    with pytest.raises(InvalidJwt, match="expired"):
        validate_jwt_svid(svid.token, signer.keys, AUD, clock)


def test_token_from_the_future_is_checked_against_the_injected_clock(signer: Signer) -> None:
    # Minted "in 2030"; validated with a clock at 2030 although the wall clock is earlier.
    clock = FakeClock(T0)
    token = signer.sign(_claims(clock))
    assert validate_jwt_svid(token, signer.keys, AUD, clock).issued_at == T0


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": None}, "no exp claim"),
        ({"exp": "soon"}, "NumericDate"),
        ({"exp": True}, "NumericDate"),
        ({"exp": 10**400}, "out of range"),
        ({"iat": None}, "no iat claim"),
        ({"nbf": int(T0.timestamp()) + 60}, "not valid yet"),
    ],
)
def test_time_claims(
    signer: Signer, clock: FakeClock, overrides: dict[str, Any], reason: str
) -> None:
    token = signer.sign(_claims(clock, **overrides))
    with pytest.raises(InvalidJwt, match=reason):
        validate_jwt_svid(token, signer.keys, AUD, clock)


# --------------------------------------------------------------------------- validation: aud/sub


@pytest.mark.parametrize(
    ("aud", "reason"),
    [
        (None, "aud must be a string or list"),
        ([], "one or more"),
        ([""], "one or more"),
        ("", "one or more"),
        ([1], "aud must be a string or list"),
        (["spiffe://example.org/other"], "does not include"),
        ("spiffe://example.org/other", "does not include"),
    ],
)
def test_audience_rules(signer: Signer, clock: FakeClock, aud: Any, reason: str) -> None:
    token = signer.sign(_claims(clock, aud=aud) if aud is not None else _claims(clock, aud=None))
    with pytest.raises(InvalidJwt, match=reason):
        validate_jwt_svid(token, signer.keys, AUD, clock)


def test_single_string_audience_is_accepted(signer: Signer, clock: FakeClock) -> None:
    token = signer.sign(_claims(clock, aud=AUD))
    assert validate_jwt_svid(token, signer.keys, AUD, clock).audience == (AUD,)


@pytest.mark.parametrize(
    ("sub", "reason"),
    [
        (None, "no sub claim"),
        (42, "no sub claim"),
        ("web", "sub is not a SPIFFE ID"),
        ("spiffe://example.org/a/../b", "sub is not a SPIFFE ID"),
        ("spiffe://other.org/web", "not in trust domain"),
    ],
)
def test_subject_rules(signer: Signer, clock: FakeClock, sub: Any, reason: str) -> None:
    token = signer.sign(_claims(clock, sub=sub))
    with pytest.raises(InvalidJwt, match=reason):
        validate_jwt_svid(token, signer.keys, AUD, clock, TD)


def test_other_trust_domain_is_fine_without_a_trust_domain(
    signer: Signer, clock: FakeClock
) -> None:
    token = signer.sign(_claims(clock, sub="spiffe://other.org/web"))
    assert validate_jwt_svid(token, signer.keys, AUD, clock).spiffe_id.trust_domain.name == (
        "other.org"
    )


# --------------------------------------------------------------------------- validation: JOSE


def test_alg_none_is_refused(signer: Signer, clock: FakeClock) -> None:
    token = (
        f"{_segment({'alg': 'none', 'kid': signer.kid, 'typ': 'JWT'})}.{_segment(_claims(clock))}."
    )
    with pytest.raises(InvalidJwt):
        validate_jwt_svid(token, signer.keys, AUD, clock)
    # With a (meaningless) signature segment the refusal names the rule.
    with pytest.raises(InvalidJwt, match=r"§2\.1: alg 'none' is not allowed"):
        validate_jwt_svid(token + "AA", signer.keys, AUD, clock)


def test_hs256_with_public_key_as_hmac_secret_is_refused(signer: Signer, clock: FakeClock) -> None:
    # The classic key-confusion attack: HMAC-sign with the verifier's public key bytes and hope
    # the verifier feeds the same bytes to HMAC verification.
    public_pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        f"{_segment({'alg': 'HS256', 'kid': signer.kid, 'typ': 'JWT'})}.{_segment(_claims(clock))}"
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{_b64(mac)}"
    with pytest.raises(InvalidJwt, match=r"alg 'HS256' is not allowed"):
        validate_jwt_svid(token, signer.keys, AUD, clock)


@pytest.mark.parametrize("alg", ["HS384", "HS512", "EdDSA", "ES256K", "RSA1_5", "", None, 7])
def test_algorithms_outside_the_allow_list(signer: Signer, clock: FakeClock, alg: Any) -> None:
    header = {"alg": alg, "kid": signer.kid, "typ": "JWT"}
    token = f"{_segment(header)}.{_segment(_claims(clock))}.AAAA"
    with pytest.raises(InvalidJwt, match="is not allowed"):
        validate_jwt_svid(token, signer.keys, AUD, clock)


def test_alg_must_match_the_key(clock: FakeClock) -> None:
    p256 = Signer(cached_key(KeyType.EC_P256))
    p384 = Signer(cached_key(KeyType.EC_P384))
    rsa_signer = Signer(cached_key(KeyType.RSA_2048))
    # An ES384 header pointing at a P-256 key.
    forged = f"{_segment({'alg': 'ES384', 'kid': p256.kid})}.{_segment(_claims(clock))}.AAAA"
    with pytest.raises(InvalidJwt, match="does not match the EC secp256r1 key"):
        validate_jwt_svid(forged, p256.keys, AUD, clock)
    # An RSA-signed token whose kid names an EC key.
    token = rsa_signer.sign(_claims(clock), alg="RS256", kid=p384.kid)
    with pytest.raises(InvalidJwt, match="does not match"):
        validate_jwt_svid(token, p384.keys, AUD, clock)
    # RSA keys accept RS* and PS*.
    for alg in ("RS384", "PS256", "PS512"):
        token = rsa_signer.sign(_claims(clock), alg=alg)
        validate_jwt_svid(token, rsa_signer.keys, AUD, clock)


def test_ed25519_keys_cannot_validate(clock: FakeClock) -> None:
    signer = Signer(cached_key(KeyType.ED25519))
    token = signer.sign(_claims(clock), alg="EdDSA")
    with pytest.raises(InvalidJwt):
        validate_jwt_svid(token, signer.keys, AUD, clock)
    forged = f"{_segment({'alg': 'ES256', 'kid': signer.kid})}.{_segment(_claims(clock))}.AAAA"
    with pytest.raises(InvalidJwt, match="Ed25519"):
        validate_jwt_svid(forged, signer.keys, AUD, clock)


def test_missing_and_unknown_kid(signer: Signer, clock: FakeClock) -> None:
    with pytest.raises(InvalidJwt, match="no kid"):
        validate_jwt_svid(signer.sign(_claims(clock), kid=None), signer.keys, AUD, clock)
    with pytest.raises(InvalidJwt, match="not a known JWT-SVID signing key"):
        validate_jwt_svid(signer.sign(_claims(clock), kid="nope"), signer.keys, AUD, clock)
    with pytest.raises(InvalidJwt, match="no kid"):
        validate_jwt_svid(signer.sign(_claims(clock), kid=""), signer.keys, AUD, clock)


def test_weak_key_in_the_key_set_is_refused(clock: FakeClock) -> None:
    weak = cached_rsa_key(1024)
    # PyJWT itself refuses to sign with a short RSA key, so sign by hand.
    signing_input = f"{_segment({'alg': 'RS256', 'kid': 'weak'})}.{_segment(_claims(clock))}"
    signature = weak.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    token = f"{signing_input}.{_b64(signature)}"
    with pytest.raises(InvalidJwt, match="RSA-1024"):
        validate_jwt_svid(token, {"weak": weak.public_key()}, AUD, clock)


def test_right_kid_but_signed_by_another_key(clock: FakeClock) -> None:
    honest = Signer(cached_key(KeyType.EC_P256))
    attacker = Signer(cached_key(KeyType.EC_P256, 1))
    token = attacker.sign(_claims(clock), kid=honest.kid)
    with pytest.raises(InvalidJwt, match="signature is invalid"):
        validate_jwt_svid(token, honest.keys, AUD, clock)


@pytest.mark.parametrize(
    "extra",
    [
        {"jku": "https://evil.example/jwks"},
        {"x5u": "https://evil.example/cert.pem"},
        {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}},
        {"crit": ["exp"]},
        {"x5c": ["AAAA"]},
        {"cty": "JWT"},
        {"b64": True},
        {"custom": 1},
    ],
)
def test_extra_headers_are_refused(signer: Signer, clock: FakeClock, extra: dict[str, Any]) -> None:
    header = {"alg": "ES256", "kid": signer.kid, "typ": "JWT", **extra}
    token = f"{_segment(header)}.{_segment(_claims(clock))}.AAAA"
    name = next(iter(extra))
    with pytest.raises(InvalidJwt, match=f"header parameters '{name}' are not allowed"):
        validate_jwt_svid(token, signer.keys, AUD, clock)


@pytest.mark.parametrize("typ", ["JWT", "JOSE"])
def test_typ_jwt_and_jose_are_accepted(signer: Signer, clock: FakeClock, typ: str) -> None:
    validate_jwt_svid(signer.sign(_claims(clock), typ=typ), signer.keys, AUD, clock)


def test_typ_is_optional(signer: Signer, clock: FakeClock) -> None:
    token = jwt.encode(
        _claims(clock), signer.key, algorithm="ES256", headers={"kid": signer.kid, "typ": None}
    )
    assert "typ" not in jwt.get_unverified_header(token)
    validate_jwt_svid(token, signer.keys, AUD, clock)


@pytest.mark.parametrize("typ", ["at+jwt", "jwt", "", 1])
def test_other_typ_is_refused(signer: Signer, clock: FakeClock, typ: Any) -> None:
    header = {"alg": "ES256", "kid": signer.kid, "typ": typ}
    token = f"{_segment(header)}.{_segment(_claims(clock))}.AAAA"
    with pytest.raises(InvalidJwt, match=r"§2\.3"):
        validate_jwt_svid(token, signer.keys, AUD, clock)


def test_tampered_payload(signer: Signer, clock: FakeClock) -> None:
    token = _mint(signer, clock).token
    header, _, signature = token.split(".")
    evil = _segment(_claims(clock, sub="spiffe://example.org/admin"))
    with pytest.raises(InvalidJwt, match="signature is invalid"):
        validate_jwt_svid(f"{header}.{evil}.{signature}", signer.keys, AUD, clock)


def test_tampered_header(signer: Signer, clock: FakeClock) -> None:
    token = _mint(signer, clock).token
    _, payload, signature = token.split(".")
    header = _segment({"alg": "ES256", "kid": signer.kid, "typ": "JOSE"})
    with pytest.raises(InvalidJwt, match="signature is invalid"):
        validate_jwt_svid(f"{header}.{payload}.{signature}", signer.keys, AUD, clock)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "..",
        "a..c",
        "!!!.b.c",
        "a.b.c=",
        _segment([1, 2]) + ".e30.AAAA",
        "bm90anNvbg.e30.AAAA",
        "x" * 20000,
    ],
)
def test_malformed_tokens(signer: Signer, clock: FakeClock, token: str) -> None:
    with pytest.raises(InvalidJwt):
        validate_jwt_svid(token, signer.keys, AUD, clock)


def test_duplicate_header_members_are_refused(signer: Signer, clock: FakeClock) -> None:
    raw_header = b'{"alg":"ES256","kid":"%s","alg":"none"}' % signer.kid.encode()
    token = f"{_b64(raw_header)}.{_segment(_claims(clock))}.AAAA"
    with pytest.raises(InvalidJwt, match="duplicate member 'alg'"):
        validate_jwt_svid(token, signer.keys, AUD, clock)


def test_non_object_payload(signer: Signer, clock: FakeClock) -> None:
    token = jwt.api_jws.PyJWS().encode(
        b"[1,2]", signer.key, algorithm="ES256", headers={"kid": signer.kid}
    )
    with pytest.raises(InvalidJwt, match="not a JSON object"):
        validate_jwt_svid(token, signer.keys, AUD, clock)


def test_allowed_algorithms_are_the_spec_list() -> None:
    assert ALLOWED_ALGORITHMS == (
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "PS384",
        "PS512",
    )


# --------------------------------------------------------------------------- round trip


@settings(max_examples=30, deadline=None)
@given(
    path=st.lists(st.text("abcXYZ019._-", min_size=1, max_size=8), max_size=4).map(
        lambda segs: "".join("/" + s for s in segs if s not in (".", ".."))
    ),
    audience=st.lists(
        st.text(min_size=1, max_size=20).filter(lambda a: audience_problem(a) is None),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    ttl_seconds=st.integers(min_value=1, max_value=86400 * 365),
)
def test_mint_validate_round_trip(path: str, audience: list[str], ttl_seconds: int) -> None:
    clock = FakeClock(T0)
    signer = Signer(cached_key(KeyType.EC_P256))
    sid = SpiffeId(TD, path)
    svid = mint_jwt_svid(
        signer.key, signer.kid, sid, audience, timedelta(seconds=ttl_seconds), clock
    )
    for aud in audience:
        again = validate_jwt_svid(svid.token, signer.keys, aud, clock, TD)
        assert again == svid
        assert again.spiffe_id == sid
        assert again.expiry - again.issued_at == timedelta(seconds=ttl_seconds)


@given(st.lists(st.text(max_size=8), min_size=1, max_size=4))
def test_only_distinct_visible_audiences_are_minted(audience: list[str]) -> None:
    """Whatever mint accepts is distinct, not blank and free of control and bidi characters;
    whatever it refuses is refused with InvalidJwt (never another error)."""
    key = cached_ec_key("secp256r1")
    sid = SpiffeId.parse("spiffe://example.org/w")
    try:
        svid = mint_jwt_svid(key, "k", sid, audience, timedelta(minutes=5), FakeClock(T0))
    except InvalidJwt:
        return
    assert len(set(svid.audience)) == len(svid.audience)
    for value in svid.audience:
        assert value.strip()
        assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Cs") for ch in value)
