"""WIT-SVID minting and validation (SPIFFE WIT-SVID draft, WIMSE Workload Credentials):
the header, the claims, the `cnf` binding, and the bundle's `wit-svid` keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import jwt
import pytest

from pki.bundle import USE_JWT_SVID, USE_WIT_SVID, TrustBundle, public_key_to_jwk
from pki.clock import FakeClock
from pki.errors import InvalidBundle, InvalidJwt, InvalidWit, WeakKey
from pki.jwt_svid import validate_jwt_svid
from pki.keys import KeyType, PrivateKey, PublicKey, key_id
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.wit_svid import (
    ALLOWED_ALGORITHMS,
    WitSvid,
    mint_wit_svid,
    mint_wpt,
    parse_workload_jwk,
    token_hash,
    validate_presentation,
    validate_wit_svid,
    validate_wpt,
    workload_jwk,
)
from tests.unit.pki_helpers import T0, cached_ec_key, cached_key

TD = TrustDomain("example.org")
SID = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: Any) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


class Signer:
    """Signs arbitrary headers and claims with a real key, to build hostile tokens."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        self.kid = key_id(key.public_key())

    @property
    def keys(self) -> dict[str, PublicKey]:
        return {self.kid: self.key.public_key()}

    def sign(self, claims: dict[str, Any], alg: str = "ES256", **headers: Any) -> str:
        merged = {"kid": self.kid, "typ": "wit+jwt", **headers}
        merged = {k: v for k, v in merged.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm=alg, headers=merged)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(cached_key(KeyType.EC_P256, slot=7))


@pytest.fixture(scope="module")
def workload() -> PrivateKey:
    return cached_key(KeyType.EC_P256, slot=8)


def _claims(clock: FakeClock, workload: PrivateKey, **overrides: Any) -> dict[str, Any]:
    now = int(clock.now().timestamp())
    claims: dict[str, Any] = {
        "sub": str(SID),
        "exp": now + 300,
        "iat": now,
        "nbf": now,
        "jti": "j1",
        "cnf": {"jwk": workload_jwk(workload.public_key())},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _mint(signer: Signer, clock: FakeClock, workload: PrivateKey, **kwargs: Any) -> WitSvid:
    args: dict[str, Any] = {
        "key": signer.key,
        "kid": signer.kid,
        "spiffe_id": SID,
        "workload_key": workload.public_key(),
        "ttl": timedelta(minutes=5),
        "clock": clock,
    }
    args.update(kwargs)
    return mint_wit_svid(**args)


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
def test_mint_header_and_claims_follow_the_draft(
    key: Any, alg: str, clock: FakeClock, workload: PrivateKey
) -> None:
    signer = Signer(key())
    svid = _mint(signer, clock, workload)
    # WIT-SVID §2, §4: alg, kid and typ wit+jwt are set, and nothing else.
    assert jwt.get_unverified_header(svid.token) == {
        "alg": alg,
        "kid": signer.kid,
        "typ": "wit+jwt",
    }
    claims = jwt.decode(svid.token, options={"verify_signature": False})
    now = int(T0.timestamp())
    # WIT-SVID §4: sub, exp, cnf MUST; jti, nbf, iat SHOULD. No aud, no iss (§3.7).
    assert set(claims) == {"sub", "exp", "nbf", "iat", "jti", "cnf"}
    assert claims["sub"] == str(SID)
    assert claims["exp"] == now + 300
    assert claims["nbf"] == claims["iat"] == now
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 32
    # WIMSE Workload Credentials §3.1: cnf.jwk is the workload's public key with its alg.
    assert claims["cnf"] == {"jwk": {**public_key_to_jwk(workload.public_key()), "alg": "ES256"}}
    assert "d" not in claims["cnf"]["jwk"]
    assert svid.spiffe_id == SID
    assert svid.kid == signer.kid
    assert svid.expiry == T0 + timedelta(minutes=5)
    assert svid.workload_alg == "ES256"
    assert validate_wit_svid(svid.token, signer.keys, clock, TD) == svid


def test_each_mint_has_its_own_jti(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    assert _mint(signer, clock, workload).jti != _mint(signer, clock, workload).jti


def test_mint_takes_the_workload_key_as_jwk(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    jwk = workload_jwk(workload.public_key())
    svid = _mint(signer, clock, workload, workload_key=jwk)
    validate_wit_svid(svid.token, signer.keys, clock, TD, presented_key=workload.public_key())


def test_rsa_workload_key_is_bound_with_rs256(signer: Signer, clock: FakeClock) -> None:
    rsa_key = cached_key(KeyType.RSA_2048)
    svid = _mint(signer, clock, rsa_key, workload_key=rsa_key.public_key())
    assert svid.workload_alg == "RS256"


def test_ed25519_keys_are_refused(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    ed = cached_key(KeyType.ED25519)
    # WIT-SVID §3.2: EdDSA is not among the cnf.jwk.alg values (WIMSE would allow it).
    with pytest.raises(WeakKey):
        _mint(signer, clock, workload, workload_key=ed.public_key())
    # WIT-SVID §2.3: nor among the signing algorithms.
    with pytest.raises(WeakKey):
        _mint(Signer(ed), clock, workload)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"kid": ""}, "kid"), ({"ttl": timedelta(milliseconds=10)}, "at least one second")],
)
def test_mint_refuses_bad_arguments(
    signer: Signer, clock: FakeClock, workload: PrivateKey, kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidWit, match=reason):
        _mint(signer, clock, workload, **kwargs)


