"""The JOSE steps JWT-SVIDs and WIT-SVIDs share: the compact serialization's shape, strict
base64url JSON segments, NumericDate claims, and the key-to-algorithm match (RFC 7515, RFC
7519, RFC 8725). Errors are :class:`~pki.errors.InvalidJwt`; each token format says which
of its own rules a value broke.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pki.errors import InvalidJwt, WeakKey, echo
from pki.keys import PublicKey, allowed_public_key, describe_key

# Far larger than any real JWT-SVID or WIT-SVID; bounds the work done on hostile input.
MAX_TOKEN_BYTES = 16384

# RFC 7515 §7.1: three base64url segments, no padding, nothing else.
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

_EC_ALG_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


def b64url_json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
        value = json.loads(raw, object_pairs_hook=reject_duplicate_keys)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidJwt(f"token {what} is not base64url-encoded JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidJwt(f"token {what} is not a JSON object")
    return value


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 step 4: duplicate header names must be rejected (or only the last
    # used).  Different parsers picking different duplicates is how confusion bugs start.
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate member {name!r}")
        result[name] = value
    return result


def require_matching_key(alg: str, key: PublicKey) -> None:
    """RFC 8725 §3.1: use the algorithm the key was meant for, never the one asked for."""
    try:
        allowed_public_key(key)
    except WeakKey as exc:
        raise InvalidJwt(f"signing key for this kid is not allowed: {exc.detail}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        expected = _EC_ALG_BY_CURVE.get(key.curve.name)
        if alg != expected:
            raise InvalidJwt(
                f"alg {alg} does not match the {describe_key(key)} key (expected {expected})"
            )
        return
    if isinstance(key, rsa.RSAPublicKey):
        if alg not in _RSA_ALGS:
            raise InvalidJwt(f"alg {alg} does not match the {describe_key(key)} key")
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        # JWT-SVID §2.1 and WIT-SVID §2.3 list no EdDSA algorithm.
        raise InvalidJwt("Ed25519 (EdDSA) keys cannot validate JWT-SVIDs or WIT-SVIDs")
    raise InvalidJwt(f"{describe_key(key)} keys cannot validate JWT-SVIDs or WIT-SVIDs")


def numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # RFC 7519 §2: NumericDate is a JSON number; bool is a JSON literal, not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJwt(f"claim {name} must be a NumericDate, got {echo(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidJwt(f"claim {name} is out of range: {echo(value)}")
    return number


def to_datetime(value: float, name: str) -> datetime:
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidJwt(f"claim {name} is out of range: {echo(value)}") from None
