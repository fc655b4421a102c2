"""Builtins the embedded engine lacks, registered as regorus extensions.

Each follows OPA's documented behaviour (https://www.openpolicyagent.org/docs/policy-reference):

- `io.jwt.decode(jwt)` -> `[header, payload, signature_hex]`; a malformed token is an
  evaluation error (OPA with strict builtin errors); a nested token (`cty: JWT`, RFC 7519
  §5.2) decodes to the innermost one.
- `io.jwt.verify_es256|rs256|ps256|eddsa(jwt, certificate)` -> bool: `certificate` is a PEM
  certificate, a PEM public key or a JWK/JWKS JSON string. False when the signature does
  not verify or the header names another algorithm; a malformed token or key is an error
  (OPA never answers false for those).
- `io.jwt.decode_verify(jwt, constraints)` -> `[valid, header, payload]`, `[false, {}, {}]`
  unless the signature verifies with `constraints.cert` and the claims meet `alg`, `iss`,
  `aud` and `time` (ns, default now) as OPA defines them (`exp`/`nbf` checked when present).
  HMAC `secret` constraints are refused (an evaluation error, never a `false` OPA would
  not give): trustd never verifies with shared secrets.
- `crypto.x509.parse_certificates(certs)` -> the certificates of a PEM or base64-DER string,
  as objects with Go-style field names (`Subject`, `NotAfter`, `URIStrings`, ...).
- `crypto.x509.parse_and_verify_certificates(certs)` -> `[valid, certs]`: the first
  certificate is the trust anchor, the last the leaf, the others intermediates (OPA's
  order); `[false, []]` unless the chain validates (RFC 5280 §6.1) now; the certificates
  come back as the verified chain, leaf first, as OPA returns Go's chain. Empty name lists
  are null, as Go marshals an empty slice.
- `crypto.sha256`, `crypto.sha1`, `crypto.md5`, `crypto.hmac.md5|sha1|sha256|sha512`,
  `crypto.hmac.equal`.
- `crypto.parse_private_keys`, `crypto.x509.parse_keypair`,
  `crypto.x509.parse_rsa_private_key` (a JWK, RFC 7518 §6.3.2),
  `crypto.x509.parse_certificate_request`: Go's field names; big integers as decimal text.
- `io.jwt.encode_sign(header, payload, jwk)`, `io.jwt.encode_sign_raw(header, payload,
  jwk)` (RFC 7515 §5.1): HS*, RS*, PS*, ES*, EdDSA keys as JWKs.
- `net.cidr_merge`, `net.cidr_intersects`, `net.cidr_contains_matches`, and
  `net.lookup_ip_addr` for address literals only (a decision never waits on DNS).
- `providers.aws.sign_req` (AWS Signature Version 4, as OPA signs),
- `regex.globs_match` (literals, `.`, classes, `*`, `+`; other syntax is refused),
  `array.flatten` (one level), `strings.render_template` (Go text/template's fields,
  variables, `if`, `range`; a missing key renders as `<undefined>`, as in OPA).
- `graphql.parse`, `graphql.parse_and_verify`, `graphql.parse_query`,
  `graphql.parse_schema`, `graphql.is_valid`, `graphql.schema_is_valid`: graphql-core
  answering in OPA's (gqlparser's) AST shape (`policy.gql`); operands are GraphQL text or
  AST objects, as in OPA.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pki.bundle import public_key_from_jwk
from pki.errors import TrustdError
from pki.x509_path import build_path, validate_path
from policy import gql

# RFC 7515 §7.1: compact serialisation, three base64url segments.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Bounds the work done on hostile input.
_MAX_TOKEN = 16384
_MAX_CERTS = 16
_MAX_NESTING = 8
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


def _b64url_value(segment: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BuiltinError(f"io.jwt: segment is not base64url: {exc}") from None
    try:
        return json.loads(raw)
    except ValueError:
        # A nested token may be carried as the bare compact serialisation.
        text = raw.decode(errors="replace")
        if _COMPACT_JWS.fullmatch(text):
            return text
        raise BuiltinError("io.jwt: segment is not base64url JSON") from None


def _b64url_json(segment: str) -> dict[str, Any]:
    value = _b64url_value(segment)
    if not isinstance(value, dict):
        raise BuiltinError("io.jwt: header and payload must be JSON objects")
    return value


def jwt_decode_outer(token: str) -> list[Any]:
    """One level of a token: `[header, payload_segment, signature_hex]`.

    Raises:
        BuiltinError: the token is not a compact JWS with a JSON header, or is a JWE.
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN or not _COMPACT_JWS.fullmatch(token):
        raise BuiltinError("io.jwt.decode: not a compact JWS (RFC 7515 §7.1)")
    header, payload, signature = token.split(".")
    raw_sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    decoded = _b64url_json(header)
    if "enc" in decoded:
        # RFC 7516 §4.1.2: `enc` marks a JWE, which these builtins do not decrypt.
        raise BuiltinError("io.jwt.decode: JWT is a JWE object, which is not supported")
    return [decoded, payload, raw_sig.hex()]


