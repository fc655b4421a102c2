"""Builtins the embedded engine lacks, registered as regorus extensions.

Each follows OPA's documented behaviour (https://www.openpolicyagent.org/docs/policy-reference):

- `io.jwt.decode(jwt)` -> `[header, payload, signature_hex]`; a malformed token is an
  evaluation error (OPA with strict builtin errors).
- `io.jwt.verify_es256|rs256|ps256|eddsa(jwt, certificate)` -> bool: `certificate` is a PEM
  certificate, a PEM public key or a JWK/JWKS JSON string. False when the signature does
  not verify, the header names another algorithm, or the token is malformed.
- `io.jwt.decode_verify(jwt, constraints)` -> `[valid, header, payload]`, `[false, {}, {}]`
  unless the signature verifies with `constraints.cert` and the claims meet `alg`, `iss`,
  `aud` and `time` (ns, default now) as OPA defines them (`exp`/`nbf` checked when present).
  HMAC `secret` constraints are refused: trustd never verifies with shared secrets.
- `crypto.x509.parse_certificates(certs)` -> the certificates of a PEM or base64-DER string,
  as objects with Go-style field names (`Subject`, `NotAfter`, `URIStrings`, ...).
- `crypto.x509.parse_and_verify_certificates(certs)` -> `[valid, certs]`: the first
  certificate is the trust anchor, the last the leaf, the others intermediates (OPA's
  order); `[false, []]` unless the chain validates (RFC 5280 §6.1) now.
- `crypto.sha256`, `crypto.sha1`, `crypto.md5`, `crypto.hmac.sha256`, `crypto.hmac.equal`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pki.bundle import public_key_from_jwk
from pki.errors import TrustdError
from pki.x509_path import build_path, validate_path

# RFC 7515 §7.1: compact serialisation, three base64url segments.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Bounds the work done on hostile input.
_MAX_TOKEN = 16384
_MAX_CERTS = 16
# Asymmetric algorithms only (never `none`, never HMAC): OPA's verify_* family by name.
_FAMILY = {
    "es256": ("ES256",),
    "es384": ("ES384",),
    "es512": ("ES512",),
    "rs256": ("RS256",),
    "rs384": ("RS384",),
    "rs512": ("RS512",),
    "ps256": ("PS256",),
    "ps384": ("PS384",),
    "ps512": ("PS512",),
    "eddsa": ("EdDSA",),
}
_ALLOWED = frozenset(alg for algs in _FAMILY.values() for alg in algs)
_KEY_CLASS: dict[str, type[Any]] = {
    "ES": ec.EllipticCurvePublicKey,
    "RS": rsa.RSAPublicKey,
    "PS": rsa.RSAPublicKey,
    "Ed": ed25519.Ed25519PublicKey,
}


class BuiltinError(TrustdError):
    title = "Builtin failed"


def _b64url_json(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise BuiltinError(f"io.jwt: segment is not base64url JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BuiltinError("io.jwt: header and payload must be JSON objects")
    return value


def jwt_decode(token: str) -> list[Any]:
    """OPA `io.jwt.decode`.

    Raises:
        BuiltinError: the token is not a compact JWS with JSON header and payload.
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN or not _COMPACT_JWS.fullmatch(token):
        raise BuiltinError("io.jwt.decode: not a compact JWS (RFC 7515 §7.1)")
    header, payload, signature = token.split(".")
    raw_sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return [_b64url_json(header), _b64url_json(payload), raw_sig.hex()]


def _keys(material: str) -> list[Any]:
    """Public keys from a PEM certificate, PEM public key(s) or a JWK/JWKS JSON string."""
    text = material.strip()
    if text.startswith("{"):
        doc = json.loads(text)
        jwks: list[Any] = doc["keys"] if isinstance(doc, dict) and "keys" in doc else [doc]
        return [public_key_from_jwk(k) for k in jwks]
    keys: list[Any] = []
    if "CERTIFICATE" in text:
        keys += [c.public_key() for c in x509.load_pem_x509_certificates(text.encode())]
    elif "PUBLIC KEY" in text:
        keys.append(serialization.load_pem_public_key(text.encode()))
    return keys


