"""WIT-SVIDs: minting and validation (SPIFFE WIT-SVID, experimental; WIMSE Workload
Credentials, draft-ietf-wimse-workload-creds §3.1 "The Workload Identity Token").

A WIT-SVID is a JWT that binds the workload's public key (the ``cnf`` claim, RFC 7800 §3.2)
to its SPIFFE ID. Unlike a JWT-SVID it is not a bearer token: a relying party accepts it
only with a proof that the presenter holds the private key in ``cnf`` (WIT-SVID §4, §7.1).
:func:`validate_wit_svid` checks the token and, given the key the presenter proved
possession of (a TLS peer key, say), that the token is bound to that key;
:func:`validate_presentation` checks a WIT-SVID with its Workload Proof Token
(draft-ietf-wimse-wpt §3), the proof WIT-SVID §5 recommends.

As for JWT-SVIDs (see :mod:`pki.jwt_svid`), the JOSE header is checked before any key is
touched, PyJWT only checks the signature over the exact bytes received, and time comes from
the injected :class:`~pki.clock.Clock`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import jwt.algorithms
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.bundle import public_key_from_jwk, public_key_to_jwk
from pki.clock import Clock
from pki.errors import InvalidBundle, InvalidJwt, InvalidSpiffeId, InvalidWit, WeakKey, echo
from pki.jose import (
    COMPACT_JWS,
    MAX_TOKEN_BYTES,
    b64url_json,
    numeric_date,
    reject_duplicate_keys,
    require_matching_key,
    to_datetime,
)
from pki.keys import (
    PrivateKey,
    PublicKey,
    allowed_public_key,
    describe_key,
    jose_private_key,
    jose_public_key,
    jws_algorithm,
    same_public_key,
)
from pki.spiffe_id import SpiffeId, TrustDomain

# WIT-SVID §2.3: the only `alg` values a WIT-SVID may be signed with (as JWT-SVID §2.1,
# kept apart so that either draft may move on its own): asymmetric RS*, ES*, PS*. WIMSE
# Workload Credentials §3.1 forbids `none`; HMAC and every symmetric algorithm are outside
# the list, so a bundle's public key can never be used as an HMAC secret (RFC 8725 §2.1).
ALLOWED_ALGORITHMS = (
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
# WIT-SVID §3.2: `cnf.jwk.alg` takes its value from the same list. WIMSE allows EdDSA there;
# the SPIFFE profile does not, so an Ed25519 workload key cannot be bound.
CNF_ALGORITHMS = ALLOWED_ALGORITHMS
# WIT-SVID §2.2 and WIMSE Workload Credentials §3.1 (explicit typing, RFC 8725 §3.11).
WIT_TYPE = "wit+jwt"
# WIT-SVID §2.3 (the second one, "Additional Header Parameters"): implementations SHOULD
# NOT add header parameters. trustd never does, and refuses them when validating: `jwk`,
# `jku`, `x5u`, `x5c` would name a key chosen by the sender (RFC 8725 §3.10) and `crit`
# would require understanding extensions trustd does not know (RFC 7515 §4.1.11).
ALLOWED_HEADERS = frozenset({"alg", "kid", "typ"})
# RFC 7517 §4 / RFC 7518 §6: parameters that carry private or symmetric key material. A
# `cnf.jwk` holds the workload's public key only (RFC 7800 §3.2).
_PRIVATE_JWK_PARAMS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"})
_JTI_BYTES = 32


@dataclass(frozen=True)
class WitSvid:
    """A minted or validated WIT-SVID and the claims trustd relies on: the subject, the
    workload key it is bound to (``cnf.jwk``) and the algorithm proofs must use."""

    token: str
    spiffe_id: SpiffeId
    workload_key: PublicKey
    workload_alg: str
    expiry: datetime
    issued_at: datetime | None
    kid: str
    jti: str | None

    def __post_init__(self) -> None:
        for name in ("expiry", "issued_at"):
            value = getattr(self, name)
            if value is None:
                continue
            if value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware, got {value!r}")
            object.__setattr__(self, name, value.astimezone(UTC))

    def __repr__(self) -> str:
        # Not a bearer token, but still a credential: keep it out of reprs and logs.
        return (
            f"WitSvid(spiffe_id={str(self.spiffe_id)!r}, kid={self.kid!r}, "
            f"jti={self.jti!r}, expiry={self.expiry.isoformat()!r})"
        )


def _signing_algorithm(key: PrivateKey | PublicKey, what: str) -> str:
    try:
        alg = jws_algorithm(key)
    except WeakKey as exc:
        raise WeakKey(f"{what}: {exc.detail}", key_type=describe_key(key)) from None
    if alg not in ALLOWED_ALGORITHMS:
        raise WeakKey(
            f"{describe_key(key)} keys cannot be {what}: WIT-SVID §2.3/§3.2 allow only "
            f"{', '.join(ALLOWED_ALGORITHMS)}",
            key_type=describe_key(key),
        )
    return alg


def workload_jwk(key: PublicKey) -> dict[str, Any]:
    """The ``cnf.jwk`` for the workload key *key*: its public JWK with ``alg`` set
    (WIMSE Workload Credentials §3.1: ``alg`` MUST be present; WIT-SVID §3.2: one of
    :data:`CNF_ALGORITHMS`). RSA keys get RS256.

    Raises:
        WeakKey: *key* is not allowed or has no WIT-SVID algorithm (Ed25519, ML-DSA).
    """
    key = allowed_public_key(key)
    alg = _signing_algorithm(key, "bound to WIT-SVIDs")
    return {**public_key_to_jwk(key), "alg": alg}


def workload_private_jwk(key: PrivateKey) -> dict[str, Any]:
    """The private JWK (RFC 7517, RFC 7518 §6.2.2 / §6.3.2) of the workload key *key*, with
    the ``alg`` its proofs must use: what the Workload API hands the workload with its
    WIT-SVID (``WITSVID.wit_svid_key``). Never log or store it.

    Raises:
        WeakKey: *key* has no WIT-SVID algorithm (Ed25519, ML-DSA).
    """
    alg = _signing_algorithm(key, "bound to WIT-SVIDs")
    signer = jose_private_key(key)
    if isinstance(signer, rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(signer, as_dict=True)
    else:
        assert isinstance(signer, ec.EllipticCurvePrivateKey)  # the only other with an alg
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(signer, as_dict=True)
    return {**jwk, "alg": alg}


def parse_workload_jwk(jwk: object) -> tuple[PublicKey, str]:
    """The workload public key and proof algorithm a ``cnf.jwk`` (or a request's JWK) names.

    Raises:
        InvalidWit: not a JSON object, private key material, no allowed ``alg``, an
            unusable key, or an ``alg`` that does not fit the key.
    """
    if not isinstance(jwk, Mapping):
        raise InvalidWit("WIMSE Workload Credentials §3.1: cnf.jwk must be a JSON object")
    private = sorted(set(jwk) & _PRIVATE_JWK_PARAMS)
    if private:
        raise InvalidWit(
            f"RFC 7800 §3.2: the workload JWK must be public, it has {', '.join(private)}"
        )
    alg = jwk.get("alg")
    if not isinstance(alg, str) or alg not in CNF_ALGORITHMS:
        raise InvalidWit(f"WIT-SVID §3.2: cnf.jwk.alg {echo(alg)} is not allowed", alg=echo(alg))
    try:
        key = public_key_from_jwk(jwk)
    except InvalidBundle as exc:
        raise InvalidWit(f"cnf.jwk is not a usable public key: {exc.detail}") from None
    try:
        # RFC 8725 §3.1: the algorithm must be the one the key is for.
        require_matching_key(alg, key)
    except InvalidJwt as exc:
        raise InvalidWit(f"cnf.jwk: {exc.detail}") from None
    return key, alg


def mint_wit_svid(
    key: PrivateKey,
    kid: str,
    spiffe_id: SpiffeId,
    workload_key: PublicKey | Mapping[str, Any],
    ttl: timedelta,
    clock: Clock,
) -> WitSvid:
    """Sign a WIT-SVID binding *workload_key* (a public key, or its JWK with ``alg``) to
    *spiffe_id* until now + *ttl*.

    The header is exactly ``{"alg", "kid", "typ": "wit+jwt"}`` (WIT-SVID §4: all three MUST
    be set). The claims are ``sub``, ``exp`` and ``cnf`` (MUST) and ``jti``, ``nbf``,
    ``iat`` (SHOULD). No ``iss``: WIT-SVID §3.7 makes it optional and warns against an OIDC
    discoverable one (the trust domain in ``sub`` names the issuer). No ``aud``: neither
    document defines one for a WIT, and without it a JWT-SVID validator refuses the token
    (JWT-SVID §3.2), as WIT-SVID §7.1 asks.

    Raises:
        InvalidWit: *kid* is empty, *ttl* is shorter than one second, or the workload JWK
            is refused (see :func:`parse_workload_jwk`).
        WeakKey: *key* or *workload_key* has no WIT-SVID algorithm (e.g. Ed25519).
    """
    alg = _signing_algorithm(key, "sign WIT-SVIDs")
    if not isinstance(kid, str) or not kid:
        # WIT-SVID §2.1: kid MUST be present.
        raise InvalidWit("kid must be a non-empty string")
    if isinstance(workload_key, Mapping):
        public, _ = parse_workload_jwk(workload_key)
    else:
        public = workload_key
    cnf_jwk = workload_jwk(public)
    lifetime = math.floor(ttl.total_seconds())
    if lifetime < 1:
        raise InvalidWit(f"ttl must be at least one second, got {ttl}")
    issued_at = math.floor(clock.now().timestamp())
    claims: dict[str, Any] = {
        "sub": str(spiffe_id),
        "exp": issued_at + lifetime,
        # WIT-SVID §3.5: nbf SHOULD be set; it is the issuance time, not backdated: the
        # validator's leeway covers clock skew.
        "nbf": issued_at,
        "iat": issued_at,
        # WIT-SVID §3.3: negligible collision probability within the trust domain.
        "jti": secrets.token_urlsafe(_JTI_BYTES),
        "cnf": {"jwk": cnf_jwk},
    }
    token = jwt.encode(
        claims, jose_private_key(key), algorithm=alg, headers={"kid": kid, "typ": WIT_TYPE}
    )
    # Validate what was signed, with the code that validates foreign tokens.
    return validate_wit_svid(
        token, {kid: key.public_key()}, clock, spiffe_id.trust_domain, presented_key=public
    )


def _check_header(header: Mapping[str, Any]) -> tuple[str, str]:
    extra = sorted(set(header) - ALLOWED_HEADERS)
    if extra:
        raise InvalidWit(
            f"WIT-SVID §2.3: header parameters {', '.join(map(repr, extra))} are not allowed",
            headers=extra,
        )
    alg = header.get("alg")
    # WIT-SVID §2.3: validators MUST reject an unsupported alg; checked before any key use.
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise InvalidWit(f"WIT-SVID §2.3: alg {echo(alg)} is not allowed", alg=echo(alg))
    typ = header.get("typ")
    # WIT-SVID §2.2: typ MUST be present and set to wit+jwt. RFC 7515 §4.1.9: media types
    # compare case-insensitively and may carry the "application/" prefix.
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != WIT_TYPE:
        raise InvalidWit(f"WIT-SVID §2.2: typ must be {WIT_TYPE}, got {echo(typ)}")
    kid = header.get("kid")
    # WIT-SVID §2.1: kid MUST be present (unlike in a WIMSE WIT or a JWT-SVID).
    if not isinstance(kid, str) or not kid:
        raise InvalidWit("WIT-SVID §2.1: token header has no kid")
    return alg, kid


def validate_wit_svid(
    token: str,
    keys: Mapping[str, PublicKey],
    clock: Clock,
    trust_domain: TrustDomain,
    *,
    presented_key: PublicKey | None = None,
    leeway: timedelta = timedelta(seconds=0),
) -> WitSvid:
    """Validate a WIT-SVID of *trust_domain* against its WIT-SVID signing keys *keys*
    (kid -> key: the bundle's ``wit-svid`` entries only, WIT-SVID §6.2).

    With *presented_key* (the key the presenter proved possession of), the token must be
    bound to that key: a WIT-SVID bound to one key is refused with another (WIT-SVID §4,
    §7.1). Without it the caller has checked no proof yet and must not accept the token as
    an authentication on its own.

    Raises:
        InvalidWit: the token is malformed; its header has other parameters than
            alg/kid/typ, an ``alg`` not allowed or not matching the key, a ``typ`` other
            than wit+jwt, or no or an unknown ``kid``; the signature is bad; ``exp`` is
            missing or not after ``clock.now()`` (less *leeway*); ``nbf`` is in the future;
            ``sub`` is not a SPIFFE ID of *trust_domain*; ``cnf.jwk`` is missing or refused;
            or the token is bound to a key other than *presented_key*.
    """
    if leeway < timedelta(0):
        raise InvalidWit(f"leeway must not be negative, got {leeway}")
    if not isinstance(token, str):
        raise InvalidWit(f"token must be a string, got {type(token).__name__}")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidWit(f"token is longer than {MAX_TOKEN_BYTES} bytes")
    # WIT-SVID §1: JWS compact serialization only.
    if COMPACT_JWS.fullmatch(token) is None:
        raise InvalidWit("token is not a JWS compact serialization (header.payload.signature)")
    try:
        header = b64url_json(token.split(".")[0], "header")
    except InvalidJwt as exc:
        raise InvalidWit(exc.detail) from None
    alg, kid = _check_header(header)
    key = keys.get(kid)
    if key is None:
        raise InvalidWit(f"token kid {echo(kid)} is not a known WIT-SVID signing key", kid=kid)
    try:
        require_matching_key(alg, key)
        verifier = jose_public_key(key)
    except (InvalidJwt, WeakKey) as exc:
        raise InvalidWit(f"token kid {echo(kid)}: {exc.detail}") from None
    try:
        decoded = jwt.PyJWS().decode_complete(token, verifier, algorithms=[alg])
    except jwt.InvalidSignatureError:
        raise InvalidWit("token signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise InvalidWit(f"token could not be verified: {exc}") from None
    try:
        claims = json.loads(decoded["payload"], object_pairs_hook=reject_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidWit(f"token payload is not JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise InvalidWit("token payload is not a JSON object")
    try:
        return _check_claims(token, claims, kid, clock, trust_domain, presented_key, leeway)
    except InvalidWit:
        raise
    except InvalidJwt as exc:  # the NumericDate helpers shared with JWT-SVIDs
        raise InvalidWit(exc.detail) from None


def _check_claims(
    token: str,
    claims: Mapping[str, Any],
    kid: str,
    clock: Clock,
    trust_domain: TrustDomain,
    presented_key: PublicKey | None,
    leeway: timedelta,
) -> WitSvid:
    now = clock.now()
    # WIT-SVID §3.3 (Expiry): exp MUST be present and the token rejected once it has
    # passed (RFC 7519 §4.1.4: on or after exp).
    exp = numeric_date(claims, "exp")
    if exp is None:
        raise InvalidWit("WIT-SVID §3.3: token has no exp claim")
    expiry = to_datetime(exp, "exp")
    if now >= expiry + leeway:
        raise InvalidWit(f"token expired at {expiry.isoformat()}", expired_at=expiry.isoformat())
    # WIT-SVID §3.5: reject when nbf is in the future.
    nbf = numeric_date(claims, "nbf")
    if nbf is not None and now + leeway < to_datetime(nbf, "nbf"):
        raise InvalidWit("WIT-SVID §3.5: token is not valid yet (nbf is in the future)")
    # WIT-SVID §3.6: iat SHOULD be present and is for audit only, never a validity bound.
    iat = numeric_date(claims, "iat")
    issued_at = to_datetime(iat, "iat") if iat is not None else None
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not jti):
        raise InvalidWit(f"RFC 7519 §4.1.7: jti must be a non-empty string, got {echo(jti)}")

    # WIT-SVID §3.1: sub MUST be the workload's SPIFFE ID. WIMSE Workload Credentials §6.1:
    # an identifier is judged in its own trust domain only, by that domain's keys.
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise InvalidWit("WIT-SVID §3.1: token has no sub claim")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except InvalidSpiffeId as exc:
        raise InvalidWit(f"WIT-SVID §3.1: sub is not a SPIFFE ID: {exc.detail}") from None
    if not spiffe_id.path:
        # SPIFFE-ID §2.2: the path names the workload; without one the ID is the trust domain.
        raise InvalidWit(f"WIT-SVID §3.1: sub {echo(sub)} names a trust domain, not a workload")
    if not spiffe_id.is_member_of(trust_domain):
        raise InvalidWit(
            f"sub {echo(sub)} is not in trust domain {echo(trust_domain.name)}, whose keys "
            "validated it",
            trust_domain=trust_domain.name,
        )

    # WIT-SVID §3.2, WIMSE Workload Credentials §3.1: cnf.jwk MUST hold the workload key.
    cnf = claims.get("cnf")
    if not isinstance(cnf, Mapping) or "jwk" not in cnf:
        raise InvalidWit("WIT-SVID §3.2: token has no cnf.jwk claim")
    workload_key, workload_alg = parse_workload_jwk(cnf["jwk"])
    # WIT-SVID §4, §7.1: only the holder of the cnf key may present the token.
    if presented_key is not None and not same_public_key(workload_key, presented_key):
        raise InvalidWit(
            "WIT-SVID §7.1: the token is bound to another key than the one presented",
            spiffe_id=str(spiffe_id),
        )
    return WitSvid(
        token=token,
        spiffe_id=spiffe_id,
        workload_key=workload_key,
        workload_alg=workload_alg,
        expiry=expiry,
        issued_at=issued_at,
        kid=kid,
        jti=jti,
    )


# --------------------------------------------------------------------------------------
# Workload Proof Tokens (draft-ietf-wimse-wpt §3): the proof of possession of the cnf key.

# draft-ietf-wimse-wpt §3: explicitly typed (RFC 8725 §3.11).
WPT_TYPE = "wpt+jwt"
# §3: "WPT lifetimes MUST be short, e.g., on the order of minutes or seconds", and ones
# expiring unreasonably far in the future SHOULD be rejected: five minutes at most.
MAX_WPT_LIFETIME = timedelta(minutes=5)
# The draft names alg and typ; kid is harmless (the key is the WIT's cnf key whatever it
# says), anything naming another key (jwk, jku, x5c, x5u) or crit is refused as for WITs.
_WPT_HEADERS = frozenset({"alg", "typ", "kid"})


def token_hash(value: str) -> str:
    """draft-ietf-wimse-wpt §3 (wth, tth, oth): base64url (RFC 7515 §2) of SHA-256 over
    the token's ASCII bytes."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class WorkloadProof:
    """A validated Workload Proof Token. Its ``jti`` is for the caller's replay cache
    (draft-ietf-wimse-wpt §3: RECOMMENDED, within the proof's validity window)."""

    jti: str
    audience: tuple[str, ...]
    expiry: datetime


def mint_wpt(
    key: PrivateKey,
    wit: WitSvid,
    audience: str,
    clock: Clock,
    ttl: timedelta = timedelta(seconds=60),
    *,
    txn_token: str | None = None,
    other_tokens: Mapping[str, str] | None = None,
) -> str:
    """A Workload Proof Token for a request to *audience* (the target URI, without query
    and fragment), signed with the WIT-SVID's cnf key *key*.

    Raises:
        InvalidWit: *key* is not the key *wit* is bound to, or *ttl* is out of range.
    """
    if not same_public_key(key.public_key(), wit.workload_key):
        raise InvalidWit("the proof key is not the key the WIT-SVID is bound to")
    if not timedelta(seconds=1) <= ttl <= MAX_WPT_LIFETIME:
        raise InvalidWit(f"a WPT lives between 1 s and {MAX_WPT_LIFETIME}, got {ttl}")
    now = math.floor(clock.now().timestamp())
    claims: dict[str, Any] = {
        "aud": audience,
        "exp": now + math.floor(ttl.total_seconds()),
        # §3: 128 bits of pseudorandom data at least.
        "jti": secrets.token_urlsafe(16),
        "wth": token_hash(wit.token),
    }
    if txn_token is not None:
        claims["tth"] = token_hash(txn_token)
    if other_tokens:
        claims["oth"] = {name.lower(): token_hash(v.strip()) for name, v in other_tokens.items()}
    # §3: alg MUST be the cnf.jwk.alg of the WIT.
    return jwt.encode(
        claims, jose_private_key(key), algorithm=wit.workload_alg, headers={"typ": WPT_TYPE}
    )


def validate_wpt(
    proof: str,
    wit: WitSvid,
    audience: str,
    clock: Clock,
    *,
    txn_token: str | None = None,
    other_tokens: Mapping[str, str] | None = None,
    leeway: timedelta = timedelta(seconds=0),
) -> WorkloadProof:
    """Check that *proof* proves possession of the key *wit* (already validated) is bound
    to, for a request to *audience*, as draft-ietf-wimse-wpt §3 lists. *txn_token* and
    *other_tokens* (header name -> value) are the context tokens the request carried.

    Raises:
        InvalidWit: malformed; a header other than alg/typ/kid; ``alg`` not the WIT's
            ``cnf.jwk.alg``; ``typ`` not wpt+jwt; a bad signature; ``aud`` without
            *audience*; ``exp`` missing, passed or too far ahead; no ``jti``; ``wth`` not
            the WIT's hash; ``tth``/``oth`` missing for a token carried, or naming one not
            carried or with another hash.
    """
    if not isinstance(proof, str) or len(proof) > MAX_TOKEN_BYTES:
        raise InvalidWit(f"the WPT is not a string of at most {MAX_TOKEN_BYTES} bytes")
    if COMPACT_JWS.fullmatch(proof) is None:
        raise InvalidWit("the WPT is not a JWS compact serialization")
    try:
        header = b64url_json(proof.split(".")[0], "header")
    except InvalidJwt as exc:
        raise InvalidWit(f"WPT: {exc.detail}") from None
    extra = sorted(set(header) - _WPT_HEADERS)
    if extra:
        raise InvalidWit(f"WPT header parameters {', '.join(map(repr, extra))} are not allowed")
    # §3: alg string-equal to the WIT's cnf.jwk.alg (so never none, never HMAC).
    if header.get("alg") != wit.workload_alg:
        raise InvalidWit(
            f"WPT alg {echo(header.get('alg'))} is not the WIT-SVID's cnf alg {wit.workload_alg}"
        )
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != WPT_TYPE:
        raise InvalidWit(f"WPT typ must be {WPT_TYPE}, got {echo(typ)}")
    try:
        decoded = jwt.PyJWS().decode_complete(
            proof, jose_public_key(wit.workload_key), algorithms=[wit.workload_alg]
        )
        claims = json.loads(decoded["payload"], object_pairs_hook=reject_duplicate_keys)
    except jwt.InvalidSignatureError:
        raise InvalidWit("the WPT is not signed by the key the WIT-SVID is bound to") from None
    except (jwt.PyJWTError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidWit(f"the WPT could not be verified: {exc}") from None
    if not isinstance(claims, dict):
        raise InvalidWit("the WPT payload is not a JSON object")
    try:
        return _check_proof(claims, wit, audience, clock, txn_token, other_tokens, leeway)
    except InvalidWit:
        raise
    except InvalidJwt as exc:
        raise InvalidWit(f"WPT: {exc.detail}") from None


def _check_proof(
    claims: Mapping[str, Any],
    wit: WitSvid,
    audience: str,
    clock: Clock,
    txn_token: str | None,
    other_tokens: Mapping[str, str] | None,
    leeway: timedelta,
) -> WorkloadProof:
    now = clock.now()
    exp = numeric_date(claims, "exp")
    if exp is None:
        raise InvalidWit("the WPT has no exp claim")
    expiry = to_datetime(exp, "exp")
    if now >= expiry + leeway:
        raise InvalidWit(f"the WPT expired at {expiry.isoformat()}")
    if expiry - now > MAX_WPT_LIFETIME + leeway:
        raise InvalidWit(f"the WPT expires more than {MAX_WPT_LIFETIME} from now")
    aud = claims.get("aud")
    audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
    # §3: aud matches the request's target URI (the caller normalises it).
    if audience not in audiences:
        raise InvalidWit(f"the WPT is for {echo(aud)}, not {echo(audience)}")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise InvalidWit("the WPT has no jti claim")
    # §3: wth binds the proof to this very WIT.
    if claims.get("wth") != token_hash(wit.token):
        raise InvalidWit("the WPT's wth is not the hash of this WIT-SVID")
    tth = claims.get("tth")
    if txn_token is not None and tth != token_hash(txn_token):
        raise InvalidWit("the WPT's tth does not match the Txn-Token presented")
    if txn_token is None and tth is not None:
        raise InvalidWit("the WPT binds a Txn-Token the request does not carry")
    oth = claims.get("oth")
    carried = {name.lower(): token_hash(v.strip()) for name, v in (other_tokens or {}).items()}
    if oth is not None and not isinstance(oth, dict):
        raise InvalidWit("the WPT's oth must be a JSON object")
    # §3: entries not understood reject the WPT; tokens it does not cover cannot be used.
    if (oth or {}) != carried:
        raise InvalidWit("the WPT's oth does not cover exactly the tokens presented")
    return WorkloadProof(jti=jti, audience=audiences, expiry=expiry)


def validate_presentation(
    wit_token: str,
    proof: str,
    keys: Mapping[str, PublicKey],
    trust_domain: TrustDomain,
    audience: str,
    clock: Clock,
    *,
    txn_token: str | None = None,
    other_tokens: Mapping[str, str] | None = None,
    leeway: timedelta = timedelta(seconds=0),
) -> tuple[WitSvid, WorkloadProof]:
    """A WIT-SVID presented with its Workload Proof Token, as a relying party checks them:
    the WIT-SVID first (draft-ietf-wimse-wpt §3), then the proof of its cnf key.

    Raises:
        InvalidWit: see :func:`validate_wit_svid` and :func:`validate_wpt`.
    """
    wit = validate_wit_svid(wit_token, keys, clock, trust_domain, leeway=leeway)
    proof_of = validate_wpt(
        proof,
        wit,
        audience,
        clock,
        txn_token=txn_token,
        other_tokens=other_tokens,
        leeway=leeway,
    )
    return wit, proof_of
