"""JWT-SVIDs: minting and validation (SPIFFE JWT-SVID spec).

Validation does the JOSE header checks itself, before any key is touched, and uses PyJWT
only to check the signature over the exact bytes received.  PyJWT's claim checks are not
used because they read the wall clock (``time.time()``); expiry is checked against the
injected :class:`~pki.clock.Clock` instead.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from pki.clock import Clock
from pki.errors import InvalidJwt, InvalidSpiffeId, WeakKey, echo
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
    MlDsaPublicKey,
    PrivateKey,
    PublicKey,
    describe_key,
    jose_private_key,
    jose_public_key,
    jws_algorithm,
)
from pki.spiffe_id import SpiffeId, TrustDomain

# JWT-SVID §2.1: the only permitted `alg` values (RFC 7518 §3.3-3.5).  Never `none`, never
# HMAC, and not EdDSA, which the spec does not list.
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
# JWT-SVID §2: "Any header not described here, registered or private, MUST NOT be included."
ALLOWED_HEADERS = frozenset({"alg", "kid", "typ"})
# JWT-SVID §2.3: if set, typ MUST be JWT or JOSE.
ALLOWED_TYPES = frozenset({"JWT", "JOSE"})


@dataclass(frozen=True)
class JwtSvid:
    """A minted or validated JWT-SVID and the claims trustd relies on."""

    token: str
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expiry: datetime
    issued_at: datetime
    kid: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "audience", tuple(self.audience))
        for name in ("expiry", "issued_at"):
            value = getattr(self, name)
            if value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware, got {value!r}")
            object.__setattr__(self, name, value.astimezone(UTC))

    def __repr__(self) -> str:
        # The token is a bearer credential: keep it out of reprs, logs and tracebacks.
        return (
            f"JwtSvid(spiffe_id={str(self.spiffe_id)!r}, audience={self.audience!r}, "
            f"expiry={self.expiry.isoformat()!r}, kid={self.kid!r})"
        )


def _jwt_svid_algorithm(key: PrivateKey | PublicKey) -> str:
    alg = jws_algorithm(key)
    if alg not in ALLOWED_ALGORITHMS:
        # JWT-SVID §2.1: EdDSA (Ed25519) is not a permitted JWT-SVID algorithm.
        raise WeakKey(
            f"{describe_key(key)} keys cannot sign JWT-SVIDs: JWT-SVID §2.1 allows only "
            f"{', '.join(ALLOWED_ALGORITHMS)}",
            key_type=describe_key(key),
        )
    return alg


MAX_AUDIENCE = 2048
# Control characters (Cc: NUL, newlines, ESC), format characters (Cf: the bidi overrides
# and isolates U+202A-202E, U+2066-2069, zero-width joiners), line and paragraph
# separators and lone surrogates: an audience is compared byte for byte by the relying
# party (RFC 7519 §4.1.3), and such characters make two different audiences look alike
# in logs, audit rows and the UI (Unicode TR #36 §2, "Visual Security Issues").
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def audience_problem(value: str) -> str | None:
    """Why `value` cannot be a JWT-SVID audience, or None: at most 2048 characters, not
    blank, with no control, format (bidi) or unassigned characters."""
    if len(value) > MAX_AUDIENCE:
        return f"longer than {MAX_AUDIENCE} characters"
    if not value.strip():
        return "only whitespace"
    for ch in value:
        if unicodedata.category(ch) in _INVISIBLE_CATEGORIES:
            return f"contains U+{ord(ch):04X} ({unicodedata.category(ch)})"
    return None


def mint_jwt_svid(
    key: PrivateKey,
    kid: str,
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    ttl: timedelta,
    clock: Clock,
) -> JwtSvid:
    """Sign a JWT-SVID for *spiffe_id*, valid for *audience* until now + *ttl*.

    The header is exactly ``{"alg", "kid", "typ": "JWT"}``; the claims are ``sub``,
    ``aud`` (always a list), ``exp`` and ``iat``.  A single string *audience* is taken as
    one audience.

    Raises:
        InvalidJwt: *audience* is empty, repeats a value or has one `audience_problem`
            refuses, *kid* is empty, or *ttl* is shorter than one second.
        WeakKey: *key* cannot produce a JWT-SVID algorithm (e.g. Ed25519).
    """
    alg = _jwt_svid_algorithm(key)
    if not isinstance(kid, str) or not kid:
        raise InvalidJwt("kid must be a non-empty string")
    audiences = (audience,) if isinstance(audience, str) else tuple(audience)
    # JWT-SVID §3.2: aud MUST contain one or more values.
    if not audiences:
        raise InvalidJwt("JWT-SVID §3.2: audience must contain at least one value")
    for entry in audiences:
        if not isinstance(entry, str) or not entry:
            raise InvalidJwt(
                f"JWT-SVID §3.2: audience entries must be non-empty strings, got {echo(entry)}"
            )
        problem = audience_problem(entry)
        if problem is not None:
            raise InvalidJwt(f"audience {echo(entry)}: {problem}")
    if len(set(audiences)) != len(audiences):
        raise InvalidJwt(f"audience values must be distinct, got {echo(list(audiences))}")
    lifetime = math.floor(ttl.total_seconds())
    if lifetime < 1:
        raise InvalidJwt(f"ttl must be at least one second, got {ttl}")
    issued_at = math.floor(clock.now().timestamp())
    expiry = issued_at + lifetime
    claims: dict[str, Any] = {
        "sub": str(spiffe_id),
        "aud": list(audiences),
        "exp": expiry,
        "iat": issued_at,
    }
    signer = jose_private_key(key)
    token = jwt.encode(claims, signer, algorithm=alg, headers={"kid": kid, "typ": "JWT"})
    # Validate what was signed, with the same code that validates foreign tokens.
    return validate_jwt_svid(token, {kid: key.public_key()}, audiences[0], clock)


def validated_claims(token: str) -> dict[str, Any]:
    """The claims of *token*, which :func:`validate_jwt_svid` has already accepted.

    Decodes only; it checks nothing, so never call it on a token that was not validated.

    Raises:
        InvalidJwt: the token is not a JWS compact serialization with a JSON payload.
    """
    if COMPACT_JWS.fullmatch(token) is None:
        raise InvalidJwt("token is not a JWS compact serialization (header.payload.signature)")
    return b64url_json(token.split(".")[1], "payload")


def validate_jwt_svid(
    token: str,
    keys: Mapping[str, PublicKey],
    audience: str,
    clock: Clock,
    trust_domain: TrustDomain | None = None,
    leeway: timedelta = timedelta(seconds=0),
) -> JwtSvid:
    """Validate a JWT-SVID for *audience* against the signing keys in *keys* (kid -> key).

    Raises:
        InvalidJwt: the token is malformed; its ``alg`` is not allowed or does not match the
            key; ``kid`` is missing or unknown; it has headers other than alg/kid/typ or a
            ``typ`` other than JWT/JOSE; the signature is bad; ``exp`` is missing or not
            after ``clock.now()`` (less *leeway*); ``nbf`` is in the future; ``iat`` is
            missing; ``aud`` is missing or lacks *audience*; or ``sub`` is not a SPIFFE ID
            (in *trust_domain*, when given).
    """
    if leeway < timedelta(0):
        raise InvalidJwt(f"leeway must not be negative, got {leeway}")
    if not isinstance(token, str):
        raise InvalidJwt(f"token must be a string, got {type(token).__name__}")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidJwt(f"token is longer than {MAX_TOKEN_BYTES} bytes")
    # JWT-SVID §5.1: JWS Compact Serialization only: header.payload.signature.
    if COMPACT_JWS.fullmatch(token) is None:
        raise InvalidJwt("token is not a JWS compact serialization (header.payload.signature)")
    parts = token.split(".")
    header = b64url_json(parts[0], "header")

    extra = sorted(set(header) - ALLOWED_HEADERS)
    if extra:
        raise InvalidJwt(
            f"JWT-SVID §2: header parameters {', '.join(map(repr, extra))} are not allowed",
            headers=extra,
        )
    alg = header.get("alg")
    # JWT-SVID §2.1 / §4: check alg against the allow-list before any processing.
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise InvalidJwt(f"JWT-SVID §2.1: alg {echo(alg)} is not allowed", alg=echo(alg))
    if "typ" in header and header["typ"] not in ALLOWED_TYPES:
        raise InvalidJwt(f"JWT-SVID §2.3: typ must be JWT or JOSE, got {echo(header['typ'])}")
    kid = header.get("kid")
    # JWT-SVID §2.2 makes kid optional, but without it we would have to try every key;
    # trustd always sets it and requires it.
    if not isinstance(kid, str) or not kid:
        raise InvalidJwt("token header has no kid")
    key = keys.get(kid)
    if key is None:
        raise InvalidJwt(f"token kid {echo(kid)} is not a known JWT-SVID signing key", kid=kid)
    require_matching_key(alg, key)
    if isinstance(key, MlDsaPublicKey):  # no JWS algorithm matches it
        raise InvalidJwt(f"token kid {echo(kid)} names an ML-DSA key, which signs no JWT")

    try:
        decoded = jwt.PyJWS().decode_complete(token, jose_public_key(key), algorithms=[alg])
    except jwt.InvalidSignatureError:
        raise InvalidJwt("token signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise InvalidJwt(f"token could not be verified: {exc}") from None
    payload = decoded["payload"]
    try:
        claims = json.loads(payload, object_pairs_hook=reject_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJwt(f"token payload is not JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise InvalidJwt("token payload is not a JSON object")

    now = clock.now()
    # JWT-SVID §3.3: exp MUST be set; RFC 7519 §4.1.4: reject on or after exp.
    exp = numeric_date(claims, "exp")
    if exp is None:
        raise InvalidJwt("JWT-SVID §3.3: token has no exp claim")
    expiry = to_datetime(exp, "exp")
    if now >= expiry + leeway:
        raise InvalidJwt(f"token expired at {expiry.isoformat()}", expired_at=expiry.isoformat())
    # RFC 7519 §4.1.5: not before nbf (optional claim).
    nbf = numeric_date(claims, "nbf")
    if nbf is not None and now + leeway < to_datetime(nbf, "nbf"):
        raise InvalidJwt("token is not valid yet (nbf is in the future)")
    iat = numeric_date(claims, "iat")
    if iat is None:
        raise InvalidJwt("token has no iat claim")
    issued_at = to_datetime(iat, "iat")

    # JWT-SVID §3.2: aud MUST be present with one or more values, and the validator's own
    # audience MUST be among them.
    aud = claims.get("aud")
    audiences: tuple[str, ...]
    if isinstance(aud, str):
        audiences = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        audiences = tuple(aud)
    else:
        raise InvalidJwt(f"JWT-SVID §3.2: aud must be a string or list of strings, got {echo(aud)}")
    if not audiences or not all(audiences):
        raise InvalidJwt("JWT-SVID §3.2: aud must contain one or more non-empty values")
    if audience not in audiences:
        raise InvalidJwt(
            f"JWT-SVID §3.2: token audience {echo(list(audiences))} does not include "
            f"{echo(audience)}"
        )

    # JWT-SVID §3.1: sub MUST be the SPIFFE ID of the workload.
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise InvalidJwt("JWT-SVID §3.1: token has no sub claim")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except InvalidSpiffeId as exc:
        raise InvalidJwt(f"JWT-SVID §3.1: sub is not a SPIFFE ID: {exc.detail}") from None
    if trust_domain is not None and not spiffe_id.is_member_of(trust_domain):
        raise InvalidJwt(
            f"sub {echo(sub)} is not in trust domain {echo(trust_domain.name)}",
            trust_domain=trust_domain.name,
        )
    return JwtSvid(
        token=token,
        spiffe_id=spiffe_id,
        audience=audiences,
        expiry=expiry,
        issued_at=issued_at,
        kid=kid,
    )
