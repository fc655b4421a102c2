"""SPIFFE trust bundles as JWK Sets (SPIFFE Trust Domain and Bundle spec §4).

A bundle holds a trust domain's X.509 authorities (``use: x509-svid``, X509-SVID §6) and
JWT signing keys (``use: jwt-svid``, JWT-SVID §6), and, where WIT-SVIDs are issued, their
signing keys (``use: wit-svid``, WIT-SVID §6).  The parser is strict about entries it
understands and ignores the ones the spec says to ignore.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa

from pki.ca import certificate_pem
from pki.errors import InvalidBundle, WeakKey, echo
from pki.keys import (
    MlDsaPublicKey,
    PublicKey,
    allowed_public_key,
    describe_key,
    jose_public_key,
    same_public_key,
)
from pki.spiffe_id import TrustDomain

USE_X509_SVID = "x509-svid"
USE_JWT_SVID = "jwt-svid"
USE_WIT_SVID = "wit-svid"

# Bundles come from other trust domains over the network; bound the parse.
MAX_BUNDLE_BYTES = 1024 * 1024
MAX_KEYS = 1000
# Trust Domain and Bundle §4.1.1: integers must survive 64-bit consumers.
_MAX_INT = 2**63 - 1

_CURVE_BY_NAME: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_NAME_BY_CURVE = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_KNOWN_KTY = frozenset({"EC", "RSA", "OKP", "AKP"})


def _b64url(data: bytes) -> str:
    # RFC 7518 §2: Base64urlUInt and friends use base64url without padding.
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidBundle(f"JWK parameter {what} must be a non-empty base64url string")
    if "=" in value:
        raise InvalidBundle(f"JWK parameter {what} must not be padded (RFC 7515 §2)")
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBundle(f"JWK parameter {what} is not base64url: {echo(value)}") from None


def _uint_bytes(n: int) -> bytes:
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


_ML_DSA_BY_ALG: dict[str, type[MlDsaPublicKey]] = {
    "ML-DSA-44": mldsa.MLDSA44PublicKey,
    "ML-DSA-65": mldsa.MLDSA65PublicKey,
    "ML-DSA-87": mldsa.MLDSA87PublicKey,
}


def public_key_to_jwk(key: PublicKey) -> dict[str, Any]:
    """RFC 7517/7518/8037 public JWK parameters (``kty`` and key values) for *key*.

    Raises:
        WeakKey: *key* is not an allowed key type.
    """
    key = allowed_public_key(key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        numbers = key.public_numbers()
        # RFC 7518 §6.2.1.2: x and y are the full-length, zero-padded coordinates.
        return {
            "kty": "EC",
            "crv": _NAME_BY_CURVE[key.curve.name],
            "x": _b64url(numbers.x.to_bytes(size, "big")),
            "y": _b64url(numbers.y.to_bytes(size, "big")),
        }
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        # RFC 7518 §6.3.1: n and e are minimal big-endian unsigned integers.
        return {
            "kty": "RSA",
            "n": _b64url(_uint_bytes(rsa_numbers.n)),
            "e": _b64url(_uint_bytes(rsa_numbers.e)),
        }
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, ed25519.Ed25519PublicKey):
        # RFC 8037 §2: Ed25519 is kty OKP, crv Ed25519, x = the raw public key.
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    # ML-DSA: kty AKP, alg ML-DSA-*, pub = the raw (FIPS 204) public key, as
    # draft-ietf-cose-dilithium defines it (not yet in the IANA JOSE registry). A bundle
    # reader that does not know AKP ignores the entry (Trust Domain and Bundle §4.2.1), so an
    # ML-DSA root published next to an EC one leaves older clients on the EC root.
    return {"kty": "AKP", "alg": describe_key(key), "pub": _b64url(raw)}


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """Build the public key described by a JWK with kty EC, RSA or OKP (Ed25519).

    Raises:
        InvalidBundle: missing or malformed parameters, a point not on the curve, an
            unsupported curve, or a key that is not allowed.
    """
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            crv = jwk.get("crv")
            curve = _CURVE_BY_NAME.get(crv) if isinstance(crv, str) else None
            if curve is None:
                raise InvalidBundle(f"EC JWK has unsupported crv {echo(crv)}")
            size = (curve.key_size + 7) // 8
            x = _b64url_decode(jwk.get("x"), "x")
            y = _b64url_decode(jwk.get("y"), "y")
            if len(x) != size or len(y) != size:
                raise InvalidBundle(f"EC JWK coordinates must be {size} bytes for {crv}")
            key: object = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        elif kty == "RSA":
            n = int.from_bytes(_b64url_decode(jwk.get("n"), "n"), "big")
            e = int.from_bytes(_b64url_decode(jwk.get("e"), "e"), "big")
            key = rsa.RSAPublicNumbers(e, n).public_key()
        elif kty == "AKP":
            algorithm = _ML_DSA_BY_ALG.get(jwk.get("alg"))  # type: ignore[arg-type]
            if algorithm is None:
                raise InvalidBundle(f"AKP JWK has unsupported alg {echo(jwk.get('alg'))}")
            key = algorithm.from_public_bytes(_b64url_decode(jwk.get("pub"), "pub"))
        elif kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise InvalidBundle(f"OKP JWK has unsupported crv {echo(jwk.get('crv'))}")
            key = ed25519.Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk.get("x"), "x"))
        else:
            raise InvalidBundle(f"JWK has unsupported kty {echo(kty)}")
    except ValueError as exc:
        # cryptography: point not on curve, bad RSA numbers, wrong Ed25519 length.
        raise InvalidBundle(f"JWK does not describe a valid {kty} public key: {exc}") from None
    try:
        return allowed_public_key(key)
    except WeakKey as exc:
        raise InvalidBundle(f"JWK key is not allowed: {exc.detail}") from None


def _optional_uint(doc: Mapping[str, Any], name: str) -> int:
    value = doc.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise InvalidBundle(f"{name} must be an integer between 0 and 2^63-1, got {echo(value)}")
    return value


@dataclass(frozen=True)
class TrustBundle:
    """The X.509 roots and JWT (and WIT-SVID) signing keys of one trust domain, with its
    sequence number.

    ``jwt_authorities`` and ``wit_authorities`` map kid to key and are stored read-only; no
    kid appears in both (WIT-SVID §6.1).
    """

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...]
    jwt_authorities: Mapping[str, PublicKey] = field(hash=False)
    sequence: int
    refresh_hint: int
    wit_authorities: Mapping[str, PublicKey] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise InvalidBundle(
                f"trust_domain must be a TrustDomain, got {type(self.trust_domain).__name__}"
            )
        authorities: list[x509.Certificate] = []
        for cert in self.x509_authorities:
            if not isinstance(cert, x509.Certificate):
                raise InvalidBundle(f"x509 authority must be a Certificate, got {echo(cert)}")
            if cert not in authorities:
                authorities.append(cert)
        object.__setattr__(self, "x509_authorities", tuple(authorities))
        jwt_keys: dict[str, PublicKey] = {}
        for kid, key in self.jwt_authorities.items():
            if not isinstance(kid, str) or not kid:
                raise InvalidBundle(f"JWT authority kid must be a non-empty string: {echo(kid)}")
            try:
                # A JWT authority must verify JWTs: no ML-DSA (pki.keys.jws_algorithm).
                jwt_keys[kid] = jose_public_key(allowed_public_key(key))
            except WeakKey as exc:
                raise InvalidBundle(f"JWT authority {kid!r}: {exc.detail}") from None
        object.__setattr__(self, "jwt_authorities", MappingProxyType(jwt_keys))
        wit_keys: dict[str, PublicKey] = {}
        for kid, key in self.wit_authorities.items():
            if not isinstance(kid, str) or not kid:
                raise InvalidBundle(
                    f"WIT-SVID authority kid must be a non-empty string: {echo(kid)}"
                )
            # WIT-SVID §6.1: a kid is unique within the bundle, across JWT-SVID and
            # WIT-SVID keys: a validator picks a key by kid before it knows the token type.
            if kid in jwt_keys:
                raise InvalidBundle(f"kid {echo(kid)} names both a JWT-SVID and a WIT-SVID key")
            try:
                wit_keys[kid] = jose_public_key(allowed_public_key(key))
            except WeakKey as exc:
                raise InvalidBundle(f"WIT-SVID authority {kid!r}: {exc.detail}") from None
        object.__setattr__(self, "wit_authorities", MappingProxyType(wit_keys))
        for name in ("sequence", "refresh_hint"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
                raise InvalidBundle(f"{name} must be an integer in [0, 2^63-1], got {echo(value)}")

    def to_jwks(self) -> dict[str, Any]:
        """The bundle as a SPIFFE JWK Set document (Trust Domain and Bundle §4).

        Raises:
            WeakKey: an authority's key is not an allowed type (cannot happen for bundles
                built through this class).
        """
        keys: list[dict[str, Any]] = []
        for cert in self.x509_authorities:
            entry = public_key_to_jwk(allowed_public_key(cert.public_key()))
            # X509-SVID §6.1: use x509-svid, no kid, x5c with exactly one (standard base64,
            # RFC 7517 §4.7) DER CA certificate.
            entry["use"] = USE_X509_SVID
            entry["x5c"] = [
                base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
            ]
            keys.append(entry)
        for kid, key in self.jwt_authorities.items():
            entry = public_key_to_jwk(key)
            # JWT-SVID §6.1: use jwt-svid and kid MUST be set.
            entry["use"] = USE_JWT_SVID
            entry["kid"] = kid
            keys.append(entry)
        for kid, key in self.wit_authorities.items():
            entry = public_key_to_jwk(key)
            # WIT-SVID §6.1: use wit-svid and kid MUST be set.
            entry["use"] = USE_WIT_SVID
            entry["kid"] = kid
            keys.append(entry)
        return {
            "keys": keys,
            # Trust Domain and Bundle §4.1.1/§4.1.2: both SHOULD be set.
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint,
        }

    def to_json(self) -> str:
        """:meth:`to_jwks` serialised as compact JSON."""
        return json.dumps(self.to_jwks(), separators=(",", ":"))

    def to_pem(self) -> str:
        """The X.509 authorities as concatenated PEM."""
        return "".join(certificate_pem(cert) for cert in self.x509_authorities)

    @classmethod
    def from_jwks(cls, doc: Mapping[str, Any] | bytes, trust_domain: TrustDomain) -> TrustBundle:
        """Parse a SPIFFE bundle document for *trust_domain*.

        Entries with an unknown ``use`` or ``kty`` are ignored (Trust Domain and Bundle
        §4.1.3, §4.2.1, §4.2.2), as are ``x509-svid`` entries without ``x5c`` (X509-SVID
        §6.2).

        Raises:
            InvalidBundle: not JSON, no ``keys`` array, an entry without ``use``, an
                ``x509-svid`` entry whose first ``x5c`` is not a CA certificate or does not
                match the JWK key, a ``jwt-svid`` entry without ``kid`` or with a duplicate
                one, malformed key parameters, or a bad sequence/refresh hint.
        """
        if isinstance(doc, bytes | bytearray):
            if len(doc) > MAX_BUNDLE_BYTES:
                raise InvalidBundle(f"bundle is larger than {MAX_BUNDLE_BYTES} bytes")
            try:
                doc = json.loads(doc)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidBundle(f"bundle is not JSON: {exc}") from None
        if not isinstance(doc, Mapping):
            raise InvalidBundle("bundle must be a JSON object")
        # Trust Domain and Bundle §4.1.3: the keys parameter MUST be present.
        entries = doc.get("keys")
        if not isinstance(entries, list):
            raise InvalidBundle("bundle has no keys array")
        if len(entries) > MAX_KEYS:
            raise InvalidBundle(f"bundle has more than {MAX_KEYS} keys")
        authorities: list[x509.Certificate] = []
        jwt_keys: dict[str, PublicKey] = {}
        wit_keys: dict[str, PublicKey] = {}
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise InvalidBundle(f"keys[{index}] is not a JSON object")
            use = entry.get("use")
            # Trust Domain and Bundle §4.2.2: use MUST be set, but entries with an unknown
            # use MUST be ignored (whatever else they hold) ...
            if not isinstance(use, str):
                raise InvalidBundle(f"keys[{index}] has no use parameter")
            if use not in (USE_X509_SVID, USE_JWT_SVID, USE_WIT_SVID):
                continue
            # ... §4.2.1: likewise kty MUST be set, and unknown key types are ignored.
            kty = entry.get("kty")
            if not isinstance(kty, str):
                raise InvalidBundle(f"keys[{index}] has no kty parameter")
            if kty not in _KNOWN_KTY:
                continue
            try:
                if use == USE_X509_SVID:
                    cert = _x509_authority(entry)
                    if cert is not None and cert not in authorities:
                        authorities.append(cert)
                else:
                    kid, key = _jwt_authority(entry)
                    # JWT-SVID §6.1, WIT-SVID §6.1: unique within the bundle, whatever use.
                    if kid in jwt_keys or kid in wit_keys:
                        raise InvalidBundle(f"kid {echo(kid)} appears more than once")
                    (jwt_keys if use == USE_JWT_SVID else wit_keys)[kid] = key
            except InvalidBundle as exc:
                raise InvalidBundle(f"keys[{index}] ({use}): {exc.detail}") from None
        return cls(
            trust_domain=trust_domain,
            x509_authorities=tuple(authorities),
            jwt_authorities=jwt_keys,
            sequence=_optional_uint(doc, "spiffe_sequence"),
            refresh_hint=_optional_uint(doc, "spiffe_refresh_hint"),
            wit_authorities=wit_keys,
        )


def _x509_authority(entry: Mapping[str, Any]) -> x509.Certificate | None:
    x5c = entry.get("x5c")
    # X509-SVID §6.2: an x509-svid entry without x5c (or with an empty one) MUST be ignored,
    # and all but the first x5c value MUST be ignored.
    if x5c is None or x5c == []:
        return None
    if not isinstance(x5c, list) or not isinstance(x5c[0], str):
        raise InvalidBundle("x5c must be an array of base64 strings")
    try:
        der = base64.b64decode(x5c[0], validate=True)
        cert = x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        raise InvalidBundle("x5c[0] is not a base64 DER certificate") from None
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        bc = None
    # X509-SVID §6.1: the entry represents a CA certificate.
    if bc is None or not bc.ca:
        raise InvalidBundle("x5c[0] is not a CA certificate")
    # RFC 7517 §4.7: the key in the first certificate MUST match the JWK's public key;
    # a mismatch means the document was assembled wrongly or tampered with.
    jwk_key = public_key_from_jwk(entry)
    if not same_public_key(jwk_key, cert.public_key()):
        raise InvalidBundle("x5c[0] public key does not match the JWK parameters")
    return cert


def _jwt_authority(entry: Mapping[str, Any]) -> tuple[str, PublicKey]:
    kid = entry.get("kid")
    # JWT-SVID §6.1, WIT-SVID §6.1: the kid parameter MUST be set.
    if not isinstance(kid, str) or not kid:
        raise InvalidBundle(f"{entry.get('use')} entry has no kid")
    return kid, public_key_from_jwk(entry)
