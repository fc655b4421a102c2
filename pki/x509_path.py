"""RFC 5280 certification path building and validation, over cryptography primitives.

Used by :mod:`pki.x509_svid` to verify X.509-SVIDs and to check what it has just signed.  This
implements the parts of RFC 5280 §6.1 a SPIFFE deployment meets: signatures, validity,
basicConstraints, keyUsage keyCertSign, pathLenConstraint, name constraints (URI, DNS, IP
and directoryName; other constrained name types fail closed) and unknown critical
extensions.  Policy processing (certificatePolicies, policyConstraints) is not
implemented, so those extensions are refused when critical.

Why not ``cryptography.x509.verification``: it implements the CA/B Forum Web PKI profile,
and (checked with cryptography 50) it rejects any path through a CA carrying URI name
constraints ("unsupported name constraint") and refuses Ed25519 CA keys ("Forbidden public
key algorithm").  trustd intermediates carry URI name constraints (X509-SVID §4.2) and
Ed25519 CAs are allowed, so neither is acceptable.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID

from pki.errors import InvalidSvid, WeakKey, echo
from pki.keys import check_public_key

# Bounds the work an attacker can cause with a long list of bogus intermediates.
MAX_INTERMEDIATES = 16
MAX_PATH_DEPTH = 8

# Extensions whose semantics this module implements.  RFC 5280 §4.2: a certificate with a
# critical extension the validator does not recognise MUST be rejected.
HANDLED_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
    }
)

_E = TypeVar("_E", bound=x509.ExtensionType)


def extension(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E] | None:
    """The extension of type *kind*, or None when absent.

    Raises:
        ValueError: the certificate's extensions cannot be parsed (e.g. duplicates).
    """
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def describe(cert: x509.Certificate) -> str:
    """Subject and serial of *cert*, for error messages."""
    subject = cert.subject.rfc4514_string() or "<empty subject>"
    return f"{subject} (serial {cert.serial_number:x})"


def is_self_issued(cert: x509.Certificate) -> bool:
    # RFC 5280 §6.1: "self-issued" means subject and issuer names match.
    return cert.subject == cert.issuer


def is_self_signed(cert: x509.Certificate) -> bool:
    if not is_self_issued(cert):
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether *issuer*'s name and key produced *cert*'s issuer field and signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _could_issue(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if parent.subject != child.issuer:
        return False
    # When both key identifiers are present they must agree (RFC 5280 §4.2.1.1); this only
    # prunes candidates early, the signature check below is what decides.
    aki = extension(child, x509.AuthorityKeyIdentifier)
    ski = extension(parent, x509.SubjectKeyIdentifier)
    if (
        aki is not None
        and aki.value.key_identifier is not None
        and ski is not None
        and aki.value.key_identifier != ski.value.digest
    ):
        return False
    return issued_by(child, parent)


def build_path(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: list[x509.Certificate],
) -> list[x509.Certificate]:
    """Depth-first search from *leaf* to any of *roots*; returns ``[leaf, ..., root]``.

    Candidates are matched by name, key identifiers and signature, so several CAs sharing a
    subject (rotation, two CAs of one trust domain) are told apart.

    Raises:
        InvalidSvid: no path of at most ``MAX_PATH_DEPTH`` certificates reaches a root.
    """

    def extend(path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        current = path[-1]
        for root in roots:
            if _could_issue(current, root):
                return [*path, root]
        if len(path) >= MAX_PATH_DEPTH:
            return None
        for candidate in intermediates:
            if candidate in path or not _could_issue(current, candidate):
                continue
            found = extend([*path, candidate])
            if found is not None:
                return found
        return None

    path = extend([leaf])
    if path is None:
        raise InvalidSvid(
            "RFC 5280 §6.1: no certification path from the SVID to a trusted root "
            f"(leaf issuer {leaf.issuer.rfc4514_string() or '<empty>'})"
        )
    return path


def validate_path(path: list[x509.Certificate], now: datetime) -> None:
    """RFC 5280 §6.1 checks over ``[end entity, intermediates..., trust anchor]`` at *now*.

    ``path[0]`` may itself be a CA (when checking a freshly created intermediate); the
    caller has already checked signatures (:func:`build_path`) and the end-entity profile.

    Raises:
        InvalidSvid: a certificate is expired or not yet valid, has an unsupported critical
            extension, an issuer is not a CA with keyCertSign or has a weak key, or a
            pathLenConstraint or name constraint is violated.
    """
    for index, cert in enumerate(path):
        try:
            _validate_path_element(path, index, cert, now)
        except ValueError as exc:
            raise InvalidSvid(f"certificate {describe(cert)} cannot be parsed: {exc}") from None


def _validate_path_element(
    path: list[x509.Certificate], index: int, cert: x509.Certificate, now: datetime
) -> None:
    where = describe(cert)
    # RFC 5280 §6.1.3(a)(2): every certificate, trust anchor included, must be within its
    # validity period.  (Treating an expired root as invalid is stricter than §6.1 but is
    # what operators expect.)
    if now < cert.not_valid_before_utc:
        raise InvalidSvid(
            f"certificate {where} is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if now > cert.not_valid_after_utc:
        raise InvalidSvid(f"certificate {where} expired at {cert.not_valid_after_utc.isoformat()}")
    # RFC 5280 §4.2: reject unrecognised critical extensions.
    for ext in cert.extensions:
        if ext.critical and ext.oid not in HANDLED_CRITICAL:
            raise InvalidSvid(
                f"certificate {where} has unsupported critical extension {ext.oid.dotted_string}"
            )
    if index == 0:
        return
    # RFC 5280 §6.1.4(k): every issuer must be a CA (basicConstraints cA=true) ...
    bc = extension(cert, x509.BasicConstraints)
    if bc is None or not bc.value.ca:
        raise InvalidSvid(f"issuer {where} is not a CA (basicConstraints cA is not true)")
    # ... §6.1.4(n): with keyUsage present, keyCertSign must be set (X509-SVID §3.2, §4.3).
    ku = extension(cert, x509.KeyUsage)
    if ku is not None and not ku.value.key_cert_sign:
        raise InvalidSvid(f"issuer {where} does not have keyUsage keyCertSign")
    try:
        check_public_key(cert.public_key())
    except WeakKey as exc:
        raise InvalidSvid(f"issuer {where}: {exc.detail}") from None
    # RFC 5280 §6.1.4(l)/(m): pathLenConstraint bounds the non-self-issued intermediates
    # between this CA and the end entity.
    if bc.value.path_length is not None:
        below = sum(1 for c in path[1:index] if not is_self_issued(c))
        if below > bc.value.path_length:
            raise InvalidSvid(
                f"issuer {where} has pathLenConstraint {bc.value.path_length} but "
                f"{below} CA certificates follow it"
            )
    nc = extension(cert, x509.NameConstraints)
    if nc is not None:
        for position, subordinate in enumerate(path[:index]):
            # RFC 5280 §6.1.3(b): self-issued intermediates are exempt; the end entity never.
            if position > 0 and is_self_issued(subordinate):
                continue
            _check_name_constraints(nc.value, subordinate, cert)


def _names_of(cert: x509.Certificate) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    # RFC 5280 §4.2.1.10: directoryName constraints apply to a non-empty subject.
    if len(cert.subject) > 0:
        names.append(x509.DirectoryName(cert.subject))
    san = extension(cert, x509.SubjectAlternativeName)
    if san is not None:
        names.extend(san.value)
    return names


def _dns_in_subtree(name: str, base: str) -> bool:
    name = name.lower().rstrip(".")
    base = base.lower().rstrip(".")
    if base.startswith("."):
        return name.endswith(base)
    # RFC 5280 §4.2.1.10: any name formed by adding labels on the left satisfies it.
    return base == "" or name == base or name.endswith("." + base)


def _uri_in_subtree(uri: str, base: str, cert: x509.Certificate) -> bool:
    host = urlsplit(uri).hostname
    # RFC 5280 §4.2.1.10: a URI without a host that is a fully qualified domain name
    # (no authority, or an IP literal) MUST be rejected when URI constraints apply.
    if not host or _is_ip_literal(host):
        raise InvalidSvid(
            f"certificate {describe(cert)} has URI {echo(uri)} without a domain-name host, "
            "which URI name constraints cannot be applied to"
        )
    base = base.lower()
    # RFC 5280 §4.2.1.10: a leading '.' means "any host in this domain", otherwise the
    # constraint names exactly one host.
    if base.startswith("."):
        return host.endswith(base)
    return host == base


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _in_subtree(name: x509.GeneralName, base: x509.GeneralName, cert: x509.Certificate) -> bool:
    if isinstance(name, x509.UniformResourceIdentifier) and isinstance(
        base, x509.UniformResourceIdentifier
    ):
        return _uri_in_subtree(name.value, base.value, cert)
    if isinstance(name, x509.DNSName) and isinstance(base, x509.DNSName):
        return _dns_in_subtree(name.value, base.value)
    if isinstance(name, x509.IPAddress) and isinstance(base, x509.IPAddress):
        network = base.value
        address = name.value
        return (
            isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network)
            and isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
            and address.version == network.version
            and address in network
        )
    if isinstance(name, x509.DirectoryName) and isinstance(base, x509.DirectoryName):
        prefix = list(base.value.rdns)
        return list(name.value.rdns)[: len(prefix)] == prefix
    # Fail closed: a constrained name type we cannot evaluate (rfc822Name, otherName ...)
    # must not be treated as permitted.
    raise InvalidSvid(
        f"certificate {describe(cert)} has a {type(name).__name__} constrained by a "
        "name-constraint type this validator does not implement"
    )


def _check_name_constraints(
    nc: x509.NameConstraints, cert: x509.Certificate, ca: x509.Certificate
) -> None:
    permitted = list(nc.permitted_subtrees or [])
    excluded = list(nc.excluded_subtrees or [])
    for name in _names_of(cert):
        same_permitted = [b for b in permitted if type(b) is type(name)]
        same_excluded = [b for b in excluded if type(b) is type(name)]
        # RFC 5280 §6.1.3(b): with permitted subtrees of a name's type, the name must lie
        # within one of them; types without permitted subtrees are unconstrained.
        if same_permitted and not any(_in_subtree(name, b, cert) for b in same_permitted):
            raise InvalidSvid(
                f"name {echo(_name_text(name))} of {describe(cert)} is outside the "
                f"permitted subtrees of {describe(ca)} (RFC 5280 §4.2.1.10)"
            )
        # RFC 5280 §6.1.3(b): excluded subtrees always win.
        if any(_in_subtree(name, b, cert) for b in same_excluded):
            raise InvalidSvid(
                f"name {echo(_name_text(name))} of {describe(cert)} is in an excluded "
                f"subtree of {describe(ca)} (RFC 5280 §4.2.1.10)"
            )


def _name_text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DirectoryName):
        return name.value.rfc4514_string()
    return str(name.value)