def jwt_decode(token: str) -> list[Any]:
    """OPA `io.jwt.decode`.

    Raises:
        BuiltinError: the token is not a compact JWS with JSON header and payload.
    """
    for _ in range(_MAX_NESTING):
        decoded, payload, signature = jwt_decode_outer(token)
        if str(decoded.get("cty", "")).upper() != "JWT":
            return [decoded, _b64url_json(payload), signature]
        # RFC 7519 §5.2: a nested JWT; its payload is the inner token (as a JSON string).
        inner = _b64url_value(payload)
        if not isinstance(inner, str):
            raise BuiltinError("io.jwt.decode: a nested token's payload must be a token")
        token = inner
    raise BuiltinError(f"io.jwt.decode: tokens nested more than {_MAX_NESTING} deep")


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


_PEM_END = re.compile(r"-----END [A-Z0-9 ]+-----")


def _verify(token: str, material: str, algorithms: tuple[str, ...], *, loud: bool = False) -> bool:
    """Whether `token` verifies with a key of `material` under one of `algorithms`.

    With `loud` (the verify_* builtins, as OPA evaluates them), a token or key material that
    does not parse is an error, not `false`: OPA never answers `false` for those.

    Raises:
        BuiltinError: with `loud`, the token or the key material is malformed.
    """
    try:
        header = jwt_decode_outer(token)[0]
        keys = _keys(material)
        text = material.strip()
        ends = list(_PEM_END.finditer(text))
        if ends and text[ends[-1].end() :].strip():
            raise BuiltinError("io.jwt: extra data after a PEM certificate block")
        if not keys:
            raise BuiltinError("io.jwt: no key in the certificate or key material")
    except (TrustdError, ValueError, TypeError, KeyError) as exc:
        if loud:
            raise BuiltinError(f"io.jwt: {exc}") from None
        return False
    alg = header.get("alg")
    if alg not in algorithms or alg not in _ALLOWED:
        return False
    key: Any
    for key in keys:
        if not isinstance(key, _KEY_CLASS[alg[:2]]):
            continue
        try:
            # The signature only (RFC 7515 §5.2): claims are the caller's to check, and a
            # nested token's payload is a token, not a claims object.
            jwt.api_jws.PyJWS().decode(token, key, algorithms=[alg])
            return True
        except (jwt.PyJWTError, ValueError, TypeError):
            # A key of the right type but another curve or size does not verify this one.
            continue
    return False


def _verifier(algorithms: tuple[str, ...]) -> Callable[[str, str], bool]:
    def verify(token: str, material: str) -> bool:
        return _verify(token, material, algorithms, loud=True)

    return verify


def jwt_decode_verify(token: str, constraints: dict[str, Any], now_ns: int) -> list[Any]:
    """OPA `io.jwt.decode_verify`; `[false, {}, {}]` unless every constraint holds."""
    invalid: list[Any] = [False, {}, {}]
    if isinstance(constraints, dict) and "secret" in constraints:
        # Refused loudly rather than answered `false` where OPA would verify.
        raise BuiltinError("io.jwt.decode_verify: HMAC secrets are not accepted")
    if not isinstance(constraints, dict):
        return invalid
    cert = constraints.get("cert")
    wanted = constraints.get("alg")
    # RFC 7519 §5.2: a nested token (`cty: JWT`) carries the next one as its payload; OPA
    # verifies every level with the same constraints and answers with the innermost.
    for _ in range(_MAX_NESTING):
        try:
            header, _, _ = jwt_decode_outer(token)
        except BuiltinError:
            return invalid
        alg = header.get("alg")
        if alg not in _ALLOWED or (wanted is not None and wanted != alg):
            return invalid
        if not isinstance(cert, str) or not _verify(token, cert, (alg,)):
            return invalid
        if str(header.get("cty", "")).upper() != "JWT":
            break
        inner = _b64url_value(token.split(".")[1])
        if not isinstance(inner, str):
            return invalid
        token = inner
    else:
        return invalid
    try:
        payload = _b64url_json(token.split(".")[1])
    except BuiltinError:
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


def _der_certificates(raw: bytes) -> list[x509.Certificate]:
    """Concatenated DER certificates (Go's `x509.ParseCertificates`): each one a SEQUENCE
    with a definite length (X.690 §8.1.3)."""
    certs: list[x509.Certificate] = []
    at = 0
    while at < len(raw):
        if len(certs) == _MAX_CERTS:
            raise BuiltinError(f"crypto.x509: at most {_MAX_CERTS} certificates")
        if raw[at] != 0x30 or at + 2 > len(raw):
            raise BuiltinError("crypto.x509: not a DER certificate sequence")
        first = raw[at + 1]
        header, length = 2, first
        if first & 0x80:
            count = first & 0x7F
            if not 1 <= count <= 4 or at + 2 + count > len(raw):
                raise BuiltinError("crypto.x509: not a DER certificate sequence")
            header, length = 2 + count, int.from_bytes(raw[at + 2 : at + 2 + count], "big")
        end = at + header + length
        if end > len(raw):
            raise BuiltinError("crypto.x509: truncated DER certificate")
        certs.append(x509.load_der_x509_certificate(raw[at:end]))
        at = end
    return certs