def _verify(token: str, material: str, algorithms: tuple[str, ...]) -> bool:
    try:
        header = jwt_decode(token)[0]
        alg = header.get("alg")
        if alg not in algorithms or alg not in _ALLOWED:
            return False
        key: Any
        for key in _keys(material):
            if not isinstance(key, _KEY_CLASS[alg[:2]]):
                continue
            try:
                jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    options={
                        "verify_signature": True,
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": False,
                        "verify_iss": False,
                    },
                )
                return True
            except jwt.InvalidTokenError:
                continue
    except (TrustdError, ValueError, TypeError, KeyError):
        return False
    return False


def _verifier(algorithms: tuple[str, ...]) -> Callable[[str, str], bool]:
    def verify(token: str, material: str) -> bool:
        return _verify(token, material, algorithms)

    return verify


def jwt_decode_verify(token: str, constraints: dict[str, Any], now_ns: int) -> list[Any]:
    """OPA `io.jwt.decode_verify`; `[false, {}, {}]` unless every constraint holds."""
    invalid: list[Any] = [False, {}, {}]
    if not isinstance(constraints, dict) or "secret" in constraints:
        return invalid
    try:
        header, payload, _ = jwt_decode(token)
    except BuiltinError:
        return invalid
    alg = header.get("alg")
    wanted = constraints.get("alg")
    if alg not in _ALLOWED or (wanted is not None and wanted != alg):
        return invalid
    cert = constraints.get("cert")
    if not isinstance(cert, str) or not _verify(token, cert, (alg,)):
        return invalid
    now = constraints.get("time", now_ns) / 1e9
    exp, nbf = payload.get("exp"), payload.get("nbf")
    if isinstance(exp, int | float) and now >= exp:
        return invalid
    if isinstance(nbf, int | float) and now < nbf:
        return invalid
    if "iss" in constraints and payload.get("iss") != constraints["iss"]:
        return invalid
    # OPA: a token with `aud` needs a matching `aud` constraint, and an `aud` constraint
    # needs the token to carry it.
    token_aud = payload.get("aud")
    wanted_aud = constraints.get("aud")
    if token_aud is not None or wanted_aud is not None:
        audiences = [token_aud] if isinstance(token_aud, str) else (token_aud or [])
        if wanted_aud is None or wanted_aud not in audiences:
            return invalid
    return [True, header, payload]


def _load_certs(value: str) -> list[x509.Certificate]:
    text = value.strip()
    if "-----BEGIN" not in text:
        # OPA accepts base64 DER (one certificate) or base64 of a PEM string.
        raw = base64.b64decode(text, validate=False)
        if b"-----BEGIN" not in raw:
            return [x509.load_der_x509_certificate(raw)]
        text = raw.decode()
    certs = x509.load_pem_x509_certificates(text.encode())
    if len(certs) > _MAX_CERTS:
        raise BuiltinError(f"crypto.x509: at most {_MAX_CERTS} certificates")
    return certs


