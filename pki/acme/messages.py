"""ACME request payloads and resource states (RFC 8555 §7.1, RFC 9773, ACME profiles).

Payload models ignore members they do not know: RFC 8555 objects are extensible and clients
(certbot, lego, the `acme` library) send optional members of later drafts. Values of known
members are checked strictly, and closed enums refuse unknown values.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from pki.acme.errors import Malformed


class AccountStatus(StrEnum):
    VALID = "valid"
    DEACTIVATED = "deactivated"
    REVOKED = "revoked"


class OrderStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"


class AuthorizationStatus(StrEnum):
    PENDING = "pending"
    VALID = "valid"
    INVALID = "invalid"
    DEACTIVATED = "deactivated"
    EXPIRED = "expired"
    REVOKED = "revoked"


class ChallengeStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"


class ChallengeType(StrEnum):
    HTTP_01 = "http-01"
    DNS_01 = "dns-01"
    TLS_ALPN_01 = "tls-alpn-01"


# RFC 8555 §7.6 takes RFC 5280 §5.3.1 reason codes; a subscriber may give these. The others
# (cACompromise, certificateHold, removeFromCRL, privilegeWithdrawn, aACompromise) are CA
# decisions, refused with badRevocationReason.
SUBSCRIBER_REVOCATION_REASONS = {
    0: "unspecified",
    1: "keyCompromise",
    3: "affiliationChanged",
    4: "superseded",
    5: "cessationOfOperation",
}


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class NewAccount(_Payload):
    contact: list[str] = Field(default_factory=list, max_length=8)
    # JSON booleans only (RFC 8555 §7.3 types them boolean): "yes" is not an agreement.
    terms_of_service_agreed: StrictBool | None = Field(default=None, alias="termsOfServiceAgreed")
    only_return_existing: StrictBool = Field(default=False, alias="onlyReturnExisting")
    external_account_binding: dict[str, Any] | None = Field(
        default=None, alias="externalAccountBinding"
    )


class AccountUpdate(_Payload):
    contact: list[str] | None = Field(default=None, max_length=8)
    # RFC 8555 §7.3.6: the only status a client may set is "deactivated".
    status: Literal["deactivated"] | None = None


class NewOrder(_Payload):
    identifiers: list[Any]
    not_before: datetime | None = Field(default=None, alias="notBefore")
    not_after: datetime | None = Field(default=None, alias="notAfter")
    # draft-ietf-acme-profiles §4: the profile the certificate is issued under.
    profile: str | None = Field(default=None, max_length=64)
    # RFC 9773 §5: the ARI certID of the certificate this order replaces.
    replaces: str | None = Field(default=None, max_length=256)


class Finalize(_Payload):
    csr: str = Field(max_length=16384)


class Revocation(_Payload):
    certificate: str = Field(max_length=16384)
    # A JSON integer (RFC 8555 §7.6), never true or "1"; one that is no RFC 5280 §5.3.1
    # CRLReason is badRevocationReason, decided by the caller from a lookup (any size).
    reason: StrictInt | None = None


class AuthorizationUpdate(_Payload):
    # RFC 8555 §7.5.2: a client may only deactivate an authorization.
    status: Literal["deactivated"]


_M = TypeVar("_M", bound=_Payload)


def parse_payload(model: type[_M], payload: dict[str, Any] | None) -> _M:
    """Validate a JWS payload against *model*.

    Raises:
        Malformed: the payload is missing (POST-as-GET where a body is needed) or invalid;
            the detail names the members at fault, never their values.
    """
    if payload is None:
        raise Malformed("this request needs a JSON payload, not a POST-as-GET")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}"
            for err in exc.errors()
        )
        raise Malformed(f"invalid payload: {problems}") from None
