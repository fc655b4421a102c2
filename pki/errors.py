"""Errors raised by the ``pki`` library.

Every error the project raises derives from :class:`TrustdError`.  Each subclass carries a
short human ``title``; the instance carries a ``detail`` sentence and structured ``fields``
so the API edge can map it to an RFC 9457 problem document without parsing strings.
Messages never contain key material, tokens or CSRs: when they echo bad input they echo a
truncated ``repr`` of it (see :func:`echo`).
"""

from __future__ import annotations

_ECHO_LIMIT = 96


def echo(value: object, limit: int = _ECHO_LIMIT) -> str:
    """Return ``repr(value)`` truncated to *limit* characters, for use in error details.

    Errors echo the bad input so operators can see what was refused, but unbounded input
    (a 2 KiB SPIFFE ID, a whole JWT) must not balloon log lines or problem documents.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


class TrustdError(Exception):
    """Root of every error raised by trustd and its libraries."""

    title: str = "trustd error"

    def __init__(self, detail: str, **fields: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields: dict[str, object] = dict(fields)

    def __str__(self) -> str:
        return self.detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r})"


class InvalidSpiffeId(TrustdError):
    title = "Invalid SPIFFE ID"


class InvalidSelector(TrustdError):
    title = "Invalid selector"


class InvalidTrustDomain(TrustdError):
    title = "Invalid trust domain"


class InvalidCsr(TrustdError):
    title = "Invalid certificate signing request"


class WeakKey(TrustdError):
    title = "Key type not allowed"


class InvalidJwt(TrustdError):
    title = "Invalid JWT-SVID"


class InvalidWit(InvalidJwt):
    """A WIT-SVID (SPIFFE WIT-SVID draft, WIMSE Workload Credentials) that cannot be minted or
    is not accepted; a JWT error like any other at the API edge."""

    title = "Invalid WIT-SVID"


class InvalidSvid(TrustdError):
    title = "Invalid X.509-SVID"


class InvalidSvidParams(TrustdError):
    """The parameters handed to the issuer cannot produce a conforming SVID."""

    title = "Invalid SVID parameters"


class KeyDecryptionError(TrustdError):
    title = "Private key could not be decrypted"


class CaError(TrustdError):
    title = "Certificate authority error"


class InvalidBundle(TrustdError):
    title = "Invalid trust bundle"


class InvalidTransition(TrustdError):
    """A key rotation step the slot state machine does not allow."""

    title = "Key status change not allowed"


class InvalidOcspRequest(TrustdError):
    title = "Invalid OCSP request"


class InvalidCrl(TrustdError):
    title = "Invalid certificate revocation list"


class KeyUnavailable(TrustdError):
    """A key's store (a PKCS#11 token) could not be used: missing, locked or failing.

    At start-up it stops trustd; during a request it is a 503: the signature was not made
    and nothing was recorded, and a retry may succeed once the token is back.
    """

    title = "Signing key unavailable"


class InvalidTpmData(TrustdError):
    """A TPM structure that does not parse, or does not prove what it is presented for."""

    title = "Invalid TPM data"