def test_a_wit_svid_is_no_jwt_svid(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    # WIT-SVID §7.1: a validator expecting a JWT-SVID must not accept a WIT-SVID.
    svid = _mint(signer, clock, workload)
    with pytest.raises(InvalidJwt, match="typ"):
        validate_jwt_svid(svid.token, signer.keys, "anything", clock, TD)


# ---------------------------------------------------------------------- key binding


def test_a_token_bound_to_one_key_is_refused_with_another(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    svid = _mint(signer, clock, workload)
    accepted = validate_wit_svid(
        svid.token, signer.keys, clock, TD, presented_key=workload.public_key()
    )
    assert accepted.spiffe_id == SID
    other = cached_key(KeyType.EC_P256, slot=9)
    with pytest.raises(InvalidWit, match="bound to another key"):
        validate_wit_svid(svid.token, signer.keys, clock, TD, presented_key=other.public_key())
    # Same curve and type is not enough, nor is the signing key itself.
    with pytest.raises(InvalidWit, match="bound to another key"):
        validate_wit_svid(svid.token, signer.keys, clock, TD, presented_key=signer.key.public_key())


@pytest.mark.parametrize(
    ("cnf", "reason"),
    [
        (None, "cnf"),
        ({}, "cnf"),
        ({"jkt": "abc"}, "cnf"),
        ({"jwk": "not-an-object"}, "JSON object"),
        ({"jwk": {"kty": "EC", "crv": "P-256"}}, "alg"),
        ({"jwk": {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}}, "public"),
    ],
)
def test_cnf_must_hold_a_public_jwk_with_alg(
    signer: Signer, clock: FakeClock, workload: PrivateKey, cnf: Any, reason: str
) -> None:
    claims = _claims(clock, workload)
    claims["cnf"] = cnf
    claims = {k: v for k, v in claims.items() if v is not None}
    with pytest.raises(InvalidWit, match=reason):
        validate_wit_svid(signer.sign(claims), signer.keys, clock, TD)


def test_cnf_alg_must_fit_the_key(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    jwk = {**workload_jwk(workload.public_key()), "alg": "ES384"}
    with pytest.raises(InvalidWit, match="ES384"):
        validate_wit_svid(
            signer.sign(_claims(clock, workload, cnf={"jwk": jwk})), signer.keys, clock, TD
        )
    for alg in ("none", "HS256", "EdDSA"):
        with pytest.raises(InvalidWit, match=r"cnf\.jwk\.alg"):
            parse_workload_jwk({**workload_jwk(workload.public_key()), "alg": alg})


def test_cnf_refuses_private_key_material(workload: PrivateKey) -> None:
    jwk = {**workload_jwk(workload.public_key()), "d": "AAAA"}
    with pytest.raises(InvalidWit, match="public"):
        parse_workload_jwk(jwk)


# ----------------------------------------------------------------------- the header


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "JOSE", "wpt+jwt", "at+jwt", 1])
def test_typ_must_be_wit_jwt(
    signer: Signer, clock: FakeClock, workload: PrivateKey, typ: Any
) -> None:
    token = signer.sign(_claims(clock, workload), typ=typ)
    with pytest.raises(InvalidWit, match="typ"):
        validate_wit_svid(token, signer.keys, clock, TD)


@pytest.mark.parametrize("typ", ["wit+jwt", "WIT+JWT", "application/wit+jwt"])
def test_typ_compares_as_a_media_type(
    signer: Signer, clock: FakeClock, workload: PrivateKey, typ: str
) -> None:
    token = signer.sign(_claims(clock, workload), typ=typ)
    assert validate_wit_svid(token, signer.keys, clock, TD).spiffe_id == SID


def test_kid_is_required(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    # WIT-SVID §2.1: MUST be present, even with a single key to try.
    token = jwt.encode(
        _claims(clock, workload), signer.key, algorithm="ES256", headers={"typ": "wit+jwt"}
    )
    with pytest.raises(InvalidWit, match="kid"):
        validate_wit_svid(token, signer.keys, clock, TD)
    with pytest.raises(InvalidWit, match="not a known"):
        validate_wit_svid(
            signer.sign(_claims(clock, workload), kid="other"), signer.keys, clock, TD
        )


@pytest.mark.parametrize("extra", ["jwk", "jku", "x5c", "crit", "cty"])
def test_other_headers_are_refused(
    signer: Signer, clock: FakeClock, workload: PrivateKey, extra: str
) -> None:
    token = signer.sign(_claims(clock, workload), **{extra: "x"})
    with pytest.raises(InvalidWit, match="not allowed"):
        validate_wit_svid(token, signer.keys, clock, TD)


def test_alg_none_is_refused(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    header = {"alg": "none", "kid": signer.kid, "typ": "wit+jwt"}
    token = f"{_segment(header)}.{_segment(_claims(clock, workload))}.AA"
    with pytest.raises(InvalidWit, match="alg 'none'"):
        validate_wit_svid(token, signer.keys, clock, TD)


def test_hs256_with_the_public_key_as_secret_is_refused(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    # The classic key confusion: HMAC keyed with the bundle's public key (RFC 8725 §2.1).
    secret = json.dumps(public_key_to_jwk(signer.key.public_key())).encode()
    header = {"alg": "HS256", "kid": signer.kid, "typ": "wit+jwt"}
    signing_input = f"{_segment(header)}.{_segment(_claims(clock, workload))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidWit, match="alg 'HS256'"):
        validate_wit_svid(f"{signing_input}.{_b64(mac)}", signer.keys, clock, TD)


def test_alg_must_match_the_signing_key(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    rsa_signer = Signer(cached_key(KeyType.RSA_2048))
    token = rsa_signer.sign(_claims(clock, workload), alg="PS256", kid=signer.kid)
    with pytest.raises(InvalidWit, match="does not match"):
        validate_wit_svid(token, signer.keys, clock, TD)


def test_bad_signature_is_refused(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    token = _mint(signer, clock, workload).token
    other = Signer(cached_key(KeyType.EC_P256, slot=9))
    with pytest.raises(InvalidWit, match="signature"):
        validate_wit_svid(token, {signer.kid: other.key.public_key()}, clock, TD)
    head, _, signature = token.split(".")
    forged = _segment({**_claims(clock, workload), "sub": "spiffe://example.org/admin"})
    with pytest.raises(InvalidWit, match="signature"):
        validate_wit_svid(f"{head}.{forged}.{signature}", signer.keys, clock, TD)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "a b.c.d", "x" * 20000])
def test_malformed_tokens_are_refused(signer: Signer, clock: FakeClock, token: str) -> None:
    with pytest.raises(InvalidWit):
        validate_wit_svid(token, signer.keys, clock, TD)


# ----------------------------------------------------------------------- the claims


def test_expired_token_is_refused(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    svid = _mint(signer, clock, workload)
    clock.advance(timedelta(minutes=5))
    # RFC 7519 §4.1.4, WIT-SVID §3.3: refused on or after exp.
    with pytest.raises(InvalidWit, match="expired"):
        validate_wit_svid(svid.token, signer.keys, clock, TD)
    assert validate_wit_svid(svid.token, signer.keys, clock, TD, leeway=timedelta(seconds=1))


def test_exp_is_required(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    token = signer.sign(_claims(clock, workload, exp=None))
    with pytest.raises(InvalidWit, match="exp"):
        validate_wit_svid(token, signer.keys, clock, TD)


def test_future_nbf_is_refused(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    later = int(clock.now().timestamp()) + 60
    token = signer.sign(_claims(clock, workload, nbf=later))
    with pytest.raises(InvalidWit, match="nbf"):
        validate_wit_svid(token, signer.keys, clock, TD)


def test_iat_jti_and_nbf_are_optional(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    token = signer.sign(_claims(clock, workload, iat=None, jti=None, nbf=None))
    svid = validate_wit_svid(token, signer.keys, clock, TD)
    assert svid.issued_at is None and svid.jti is None


def test_unknown_claims_are_ignored(signer: Signer, clock: FakeClock, workload: PrivateKey) -> None:
    # WIT-SVID §3.8: validators ignore claims they do not recognise.
    token = signer.sign(_claims(clock, workload, iss="https://x.example", extra={"a": 1}))
    assert validate_wit_svid(token, signer.keys, clock, TD).spiffe_id == SID


@pytest.mark.parametrize("sub", [None, 42, "https://example.org/web", "spiffe://example.org"])
def test_sub_must_be_a_spiffe_id(
    signer: Signer, clock: FakeClock, workload: PrivateKey, sub: Any
) -> None:
    claims = _claims(clock, workload)
    claims["sub"] = sub
    claims = {k: v for k, v in claims.items() if v is not None}
    with pytest.raises(InvalidWit, match="sub"):
        validate_wit_svid(signer.sign(claims), signer.keys, clock, TD)


def test_subject_must_be_in_the_bundles_trust_domain(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    # WIMSE Workload Credentials §6.1: the keys of one domain cannot vouch for another's.
    token = signer.sign(_claims(clock, workload, sub="spiffe://evil.example/web"))
    with pytest.raises(InvalidWit, match="not in trust domain"):
        validate_wit_svid(token, signer.keys, clock, TD)
    assert validate_wit_svid(token, signer.keys, clock, TrustDomain("evil.example"))


@pytest.mark.parametrize("exp", ["soon", True, 1e400, None])
def test_exp_must_be_a_numeric_date(
    signer: Signer, clock: FakeClock, workload: PrivateKey, exp: Any
) -> None:
    header = {"alg": "ES256", "kid": signer.kid, "typ": "wit+jwt"}
    claims = _claims(clock, workload)
    # json.dumps writes 1e400 as Infinity, which PyJWT's encoder would refuse.
    claims["exp"] = exp
    payload = json.dumps(claims, separators=(",", ":")).encode()
    token = jwt.api_jws.PyJWS().encode(payload, signer.key, algorithm="ES256", headers=header)
    with pytest.raises(InvalidWit):
        validate_wit_svid(token, signer.keys, clock, TD)


# ----------------------------------------------------------------- bundle and kids


def test_bundle_publishes_wit_keys_with_their_own_use_and_kid() -> None:
    jwt_key = cached_key(KeyType.EC_P256, slot=1).public_key()
    wit_key = cached_key(KeyType.EC_P256, slot=2).public_key()
    bundle = TrustBundle(
        trust_domain=TD,
        x509_authorities=(),
        jwt_authorities={key_id(jwt_key): jwt_key},
        wit_authorities={key_id(wit_key): wit_key},
        sequence=1,
        refresh_hint=60,
    )
    doc = bundle.to_jwks()
    by_use = {k["use"]: k for k in doc["keys"]}
    # WIT-SVID §6.1: use wit-svid, kid set, unique across JWT-SVID and WIT-SVID keys.
    assert set(by_use) == {USE_JWT_SVID, USE_WIT_SVID}
    assert by_use[USE_WIT_SVID]["kid"] == key_id(wit_key)
    assert by_use[USE_WIT_SVID]["kid"] != by_use[USE_JWT_SVID]["kid"]
    parsed = TrustBundle.from_jwks(doc, TD)
    assert parsed == bundle
    # WIT-SVID §6.2: the validator uses the wit-svid keys only.
    assert set(parsed.wit_authorities) == {key_id(wit_key)}
    assert set(parsed.jwt_authorities) == {key_id(jwt_key)}


def test_a_bundle_never_shares_a_kid_between_jwt_and_wit_keys() -> None:
    key = cached_key(KeyType.EC_P256, slot=1).public_key()
    with pytest.raises(InvalidBundle, match="both"):
        TrustBundle(
            trust_domain=TD,
            x509_authorities=(),
            jwt_authorities={"k": key},
            wit_authorities={"k": key},
            sequence=1,
            refresh_hint=60,
        )
    jwk = public_key_to_jwk(key)
    doc = {
        "keys": [
            {**jwk, "use": USE_JWT_SVID, "kid": "k"},
            {**jwk, "use": USE_WIT_SVID, "kid": "k"},
        ]
    }
    with pytest.raises(InvalidBundle, match="more than once"):
        TrustBundle.from_jwks(doc, TD)


def test_a_jwt_svid_key_does_not_validate_wit_svids(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    # WIT-SVID §6.2: only wit-svid entries validate WIT-SVIDs; a token signed by a key
    # published for JWT-SVIDs is refused, by kid.
    token = _mint(signer, clock, workload).token
    bundle = TrustBundle(
        trust_domain=TD,
        x509_authorities=(),
        jwt_authorities=signer.keys,
        sequence=1,
        refresh_hint=60,
    )
    with pytest.raises(InvalidWit, match="not a known"):
        validate_wit_svid(token, bundle.wit_authorities, clock, TD)


def test_allowed_algorithms_are_asymmetric_only() -> None:
    assert "none" not in ALLOWED_ALGORITHMS
    assert not any(a.startswith("HS") for a in ALLOWED_ALGORITHMS)


# --------------------------------------------------------- proof of possession (WPT)

TARGET = "https://db.example.org/orders"


def test_a_wit_svid_with_its_proof_is_accepted(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    svid = _mint(signer, clock, workload)
    proof = mint_wpt(workload, svid, TARGET, clock)
    # draft-ietf-wimse-wpt §3: typ wpt+jwt, alg of cnf.jwk, aud/exp/jti/wth.
    assert jwt.get_unverified_header(proof) == {"alg": "ES256", "typ": "wpt+jwt"}
    claims = jwt.decode(proof, options={"verify_signature": False})
    assert set(claims) == {"aud", "exp", "jti", "wth"}
    assert claims["wth"] == token_hash(svid.token)
    wit, checked = validate_presentation(svid.token, proof, signer.keys, TD, TARGET, clock)
    assert wit.spiffe_id == SID
    assert checked.jti == claims["jti"] and checked.audience == (TARGET,)


def test_a_proof_made_with_another_key_is_refused(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    svid = _mint(signer, clock, workload)
    other = cached_key(KeyType.EC_P256, slot=9)
    # Neither can it be made (the minting side checks) ...
    with pytest.raises(InvalidWit, match="bound to"):
        mint_wpt(other, svid, TARGET, clock)
    # ... nor, forged by hand with the same claims, accepted.
    claims = jwt.decode(
        mint_wpt(workload, svid, TARGET, clock), options={"verify_signature": False}
    )
    forged = jwt.encode(claims, other, algorithm="ES256", headers={"typ": "wpt+jwt"})
    with pytest.raises(InvalidWit, match="not signed by the key"):
        validate_presentation(svid.token, forged, signer.keys, TD, TARGET, clock)


def test_a_proof_is_for_one_wit_one_audience_and_a_short_while(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    svid = _mint(signer, clock, workload)
    another = _mint(signer, clock, workload)
    proof = mint_wpt(workload, svid, TARGET, clock, ttl=timedelta(seconds=30))
    with pytest.raises(InvalidWit, match="wth"):
        validate_wpt(proof, another, TARGET, clock)
    with pytest.raises(InvalidWit, match="not 'https://other"):
        validate_wpt(proof, svid, "https://other.example.org/", clock)
    clock.advance(timedelta(seconds=30))
    with pytest.raises(InvalidWit, match="expired"):
        validate_wpt(proof, svid, TARGET, clock)
    # §3: one expiring unreasonably far ahead is refused too.
    now = int(clock.now().timestamp())
    claims = {"aud": TARGET, "exp": now + 3600, "jti": "j", "wth": token_hash(svid.token)}
    far = jwt.encode(claims, workload, algorithm="ES256", headers={"typ": "wpt+jwt"})
    with pytest.raises(InvalidWit, match="more than"):
        validate_wpt(far, svid, TARGET, clock)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"typ": "JWT"}, "typ"),
        ({"typ": "wit+jwt"}, "typ"),
        ({"typ": "wpt+jwt", "jwk": {"kty": "EC"}}, "not allowed"),
    ],
)
def test_proof_header_is_checked(
    signer: Signer,
    clock: FakeClock,
    workload: PrivateKey,
    headers: dict[str, Any],
    reason: str,
) -> None:
    svid = _mint(signer, clock, workload)
    now = int(clock.now().timestamp())
    claims = {"aud": TARGET, "exp": now + 30, "jti": "j", "wth": token_hash(svid.token)}
    proof = jwt.encode(claims, workload, algorithm="ES256", headers=headers)
    with pytest.raises(InvalidWit, match=reason):
        validate_wpt(proof, svid, TARGET, clock)


def test_proof_alg_must_be_the_cnf_alg(signer: Signer, clock: FakeClock) -> None:
    rsa_key = cached_key(KeyType.RSA_2048)
    svid = _mint(signer, clock, rsa_key, workload_key=rsa_key.public_key())
    now = int(clock.now().timestamp())
    claims = {"aud": TARGET, "exp": now + 30, "jti": "j", "wth": token_hash(svid.token)}
    # The same RSA key, another RSA algorithm than cnf.jwk.alg (RS256): refused.
    proof = jwt.encode(claims, rsa_key, algorithm="PS256", headers={"typ": "wpt+jwt"})
    with pytest.raises(InvalidWit, match="cnf alg RS256"):
        validate_wpt(proof, svid, TARGET, clock)
    header = {"alg": "none", "typ": "wpt+jwt"}
    with pytest.raises(InvalidWit, match="cnf alg"):
        validate_wpt(f"{_segment(header)}.{_segment(claims)}.AA", svid, TARGET, clock)


def test_context_tokens_are_bound_both_ways(
    signer: Signer, clock: FakeClock, workload: PrivateKey
) -> None:
    svid = _mint(signer, clock, workload)
    bound = mint_wpt(
        workload, svid, TARGET, clock, txn_token="txn", other_tokens={"X-User": " u1 "}
    )
    validate_wpt(bound, svid, TARGET, clock, txn_token="txn", other_tokens={"x-user": "u1"})
    with pytest.raises(InvalidWit, match="tth"):
        validate_wpt(bound, svid, TARGET, clock, txn_token="other", other_tokens={"x-user": "u1"})
    with pytest.raises(InvalidWit, match="Txn-Token"):
        validate_wpt(bound, svid, TARGET, clock, other_tokens={"x-user": "u1"})
    with pytest.raises(InvalidWit, match="oth"):
        validate_wpt(bound, svid, TARGET, clock, txn_token="txn")
    # A token carried but not covered by the proof cannot be relied on.
    plain = mint_wpt(workload, svid, TARGET, clock)
    with pytest.raises(InvalidWit, match="oth"):
        validate_wpt(plain, svid, TARGET, clock, other_tokens={"x-user": "u1"})