def _load_certs(value: str) -> list[x509.Certificate]:
    text = value.strip()
    if "-----BEGIN" not in text:
        # OPA accepts base64 DER (one certificate) or base64 of a PEM string.
        raw = base64.b64decode(text, validate=False)
        if b"-----BEGIN" not in raw:
            return _der_certificates(raw)
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
        # Go marshals an empty slice field as null.
        "DNSNames": san.get_values_for_type(x509.DNSName) or None,
        "EmailAddresses": san.get_values_for_type(x509.RFC822Name) or None,
        "IPAddresses": [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] or None,
        "URIStrings": san.get_values_for_type(x509.UniformResourceIdentifier) or None,
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
    """OPA `crypto.x509.parse_and_verify_certificates`: root first, leaf last in; the
    verified chain, leaf first, out."""
    try:
        certs = _load_certs(value)
        if len(certs) < 2:
            return [False, []]
        root, leaf, intermediates = certs[0], certs[-1], certs[1:-1]
        path = build_path(leaf, intermediates, [root])
        validate_path(path, datetime.fromtimestamp(now_ns / 1e9, UTC))
    except (TrustdError, ValueError, binascii.Error):
        return [False, []]
    # The verified chain, leaf first (Go `Certificate.Verify`, which OPA returns).
    return [True, [certificate_object(c) for c in path]]


def _digest(name: str) -> Callable[[str], str]:
    def digest(value: str) -> str:
        return hashlib.new(name, value.encode(), usedforsecurity=False).hexdigest()

    return digest