def _name(name: x509.Name) -> dict[str, Any]:
    def values(oid: x509.ObjectIdentifier) -> list[str]:
        return [str(a.value) for a in name.get_attributes_for_oid(oid)]

    common = values(x509.NameOID.COMMON_NAME)
    return {
        "CommonName": common[0] if common else "",
        "Country": values(x509.NameOID.COUNTRY_NAME),
        "Organization": values(x509.NameOID.ORGANIZATION_NAME),
        "OrganizationalUnit": values(x509.NameOID.ORGANIZATIONAL_UNIT_NAME),
        "SerialNumber": (values(x509.NameOID.SERIAL_NUMBER) or [""])[0],
        "String": name.rfc4514_string(),
    }


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_object(cert: x509.Certificate) -> dict[str, Any]:
    """The fields policies read, with the names Go's `x509.Certificate` marshals to."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca, bc_valid, max_path = (
            bc.ca,
            True,
            bc.path_length if bc.path_length is not None else -1,
        )
    except x509.ExtensionNotFound:
        is_ca, bc_valid, max_path = False, False, 0
    return {
        "Version": cert.version.value + 1,
        # Serials are up to 160 bits (RFC 5280 §4.1.2.2), beyond the engine's integers:
        # decimal text, where OPA gives a JSON number.
        "SerialNumber": str(cert.serial_number),
        "Subject": _name(cert.subject),
        "Issuer": _name(cert.issuer),
        "NotBefore": _time(cert.not_valid_before_utc),
        "NotAfter": _time(cert.not_valid_after_utc),
        "DNSNames": san.get_values_for_type(x509.DNSName),
        "EmailAddresses": san.get_values_for_type(x509.RFC822Name),
        "IPAddresses": [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
        "URIStrings": san.get_values_for_type(x509.UniformResourceIdentifier),
        "IsCA": is_ca,
        "BasicConstraintsValid": bc_valid,
        "MaxPathLen": max_path,
        "Raw": base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(),
    }


def parse_certificates(value: str) -> list[dict[str, Any]]:
    """OPA `crypto.x509.parse_certificates`.

    Raises:
        BuiltinError: the string holds no parseable certificate.
    """
    try:
        return [certificate_object(c) for c in _load_certs(value)]
    except (ValueError, binascii.Error) as exc:
        raise BuiltinError(f"crypto.x509.parse_certificates: {exc}") from None


def parse_and_verify_certificates(value: str, now_ns: int) -> list[Any]:
    """OPA `crypto.x509.parse_and_verify_certificates`: root first, leaf last."""
    try:
        certs = _load_certs(value)
        if len(certs) < 2:
            return [False, []]
        root, leaf, intermediates = certs[0], certs[-1], certs[1:-1]
        path = build_path(leaf, intermediates, [root])
        validate_path(path, datetime.fromtimestamp(now_ns / 1e9, UTC))
    except (TrustdError, ValueError, binascii.Error):
        return [False, []]
    return [True, [certificate_object(c) for c in certs]]


def _digest(name: str) -> Callable[[str], str]:
    def digest(value: str) -> str:
        return hashlib.new(name, value.encode(), usedforsecurity=False).hexdigest()

    return digest


def _hmac_sha256(message: str, key: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def extensions(now_ns: Callable[[], int] = time.time_ns) -> dict[str, tuple[int, Any]]:
    """Every extension by name: `(arity, function)`."""
    table: dict[str, tuple[int, Any]] = {}
    for name, algorithms in _FAMILY.items():
        table[f"io.jwt.verify_{name}"] = (2, _verifier(algorithms))
    table["io.jwt.decode"] = (1, jwt_decode)
    table["io.jwt.decode_verify"] = (2, lambda t, c: jwt_decode_verify(t, c, now_ns()))
    table["crypto.x509.parse_certificates"] = (1, parse_certificates)
    table["crypto.x509.parse_and_verify_certificates"] = (
        1,
        lambda v: parse_and_verify_certificates(v, now_ns()),
    )
    for digest in ("sha256", "sha1", "md5"):
        table[f"crypto.{digest}"] = (1, _digest(digest))
    table["crypto.hmac.sha256"] = (2, _hmac_sha256)
    # Constant time, as OPA documents for crypto.hmac.equal.
    table["crypto.hmac.equal"] = (2, lambda a, b: hmac.compare_digest(a, b))
    return table


# The names, for the compile check (the compiler does not know extensions).
EXTENSIONS = frozenset(extensions())


def register_extensions(engine: Any, now_ns: Callable[[], int] = time.time_ns) -> None:
    """Add every extension to a `regorus.Engine`."""
    for name, (arity, function) in extensions(now_ns).items():
        engine.add_extension(name, arity, function)
