"""RFC 8555 §6.7 errors. Each class names its `urn:ietf:params:acme:error:*` type; the API
edge (`trustd.api.problems`) maps the class to its HTTP status.
"""

from __future__ import annotations

from pki.errors import TrustdError

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"


class AcmeError(TrustdError):
    """Root of the errors an ACME client sees as an RFC 8555 problem document."""

    title = "ACME error"
    acme_type = "serverInternal"

    @property
    def type_uri(self) -> str:
        return ACME_ERROR_PREFIX + self.acme_type

    def document(self) -> dict[str, str]:
        """The error as the `error` member of an order or challenge (RFC 8555 §7.1.3, §8)."""
        return {"type": self.type_uri, "detail": self.detail}


class Malformed(AcmeError):
    title = "The request message was malformed"
    acme_type = "malformed"


class UnsupportedMediaType(Malformed):
    """RFC 8555 §6.2: requests with a body are `application/jose+json` only (415)."""

    title = "Unsupported media type"


class KeyInUse(Malformed):
    """RFC 8555 §7.3.5: the new key of a key change already belongs to an account (409)."""

    title = "The key is already in use by another account"


class BadNonce(AcmeError):
    title = "The client sent an unacceptable anti-replay nonce"
    acme_type = "badNonce"


class BadSignatureAlgorithm(AcmeError):
    title = "The JWS was signed with an algorithm the server does not support"
    acme_type = "badSignatureAlgorithm"


class BadPublicKey(AcmeError):
    title = "The JWS was signed by a public key the server does not support"
    acme_type = "badPublicKey"


class Unauthorized(AcmeError):
    title = "The client lacks sufficient authorization"
    acme_type = "unauthorized"


class AccountDoesNotExist(AcmeError):
    title = "The request specified an account that does not exist"
    acme_type = "accountDoesNotExist"


class ExternalAccountRequired(AcmeError):
    title = "The request must include a value for the externalAccountBinding field"
    acme_type = "externalAccountRequired"


class InvalidContact(AcmeError):
    title = "A contact URL for an account was invalid"
    acme_type = "invalidContact"


class UnsupportedContact(AcmeError):
    title = "A contact URL for an account used an unsupported protocol scheme"
    acme_type = "unsupportedContact"


class RejectedIdentifier(AcmeError):
    title = "The server will not issue certificates for the identifier"
    acme_type = "rejectedIdentifier"


class UnsupportedIdentifier(AcmeError):
    title = "An identifier is of an unsupported type"
    acme_type = "unsupportedIdentifier"


class BadCsr(AcmeError):
    title = "The CSR is unacceptable"
    acme_type = "badCSR"


class OrderNotReady(AcmeError):
    title = "The request attempted to finalize an order that is not ready to be finalized"
    acme_type = "orderNotReady"


class RateLimited(AcmeError):
    title = "The request exceeds a rate limit"
    acme_type = "rateLimited"


class BadRevocationReason(AcmeError):
    title = "The revocation reason provided is not allowed by the server"
    acme_type = "badRevocationReason"


class AlreadyRevoked(AcmeError):
    title = "The certificate has already been revoked"
    acme_type = "alreadyRevoked"


class AlreadyReplaced(AcmeError):
    """RFC 9773 §5: the certificate named in `replaces` was already replaced."""

    title = "The certificate has already been replaced"
    acme_type = "alreadyReplaced"


class InvalidProfile(AcmeError):
    """draft-ietf-acme-profiles §4: the order names a profile the server does not offer."""

    title = "The requested profile is not offered"
    acme_type = "invalidProfile"


class AcmeNotFound(Malformed):
    """A resource URL that names nothing (or nothing this account owns: RFC 8555 §7.3 leaks
    no other account's objects)."""

    title = "No such ACME resource"


# Challenge validation outcomes (RFC 8555 §8): recorded on the challenge, never raised to the
# client as an HTTP error.
class ConnectionProblem(AcmeError):
    title = "The server could not connect to the validation target"
    acme_type = "connection"


class IncorrectResponse(AcmeError):
    title = "The response received did not match the challenge's requirements"
    acme_type = "incorrectResponse"


class DnsProblem(AcmeError):
    title = "There was a problem with a DNS query during identifier validation"
    acme_type = "dns"


class TlsProblem(AcmeError):
    title = "The server received a TLS error during validation"
    acme_type = "tls"


class ForbiddenTransition(AcmeError):
    """A status change the RFC 8555 §7.1.6 state diagrams do not draw. Requests are checked
    against the state they need before anything changes, so reaching this is a server fault
    (a 500 `serverInternal`), never the client's."""

    title = "The server attempted a status change RFC 8555 does not allow"
