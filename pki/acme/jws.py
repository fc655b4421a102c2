"""JSON Web Signatures as RFC 8555 §6.2 restricts them, with an explicit algorithm allow-list.

Only the flattened JSON serialization with a protected header is accepted. Account keys sign
with ES256, ES384, RS256, PS256 or EdDSA (Ed25519); `none` and every MAC algorithm are refused
(RFC 8555 §6.2: "MUST NOT be none or a MAC-based algorithm"), because a MAC keyed by a key the
request itself carries proves nothing. HMAC appears only in External Account Binding, keyed by
a secret the server holds (§7.3.4).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pki.acme.errors import (
    BadNonce,
    BadPublicKey,
    BadSignatureAlgorithm,
    Malformed,
    Unauthorized,
)
from pki.errors import WeakKey
from pki.keys import PublicKey, allowed_public_key, same_public_key

ALLOWED_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
EAB_ALGORITHMS = ("HS256", "HS384", "HS512")

_EC_CURVES: dict[str, tuple[ec.EllipticCurve, int, str]] = {
    # crv -> (curve, coordinate length in bytes, the one JWS alg that uses it)
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384"}
_HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
# RFC 7517 §4 / RFC 7518 §6: private key members; a JWK carrying them leaks the key.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def b64decode(value: object, what: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2).

    Raises:
        Malformed: *value* is not a base64url string.
    """
    if not isinstance(value, str) or "=" in value:
        raise Malformed(f"{what} must be an unpadded base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise Malformed(f"{what} is not valid base64url") from None


def b64encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(data: bytes) -> str:
    return b64encode(data.lstrip(b"\0") or b"\0")


@dataclass(frozen=True)
class Jwk:
    """An account public key, parsed from a JWK and kept with its canonical public members."""

    key: PublicKey

    @property
    def members(self) -> dict[str, str]:
        """The RFC 7638 §3.2 required members, recomputed from the key so that two encodings
        of one key always yield one thumbprint."""
        key = self.key
        if isinstance(key, ec.EllipticCurvePublicKey):
            crv = _CURVE_NAMES[key.curve.name]
            size = _EC_CURVES[crv][1]
            numbers = key.public_numbers()
            return {
                "crv": crv,
                "kty": "EC",
                "x": b64encode(numbers.x.to_bytes(size, "big")),
                "y": b64encode(numbers.y.to_bytes(size, "big")),
            }
        if isinstance(key, rsa.RSAPublicKey):
            rn = key.public_numbers()
            return {
                "e": _uint(rn.e.to_bytes((rn.e.bit_length() + 7) // 8, "big")),
                "kty": "RSA",
                "n": _uint(rn.n.to_bytes((rn.n.bit_length() + 7) // 8, "big")),
            }
        raw = key.public_bytes_raw()
        return {"crv": "Ed25519", "kty": "OKP", "x": b64encode(raw)}

    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint (SHA-256), base64url."""
        canonical = json.dumps(self.members, sort_keys=True, separators=(",", ":"))
        return b64encode(hashlib.sha256(canonical.encode()).digest())

    def same_key(self, other: Jwk) -> bool:
        return same_public_key(self.key, other.key)


def _coordinate(jwk: Mapping[str, Any], name: str, size: int) -> int:
    raw = b64decode(jwk.get(name), f"JWK member {name!r}")
    # RFC 7518 §6.2.1.2: coordinates are the full field size, left-padded.
    if len(raw) != size:
        raise BadPublicKey(f"JWK member {name!r} must be {size} bytes for this curve")
    return int.from_bytes(raw, "big")


def parse_jwk(value: object) -> Jwk:
    """Parse a public JWK (RFC 7517) of an allowed type: EC P-256/P-384, RSA 2048-8192 bits
    with e=65537, or OKP Ed25519.

    Raises:
        Malformed: not a JWK object, or it carries private key members.
        BadPublicKey: an unsupported key type, curve or size, or an invalid point.
    """
    if not isinstance(value, dict):
        raise Malformed("jwk must be a JSON object")
    if _PRIVATE_MEMBERS & value.keys():
        raise Malformed("jwk must hold a public key only; it carries private key members")
    kty = value.get("kty")
    key: object
    try:
        if kty == "EC":
            crv = value.get("crv")
            if crv not in _EC_CURVES:
                raise BadPublicKey(f"EC curve {crv!r} is not supported; use P-256 or P-384")
            curve, size, _ = _EC_CURVES[str(crv)]
            x, y = _coordinate(value, "x", size), _coordinate(value, "y", size)
            key = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        elif kty == "RSA":
            n = int.from_bytes(b64decode(value.get("n"), "JWK member 'n'"), "big")
            e = int.from_bytes(b64decode(value.get("e"), "JWK member 'e'"), "big")
            key = rsa.RSAPublicNumbers(e, n).public_key()
        elif kty == "OKP":
            if value.get("crv") != "Ed25519":
                raise BadPublicKey(f"OKP curve {value.get('crv')!r} is not supported; use Ed25519")
            raw = b64decode(value.get("x"), "JWK member 'x'")
            key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        else:
            raise BadPublicKey(f"JWK key type {kty!r} is not supported; use EC, RSA or OKP")
        return Jwk(allowed_public_key(key))
    except WeakKey as exc:
        raise BadPublicKey(exc.detail) from None
    except ValueError:
        # Off-curve points, zero moduli, wrong Ed25519 lengths.
        raise BadPublicKey("jwk does not describe a valid public key") from None


def jwk_of(key: PublicKey) -> dict[str, str]:
    """The public JWK of *key* (its RFC 7638 members)."""
    return Jwk(key).members


def _verify(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> None:
    """Raises:
    BadSignatureAlgorithm: *alg* does not fit *key*.
    Malformed: the signature does not verify.
    """
    try:
        if alg in ("ES256", "ES384"):
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise BadSignatureAlgorithm(f"{alg} needs an EC account key")
            curve, size, curve_alg = _EC_CURVES[_CURVE_NAMES[key.curve.name]]
            # RFC 7518 §3.4: ES256 is P-256 with SHA-256, ES384 is P-384 with SHA-384.
            if curve_alg != alg:
                raise BadSignatureAlgorithm(f"{alg} does not match the key's curve {curve.name}")
            if len(signature) != 2 * size:
                raise Malformed(f"an {alg} signature is {2 * size} bytes (R || S)")
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            digest: hashes.HashAlgorithm = hashes.SHA256() if alg == "ES256" else hashes.SHA384()
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
        elif alg in ("RS256", "PS256"):
            if not isinstance(key, rsa.RSAPublicKey):
                raise BadSignatureAlgorithm(f"{alg} needs an RSA account key")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg == "RS256"
                # RFC 7518 §3.5: PS256 uses MGF1 with SHA-256 and a salt as long as the hash.
                else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            )
            key.verify(signature, signing_input, pad, hashes.SHA256())
        elif alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise BadSignatureAlgorithm("EdDSA needs an Ed25519 account key")
            key.verify(signature, signing_input)
        else:  # pragma: no cover - parse_jws admits only ALLOWED_ALGORITHMS
            raise BadSignatureAlgorithm(f"algorithm {alg!r} is not allowed")
    except InvalidSignature:
        raise Malformed("JWS signature verification failed") from None


def _flattened(value: object) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """Split a flattened JWS into (protected header, payload, signature, signing input)."""
    if not isinstance(value, dict):
        raise Malformed("the body must be a flattened JWS JSON object")
    # RFC 8555 §6.2: flattened serialization only; no unprotected header, one signature.
    if "signatures" in value:
        raise Malformed("the general JWS serialization is not allowed; use the flattened one")
    if "header" in value:
        raise Malformed("unprotected JWS headers are not allowed")
    unknown = value.keys() - {"protected", "payload", "signature"}
    if unknown or not {"protected", "payload", "signature"} <= value.keys():
        raise Malformed("a JWS has exactly the members protected, payload and signature")
    raw_protected, raw_payload = value["protected"], value["payload"]
    if not isinstance(raw_protected, str) or not isinstance(raw_payload, str):
        raise Malformed("JWS protected and payload must be strings")
    header_bytes = b64decode(raw_protected, "JWS protected header")
    try:
        header = json.loads(header_bytes)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("JWS protected header is not JSON") from None
    if not isinstance(header, dict):
        raise Malformed("JWS protected header must be a JSON object")
    if "crit" in header:
        # RFC 7515 §4.1.11: we understand no extensions, so a critical one must be refused.
        raise Malformed("JWS 'crit' header parameters are not supported")
    payload = b64decode(raw_payload, "JWS payload")
    signature = b64decode(value["signature"], "JWS signature")
    signing_input = f"{raw_protected}.{raw_payload}".encode("ascii")
    return header, payload, signature, signing_input


@dataclass(frozen=True)
class Jws:
    """A parsed, not yet verified, ACME request JWS."""

    alg: str
    nonce: str | None
    url: str
    jwk: Jwk | None
    kid: str | None
    payload: bytes
    signing_input: bytes
    signature: bytes

    def verify(self, key: Jwk) -> None:
        """Check the signature with *key* (the request's own `jwk`, or the account's key).

        Raises:
            BadSignatureAlgorithm: the algorithm does not fit the key.
            Malformed: the signature does not verify.
        """
        _verify(self.alg, key.key, self.signing_input, self.signature)

    def json_payload(self) -> dict[str, Any] | None:
        """The payload object, or None for a POST-as-GET (empty payload, RFC 8555 §6.3).

        Raises:
            Malformed: the payload is neither empty nor a JSON object.
        """
        if self.payload == b"":
            return None
        try:
            document = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError):
            raise Malformed("the JWS payload is not JSON") from None
        if not isinstance(document, dict):
            raise Malformed("the JWS payload must be a JSON object")
        return document


def _header_string(header: Mapping[str, Any], name: str) -> str | None:
    value = header.get(name)
    if value is not None and not isinstance(value, str):
        raise Malformed(f"JWS header {name!r} must be a string")
    return value


def _algorithm(header: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> str:
    alg = _header_string(header, "alg")
    if alg not in allowed:
        raise BadSignatureAlgorithm(
            f"{what} algorithm {alg!r} is not allowed; use one of {', '.join(allowed)}",
            algorithms=list(allowed),
        )
    return alg


def parse_jws(body: bytes) -> Jws:
    """Parse an ACME request body (RFC 8555 §6.2) without verifying its signature.

    Raises:
        Malformed: not a flattened JWS; no `url`; both or neither of `jwk` and `kid`.
        BadNonce: no `nonce` header.
        BadSignatureAlgorithm: `alg` is not on the allow-list (none, HS*, ...).
        BadPublicKey: the embedded `jwk` is not an allowed key.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the body is not JSON") from None
    header, payload, signature, signing_input = _flattened(document)
    alg = _algorithm(header, ALLOWED_ALGORITHMS, "JWS")
    # RFC 8555 §6.2: exactly one of jwk and kid.
    if ("jwk" in header) == ("kid" in header):
        raise Malformed("the JWS protected header must have exactly one of 'jwk' and 'kid'")
    url = _header_string(header, "url")
    if not url:
        raise Malformed("the JWS protected header must carry the request 'url' (RFC 8555 §6.4)")
    nonce = _header_string(header, "nonce")
    if not nonce:
        raise BadNonce("the JWS protected header must carry a 'nonce' (RFC 8555 §6.5)")
    return Jws(
        alg=alg,
        nonce=nonce,
        url=url,
        jwk=parse_jwk(header["jwk"]) if "jwk" in header else None,
        kid=_header_string(header, "kid"),
        payload=payload,
        signing_input=signing_input,
        signature=signature,
    )


def verify_eab(
    binding: object,
    account_key: Jwk,
    url: str,
    hmac_key_for: Callable[[str], bytes | None],
) -> str:
    """Verify an External Account Binding (RFC 8555 §7.3.4) and return its key id.

    *hmac_key_for* returns the MAC key for a key id, or None when the id is unknown.

    Raises:
        Malformed: the binding is not a flattened JWS of the right shape.
        BadSignatureAlgorithm: its algorithm is not HS256/HS384/HS512.
        Unauthorized: unknown key id, wrong url, payload not the account key, or bad MAC.
    """
    header, payload, signature, signing_input = _flattened(binding)
    alg = _algorithm(header, EAB_ALGORITHMS, "external account binding")
    # §7.3.4: the binding carries kid and url, and MUST NOT carry a nonce.
    if "nonce" in header or "jwk" in header:
        raise Malformed("the external account binding must not carry 'nonce' or 'jwk'")
    kid = _header_string(header, "kid")
    if not kid:
        raise Malformed("the external account binding must carry the key id in 'kid'")
    if _header_string(header, "url") != url:
        raise Unauthorized("the external account binding's 'url' is not the newAccount URL")
    secret = hmac_key_for(kid)
    expected = hmac.new(secret or b"\0" * 32, signing_input, _HMAC_HASHES[alg]).digest()
    # Constant-time comparison; an unknown key id costs the same as a wrong MAC.
    if not hmac.compare_digest(expected, signature) or secret is None:
        raise Unauthorized("the external account binding does not verify")
    try:
        bound = parse_jwk(json.loads(payload))
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the external account binding payload must be the account JWK") from None
    if not bound.same_key(account_key):
        raise Unauthorized("the external account binding names a different account key")
    return kid


@dataclass(frozen=True)
class KeyChange:
    """The verified inner JWS of a keyChange request (RFC 8555 §7.3.5)."""

    new_key: Jwk
    account: str
    old_key: Jwk


def parse_key_change(inner: object, outer_url: str) -> KeyChange:
    """Verify the inner JWS of a key change with the new key it carries.

    Raises:
        Malformed: wrong shape, `url` differs from the outer JWS, or the signature fails.
        BadSignatureAlgorithm: the inner algorithm is not on the allow-list.
        BadPublicKey: the new key is not an allowed key.
    """
    header, payload, signature, signing_input = _flattened(inner)
    alg = _algorithm(header, ALLOWED_ALGORITHMS, "inner keyChange JWS")
    # §7.3.5: the inner JWS has a jwk (the new key), no kid, and the outer JWS's url.
    if "jwk" not in header or "kid" in header:
        raise Malformed("the inner keyChange JWS must carry 'jwk' and no 'kid'")
    if _header_string(header, "url") != outer_url:
        raise Malformed("the inner keyChange JWS 'url' differs from the outer one")
    new_key = parse_jwk(header["jwk"])
    _verify(alg, new_key.key, signing_input, signature)
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the inner keyChange payload is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("account"), str):
        raise Malformed("the inner keyChange payload needs 'account' and 'oldKey'")
    old_key = parse_jwk(document.get("oldKey"))
    return KeyChange(new_key=new_key, account=document["account"], old_key=old_key)