def _hmac_sha256(message: str, key: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


# -- crypto.hmac.*, array.flatten -----------------------------------------------------------


def _hmac(name: str) -> Callable[[str, str], str]:
    def digest(message: str, key: str) -> str:
        return hmac.new(key.encode(), message.encode(), name).hexdigest()

    return digest


def array_flatten(value: list[Any]) -> list[Any]:
    """OPA `array.flatten`: one level of nesting removed."""
    if not isinstance(value, list):
        raise BuiltinError("array.flatten: operand 1 must be array")
    out: list[Any] = []
    for item in value:
        out.extend(item) if isinstance(item, list) else out.append(item)
    return out


# -- net.* ----------------------------------------------------------------------------------

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(text: Any, builtin: str, *, needs_v6_prefix: bool = False) -> _Network:
    if not isinstance(text, str):
        raise BuiltinError(f"{builtin}: operand must be a string")
    try:
        if "/" not in text:
            address = ipaddress.ip_address(text)
            if needs_v6_prefix and address.version == 6:
                raise BuiltinError(f"{builtin}: IPv6 invalid: needs prefix length")
            if needs_v6_prefix:
                # OPA takes a bare IPv4 address with its classful default mask (Go
                # `IP.DefaultMask`, RFC 791 classes A, B, C).
                first = int(str(address).split(".")[0])
                if first >= 224:
                    raise BuiltinError(f"{builtin}: {text} has no default mask")
                bits = 8 if first < 128 else 16 if first < 192 else 24
                return ipaddress.ip_network(f"{text}/{bits}", strict=False)
            return ipaddress.ip_network(text)
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise BuiltinError(f"{builtin}: invalid CIDR or IP address {text!r}") from None


def cidr_merge(addresses: Any) -> set[str]:
    """OPA `net.cidr_merge`: the smallest set of networks covering `addresses`."""
    if not isinstance(addresses, list | set | frozenset):
        raise BuiltinError("net.cidr_merge: operand 1 must be array or set")
    nets = [_network(a, "net.cidr_merge", needs_v6_prefix=True) for a in addresses]
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    merged = {str(n) for n in ipaddress.collapse_addresses(v4)}
    merged.update(str(n) for n in ipaddress.collapse_addresses(v6))
    return merged


def cidr_intersects(a: str, b: str) -> bool:
    """OPA `net.cidr_intersects`."""
    first, second = _network(a, "net.cidr_intersects"), _network(b, "net.cidr_intersects")
    return first.version == second.version and first.overlaps(second)


def _cidr_terms(value: Any, builtin: str) -> list[tuple[Any, str]]:
    """`(key, cidr)` pairs as OPA's cidr_contains_matches reads its operands: a string is
    its own key; arrays by index, objects by key, sets by element; an array or set
    element may be an array whose first element is the CIDR."""

    def cidr_of(item: Any) -> str:
        if isinstance(item, list | tuple) and item and isinstance(item[0], str):
            return str(item[0])
        if isinstance(item, str):
            return item
        raise BuiltinError(f"{builtin}: operand must be a CIDR or IP string")

    if isinstance(value, str):
        return [(value, value)]
    if isinstance(value, list):
        return [(i, cidr_of(v)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return [(k, cidr_of(v)) for k, v in value.items()]
    if isinstance(value, set | frozenset):
        return [(v, cidr_of(v)) for v in value]
    raise BuiltinError(f"{builtin}: operand must be string, array, set or object")


def cidr_contains_matches(cidrs: Any, targets: Any) -> set[tuple[Any, Any]]:
    """OPA `net.cidr_contains_matches`: `[key1, key2]` for each CIDR that contains each
    CIDR or address."""
    name = "net.cidr_contains_matches"
    found: set[tuple[Any, Any]] = set()
    for key, cidr in _cidr_terms(cidrs, name):
        outer = _network(cidr, name)
        for other, text in _cidr_terms(targets, name):
            inner = _network(text, name)
            if inner.version == outer.version and inner.subnet_of(outer):  # type: ignore[arg-type]
                found.add((_hashable(key), _hashable(other)))
    return found


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def lookup_ip_addr(name: str) -> set[str]:
    """OPA `net.lookup_ip_addr` for address literals. Names are refused: a decision must
    not wait on (or leak to) DNS."""
    try:
        return {str(ipaddress.ip_address(name))}
    except ValueError:
        raise BuiltinError("net.lookup_ip_addr: only address literals are resolved") from None


# -- strings.render_template: Go text/template's core ----------------------------------------

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_RANGE = re.compile(r"range\s+(?:(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=\s*)?(.+)")
_MISSING = "<undefined>"


def _template_value(expr: str, dot: Any, variables: dict[str, Any]) -> Any:
    expr = expr.strip()
    if expr == ".":
        return dot
    if expr.startswith("$"):
        head, _, rest = expr.partition(".")
        if head not in variables:
            raise BuiltinError(f"strings.render_template: undefined variable {head}")
        node = variables[head]
        parts = rest.split(".") if rest else []
    elif expr.startswith("."):
        node, parts = dot, expr[1:].split(".")
    elif re.fullmatch(r"-?\d+", expr):
        return int(expr)
    elif len(expr) >= 2 and expr[0] == expr[-1] == '"':
        return json.loads(expr)
    else:
        raise BuiltinError(f"strings.render_template: unsupported action {expr!r}")
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _go_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", _MISSING) and value != [] and value != {}


def render_template(template: str, variables: dict[str, Any]) -> str:
    """OPA `strings.render_template` (Go text/template): `{{.a.b}}`, `{{$v}}`,
    `{{if}}`/`{{else}}`, `{{range [$i, $v :=] ...}}` and `{{end}}`; a missing key renders as
    `<undefined>`, as OPA renders it. Anything else is an error, never a guess.

    Raises:
        BuiltinError: the template uses an action outside that subset or is unbalanced.
    """
    if not isinstance(template, str) or not isinstance(variables, dict):
        raise BuiltinError("strings.render_template: operands must be a string and an object")
    tokens: list[tuple[str, str]] = []
    last = 0
    for match in _ACTION.finditer(template):
        tokens.append(("text", template[last : match.start()]))
        tokens.append(("action", match.group(1)))
        last = match.end()
    tokens.append(("text", template[last:]))

    def block(i: int, stop: tuple[str, ...]) -> tuple[list[Any], int, str]:
        nodes: list[Any] = []
        while i < len(tokens):
            kind, text = tokens[i]
            word = text.split(" ", 1)[0] if kind == "action" else ""
            if kind == "action" and word in stop:
                return nodes, i, word
            if kind == "text":
                nodes.append(("text", text))
                i += 1
            elif word in ("if", "range"):
                body, i, ended = block(i + 1, ("else", "end"))
                alternative: list[Any] = []
                if ended == "else":
                    alternative, i, ended = block(i + 1, ("end",))
                if ended != "end":
                    raise BuiltinError("strings.render_template: missing {{end}}")
                nodes.append((word, text, body, alternative))
                i += 1
            elif text.startswith("/*"):
                i += 1
            else:
                nodes.append(("value", text))
                i += 1
        if stop:
            raise BuiltinError("strings.render_template: missing {{end}}")
        return nodes, i, ""

    def render(nodes: list[Any], dot: Any, scope: dict[str, Any]) -> str:
        out: list[str] = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "value":
                out.append(_go_text(_template_value(node[1], dot, scope)))
            elif node[0] == "if":
                chosen = node[2] if _truthy(_template_value(node[1][2:], dot, scope)) else node[3]
                out.append(render(chosen, dot, scope))
            else:
                parsed = _RANGE.fullmatch(node[1])
                if parsed is None:
                    raise BuiltinError("strings.render_template: malformed range")
                first, second, source = parsed.groups()
                items = _template_value(source, dot, scope)
                pairs = (
                    sorted(items.items())
                    if isinstance(items, dict)
                    else list(enumerate(items))
                    if isinstance(items, list)
                    else []
                )
                if not pairs:
                    out.append(render(node[3], dot, scope))
                for key, item in pairs:
                    inner = dict(scope)
                    if first and second:
                        inner[first], inner[second] = key, item
                    elif first:
                        inner[first] = item
                    out.append(render(node[2], item, inner))
        return "".join(out)

    nodes, _, _ = block(0, ())
    return render(nodes, variables, {"$": variables})


# -- io.jwt.encode_sign, encode_sign_raw -----------------------------------------------------


def rego_order(value: Any) -> Any:
    """A sort key giving Rego's order of values: null < booleans < numbers < strings <
    arrays < objects < sets, composites element by element."""
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, list | tuple):
        return (4, [rego_order(v) for v in value])
    if isinstance(value, dict):
        return (5, sorted((rego_order(k), rego_order(v)) for k, v in value.items()))
    return (6, sorted(rego_order(v) for v in value))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _go_json(value: Any) -> str:
    """Go's `json.Marshal` of a Rego value: sorted keys, compact, integral numbers as
    integers."""

    def plain(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, set | frozenset):
            # A set marshals as an array in Rego's order of values.
            return [plain(x) for x in sorted(v, key=rego_order)]
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sign(header: dict[str, Any], signing_input: bytes, jwk: str, builtin: str) -> str:
    alg = header.get("alg")
    algorithms = jwt.algorithms.get_default_algorithms()
    if not isinstance(alg, str) or alg not in algorithms or alg == "none":
        raise BuiltinError(f"{builtin}: unknown signature algorithm {alg!r}")
    algorithm = algorithms[alg]
    try:
        key = algorithm.from_jwk(jwk)
        signature = algorithm.sign(signing_input, key)
    except (jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        raise BuiltinError(f"{builtin}: cannot sign with this key: {exc}") from None
    return _b64url(signature)


def jwt_encode_sign_raw(header: str, payload: str, key: str) -> str:
    """OPA `io.jwt.encode_sign_raw`: header and payload texts signed as given (RFC 7515
    §5.1) with a JWK.

    Raises:
        BuiltinError: the header is not a JSON object naming a known algorithm, or the
            key does not fit it.
    """
    name = "io.jwt.encode_sign_raw"
    if not all(isinstance(v, str) for v in (header, payload, key)):
        raise BuiltinError(f"{name}: operands must be strings")
    try:
        parsed = json.loads(header)
    except ValueError:
        raise BuiltinError(f"{name}: the header is not JSON") from None
    if not isinstance(parsed, dict):
        raise BuiltinError(f"{name}: the header must be a JSON object")
    if str(parsed.get("typ", "")).upper() == "JWT":
        try:
            json.loads(payload)
        except ValueError:
            raise BuiltinError(f"{name}: type is JWT but payload is not JSON") from None
    signing_input = f"{_b64url(header.encode())}.{_b64url(payload.encode())}"
    return f"{signing_input}.{_sign(parsed, signing_input.encode(), key, name)}"


def jwt_encode_sign(header: Any, payload: Any, key: Any) -> str:
    """OPA `io.jwt.encode_sign`: header and payload objects serialised as Go does.

    Raises:
        BuiltinError: as `jwt_encode_sign_raw`.
    """
    name = "io.jwt.encode_sign"
    if not isinstance(header, dict) or not isinstance(payload, dict) or not isinstance(key, dict):
        raise BuiltinError(f"{name}: operands must be objects")
    header_text, payload_text = _go_json(header), _go_json(payload)
    signing_input = f"{_b64url(header_text.encode())}.{_b64url(payload_text.encode())}"
    return f"{signing_input}.{_sign(header, signing_input.encode(), _go_json(key), name)}"


# -- crypto: private keys, key pairs, certificate requests -----------------------------------


def _pem_or_base64(value: str) -> bytes:
    text = value.strip()
    if "-----BEGIN" in text:
        return text.encode()
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        return text.encode()
    return raw


def _private_key_object(key: Any) -> dict[str, Any]:
    """Go's field names for a private key (`rsa.PrivateKey`, `ecdsa.PrivateKey`); big
    integers as decimal text, as for certificate serial numbers."""
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_numbers = key.private_numbers()
        return {
            "N": str(rsa_numbers.public_numbers.n),
            "E": rsa_numbers.public_numbers.e,
            "D": str(rsa_numbers.d),
            "Primes": [str(rsa_numbers.p), str(rsa_numbers.q)],
        }
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ec_numbers = key.private_numbers()
        return {
            "Curve": {"Name": key.curve.name},
            "X": str(ec_numbers.public_numbers.x),
            "Y": str(ec_numbers.public_numbers.y),
            "D": str(ec_numbers.private_value),
        }
    raise BuiltinError("crypto: unsupported private key type")


_PEM_PRIVATE_KEY = re.compile(
    rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S
)


def _load_private_keys(data: bytes) -> list[Any]:
    keys: list[Any] = []
    if b"-----BEGIN" in data:
        blocks = re.findall(
            rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", data, re.S
        )
        for block in blocks:
            keys.append(serialization.load_pem_private_key(block, None))
        return keys
    return [serialization.load_der_private_key(data, None)]


def parse_private_keys(value: str) -> list[dict[str, Any]] | None:
    """OPA `crypto.parse_private_keys`: null for an empty string, [] when nothing parses."""
    if not isinstance(value, str):
        raise BuiltinError("crypto.parse_private_keys: operand 1 must be string")
    if not value:
        return None
    try:
        return [_private_key_object(k) for k in _load_private_keys(_pem_or_base64(value))]
    except (ValueError, TypeError, BuiltinError):
        return []


def _uint(value: int) -> str:
    # RFC 7518 §6.3: Base64urlUInt, the minimal big-endian octets.
    return _b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def parse_rsa_private_key(value: str) -> dict[str, Any]:
    """OPA `crypto.x509.parse_rsa_private_key`: a PEM RSA private key (PKCS#1 or PKCS#8,
    or that PEM in base64) as a JWK with its private parameters (RFC 7518 §6.3.2)."""
    name = "crypto.x509.parse_rsa_private_key"
    if not isinstance(value, str) or len(value) > _MAX_TOKEN:
        raise BuiltinError(f"{name}: operand 1 must be a PEM string")
    data = _pem_or_base64(value)
    if b"-----BEGIN" not in data:
        raise BuiltinError(f"{name}: illegal base64 or PEM data")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BuiltinError(f"{name}: not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BuiltinError(f"{name}: not an RSA private key")
    numbers = key.private_numbers()
    return {
        "kty": "RSA",
        "n": _uint(numbers.public_numbers.n),
        "e": _uint(numbers.public_numbers.e),
        "d": _uint(numbers.d),
        "p": _uint(numbers.p),
        "q": _uint(numbers.q),
        "dp": _uint(numbers.dmp1),
        "dq": _uint(numbers.dmq1),
        "qi": _uint(numbers.iqmp),
    }


def parse_keypair(cert: str, key: str) -> dict[str, Any]:
    """OPA `crypto.x509.parse_keypair` (Go `tls.X509KeyPair`): the certificates as base64
    DER, and the private key, which must match the first certificate.

    Raises:
        BuiltinError: either does not parse, or they do not match.
    """
    name = "crypto.x509.parse_keypair"
    try:
        certs = _load_certs(cert)
        keys = _load_private_keys(_pem_or_base64(key))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BuiltinError(f"{name}: {exc}") from None
    if not certs or len(keys) != 1:
        raise BuiltinError(f"{name}: needs certificates and one private key")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certs[0].public_key().public_bytes(der, public) != keys[0].public_key().public_bytes(
        der, public
    ):
        raise BuiltinError(f"{name}: private key does not match public key")
    return {
        "Certificate": [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs
        ],
        "PrivateKey": _private_key_object(keys[0]),
    }


def parse_certificate_request(value: str) -> dict[str, Any]:
    """OPA `crypto.x509.parse_certificate_request`: a PEM or base64 CSR (RFC 2986) with
    Go's field names.

    Raises:
        BuiltinError: no certificate request parses.
    """
    try:
        data = _pem_or_base64(value)
        if b"-----BEGIN" not in data and data.lstrip().startswith(b"-----"):
            data = data.strip()
        csr = (
            x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
        )
    except (ValueError, TypeError) as exc:
        raise BuiltinError(f"crypto.x509.parse_certificate_request: {exc}") from None
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        san = x509.SubjectAlternativeName([])
    return {
        "Version": 0,
        "Subject": _name(csr.subject),
        "DNSNames": san.get_values_for_type(x509.DNSName),
        "EmailAddresses": san.get_values_for_type(x509.RFC822Name),
        "IPAddresses": [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
        "URIs": san.get_values_for_type(x509.UniformResourceIdentifier),
        "Raw": base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode(),
    }


# -- regex.globs_match: do two glob-like patterns share a string? ---------------------------

# A token: the characters it matches (`negated`, inclusive ranges) and whether it repeats.
_Token = tuple[bool, tuple[tuple[int, int], ...], bool]
_ANY: tuple[bool, tuple[tuple[int, int], ...]] = (True, ())
_MAX_GLOB = 512


def _glob_tokens(pattern: str) -> list[_Token]:
    """Parse the syntax OPA's `regex.globs_match` accepts: literals, `\\` escapes, `.`,
    character classes `[a-z]`/`[^...]`, each optionally followed by `*` or `+`.

    Raises:
        BuiltinError: anything else (alternation, groups, `?`, counted repeats).
    """
    if not isinstance(pattern, str) or len(pattern) > _MAX_GLOB:
        raise BuiltinError("regex.globs_match: operands must be strings of at most 512")
    tokens: list[_Token] = []
    ranges: tuple[tuple[int, int], ...]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            negated, ranges = False, ((ord(pattern[i + 1]),) * 2,)
            i += 2
        elif char == ".":
            negated, ranges = _ANY
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise BuiltinError("regex.globs_match: unterminated character class")
            body = pattern[i + 1 : end]
            negated = body.startswith("^")
            body = body[1:] if negated else body
            parts: list[tuple[int, int]] = []
            j = 0
            while j < len(body):
                if j + 2 < len(body) and body[j + 1] == "-":
                    parts.append((ord(body[j]), ord(body[j + 2])))
                    j += 3
                else:
                    parts.append((ord(body[j]), ord(body[j])))
                    j += 1
            ranges = tuple(parts)
            i = end + 1
        elif char in "*+?|(){}^$]":
            raise BuiltinError(f"regex.globs_match: unsupported syntax {char!r}")
        else:
            negated, ranges = False, ((ord(char), ord(char)),)
            i += 1
        quantifier = pattern[i] if i < len(pattern) and pattern[i] in "*+" else ""
        i += bool(quantifier)
        if quantifier == "+":
            tokens.append((negated, ranges, False))
        tokens.append((negated, ranges, quantifier != ""))
    return tokens


def _contains(token: _Token, point: int) -> bool:
    negated, ranges, _ = token
    return negated != any(low <= point <= high for low, high in ranges)


def _overlap(a: _Token, b: _Token) -> bool:
    points = {0, 0x61, 0x10FFFF}
    for _, ranges, _ in (a, b):
        for low, high in ranges:
            points.update(p for p in (low - 1, low, high, high + 1) if 0 <= p <= 0x10FFFF)
    return any(_contains(a, p) and _contains(b, p) for p in points)


def globs_match(first: str, second: str) -> bool:
    """OPA `regex.globs_match`: whether some string matches both patterns (the product of
    the two patterns' automata has a path to the end)."""
    a, b = _glob_tokens(first), _glob_tokens(second)
    seen: set[tuple[int, int]] = set()
    pending = [(0, 0)]
    while pending:
        state = pending.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j = state
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i][2]:
            pending.append((i + 1, j))
        if j < len(b) and b[j][2]:
            pending.append((i, j + 1))
        if i < len(a) and j < len(b) and _overlap(a[i], b[j]):
            pending.append((i if a[i][2] else i + 1, j if b[j][2] else j + 1))
    return False


# -- providers.aws.sign_req: AWS Signature Version 4 -----------------------------------------


def _hmac_sha256_raw(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def aws_sign_req(request: Any, config: Any, time_ns: Any) -> dict[str, Any]:
    """OPA `providers.aws.sign_req`: `request` (`method`, `url`, optional `headers`, `body`,
    `raw_body`) with the SigV4 headers added (AWS Signature Version 4: canonical request,
    string to sign, HMAC-SHA256 key derivation), as OPA computes them: the method and an
    empty path as given, `raw_body` before `body`, a caller's own `x-amz-content-sha256`
    value in the canonical request.

    Raises:
        BuiltinError: an operand lacks a key or has the wrong type (a type error).
    """
    name = "providers.aws.sign_req"
    if not isinstance(request, dict) or not all(
        isinstance(request.get(k), str) for k in ("method", "url")
    ):
        raise BuiltinError(f"{name}: operand 1 must be an object with string method and url")
    keys = ("aws_access_key", "aws_secret_access_key", "aws_service", "aws_region")
    if not isinstance(config, dict) or not all(isinstance(config.get(k), str) for k in keys):
        raise BuiltinError(f"{name}: operand 2 must be an object with string {', '.join(keys)}")
    unsigned = config.get("disable_payload_signing", False)
    if not isinstance(unsigned, bool):
        raise BuiltinError(f"{name}: operand 2 must have a boolean disable_payload_signing")
    if not isinstance(time_ns, int | float) or isinstance(time_ns, bool) or time_ns < 0:
        raise BuiltinError(f"{name}: operand 3 must be a non-negative number of nanoseconds")
    headers = request.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise BuiltinError(f"{name}: operand 1 must have string headers")
    url = urlsplit(request["url"])
    now = datetime.fromtimestamp(time_ns / 1e9, UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    if isinstance(request.get("raw_body"), str):
        body = request["raw_body"].encode()
    elif "body" in request:
        body = _go_json(request["body"]).encode()
    else:
        body = b""
    content = "UNSIGNED-PAYLOAD" if unsigned else hashlib.sha256(body).hexdigest()
    own = {k.lower(): v for k, v in headers.items() if k.lower() != "authorization"}
    signed = {**own, "host": url.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": content}
    token = config.get("aws_session_token")
    if isinstance(token, str) and token:
        signed["x-amz-security-token"] = token
    canonical_values = {**signed, **{k: own[k] for k in ("x-amz-content-sha256",) if k in own}}
    names = sorted(signed)
    canonical = "\n".join(
        [
            request["method"],
            url.path,
            url.query,
            "".join(f"{k}:{canonical_values[k]}\n" for k in names),
            ";".join(names),
            content,
        ]
    )
    scope = f"{day}/{config['aws_region']}/{config['aws_service']}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + config["aws_secret_access_key"]).encode()
    for part in (day, config["aws_region"], config["aws_service"], "aws4_request"):
        key = _hmac_sha256_raw(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={config['aws_access_key']}/{scope},"
        f"SignedHeaders={';'.join(names)},Signature={signature}"
    )
    return {**request, "headers": signed}


def _gql_source(value: Any, builtin: str, position: int, printer: Callable[[Any], str]) -> str:
    # OPA takes GraphQL text or an AST object (which it decodes into gqlparser's structs).
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return printer(value)
    raise BuiltinError(f"{builtin}: operand {position} must be one of {{object, string}}")


def _gql_query(value: Any, builtin: str) -> Any:
    return gql.parse_query_document(_gql_source(value, builtin, 1, gql.print_query))


def _gql_schema(value: Any, builtin: str) -> Any:
    return gql.parse_schema_document(_gql_source(value, builtin, 2, gql.print_schema))


def _gql_loud(builtin: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except gql.GraphQLFailure as exc:
        raise BuiltinError(f"{builtin}: {exc}") from None
    except RecursionError:
        # A document (or AST object) nested past the interpreter's stack: refused whole.
        raise BuiltinError(f"{builtin}: document nested too deeply") from None


def graphql_parse_query(query: Any) -> dict[str, Any]:
    """OPA `graphql.parse_query`: the query's AST; a query that does not parse is an error."""
    if not isinstance(query, str):
        raise BuiltinError("graphql.parse_query: operand 1 must be string")
    return _gql_loud(  # type: ignore[no-any-return]
        "graphql.parse_query", lambda: gql.query_ast(gql.parse_query_document(query))
    )


def graphql_parse_schema(schema: Any) -> dict[str, Any]:
    """OPA `graphql.parse_schema`: the schema's AST (parsed, not validated)."""
    if not isinstance(schema, str):
        raise BuiltinError("graphql.parse_schema: operand 1 must be string")
    return _gql_loud(  # type: ignore[no-any-return]
        "graphql.parse_schema", lambda: gql.schema_ast(gql.parse_schema_document(schema))
    )


def _gql_verified(query: Any, schema: Any, builtin: str) -> list[Any]:
    # OPA's order: parse the query, load the schema, validate, then the schema's AST.
    query_doc = _gql_query(query, builtin)
    schema_doc = _gql_schema(schema, builtin)
    gql.validate_query(gql.load_schema(schema_doc), query_doc)
    return [gql.query_ast(query_doc), gql.schema_ast(schema_doc)]


def graphql_parse(query: Any, schema: Any) -> list[Any]:
    """OPA `graphql.parse`: `[query_ast, schema_ast]`; a failure to parse or validate is an
    error."""
    name = "graphql.parse"
    return _gql_loud(name, lambda: _gql_verified(query, schema, name))  # type: ignore[no-any-return]


def graphql_parse_and_verify(query: Any, schema: Any) -> list[Any]:
    """OPA `graphql.parse_and_verify`: `[true, query_ast, schema_ast]`, or `[false, {}, {}]`
    when the query or schema does not parse or the query does not validate."""
    try:
        return [True, *_gql_verified(query, schema, "graphql.parse_and_verify")]
    except (gql.GraphQLFailure, BuiltinError, RecursionError):
        return [False, {}, {}]


def graphql_is_valid(query: Any, schema: Any) -> bool:
    """OPA `graphql.is_valid`: whether the query validates against the schema."""
    try:
        _gql_verified(query, schema, "graphql.is_valid")
    except (gql.GraphQLFailure, BuiltinError, RecursionError):
        return False
    return True


def graphql_schema_is_valid(schema: Any) -> bool:
    """OPA `graphql.schema_is_valid`: whether the schema parses and loads."""
    try:
        gql.load_schema(_gql_schema(schema, "graphql.schema_is_valid"))
    except (gql.GraphQLFailure, BuiltinError, RecursionError):
        return False
    return True


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
    for digest in ("md5", "sha1", "sha512"):
        table[f"crypto.hmac.{digest}"] = (2, _hmac(digest))
    # Constant time, as OPA documents for crypto.hmac.equal.
    table["crypto.hmac.equal"] = (2, lambda a, b: hmac.compare_digest(a.encode(), b.encode()))
    table["array.flatten"] = (1, array_flatten)
    table["regex.globs_match"] = (2, globs_match)
    table["providers.aws.sign_req"] = (3, aws_sign_req)
    table["net.cidr_merge"] = (1, cidr_merge)
    table["net.cidr_intersects"] = (2, cidr_intersects)
    table["net.cidr_contains_matches"] = (2, cidr_contains_matches)
    table["net.lookup_ip_addr"] = (1, lookup_ip_addr)
    table["strings.render_template"] = (2, render_template)
    table["io.jwt.encode_sign"] = (3, jwt_encode_sign)
    table["io.jwt.encode_sign_raw"] = (3, jwt_encode_sign_raw)
    table["crypto.parse_private_keys"] = (1, parse_private_keys)
    table["crypto.x509.parse_keypair"] = (2, parse_keypair)
    table["crypto.x509.parse_rsa_private_key"] = (1, parse_rsa_private_key)
    table["crypto.x509.parse_certificate_request"] = (1, parse_certificate_request)
    table["graphql.parse"] = (2, graphql_parse)
    table["graphql.parse_and_verify"] = (2, graphql_parse_and_verify)
    table["graphql.parse_query"] = (1, graphql_parse_query)
    table["graphql.parse_schema"] = (1, graphql_parse_schema)
    table["graphql.is_valid"] = (2, graphql_is_valid)
    table["graphql.schema_is_valid"] = (1, graphql_schema_is_valid)
    return table


# The names, for the compile check (the compiler does not know extensions), and arities.
ARITIES = {name: arity for name, (arity, _) in extensions().items()}
EXTENSIONS = frozenset(ARITIES)


def register_extensions(engine: Any, now_ns: Callable[[], int] = time.time_ns) -> None:
    """Add every extension to a `regorus.Engine`."""
    for name, (arity, function) in extensions(now_ns).items():
        engine.add_extension(name, arity, function)
