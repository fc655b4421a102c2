"""CRLs and OCSP (public), certificate revocation and CA key rotation (admin)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from trustd.api.admin import authority_public
from trustd.api.deps import AdminDep, Exemption, ServicesDep, exempt, require
from trustd.api.quarantines import quarantine_public
from trustd.api.schemas import (
    AuthorityPublic,
    CertificateDetail,
    CertificatePublic,
    KeyActivate,
    KeyChangePublic,
    KeyMigrate,
    KeyPrepare,
    KeyRevoke,
    RevocationEventPublic,
    RevocationFeedPublic,
    RevokeRequest,
    RevokeResult,
)
from trustd.api.wire import LimitQuery, SinceQuery
from trustd.domain.certificates import CertificateRecord, CertificateStatus
from trustd.domain.rotation import KeyChange

router = APIRouter(tags=["revocation"])

PKIX_CRL = "application/pkix-crl"
OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
KidPath = Annotated[str, Path(max_length=64, pattern="^[0-9a-f]+$")]

# --------------------------------------------------------------------------- public


@router.get(
    "/v1/crl/{issuer_kid}",
    response_class=Response,
    responses={200: {"content": {PKIX_CRL: {}}}, 404: {"description": "Unknown CA key"}},
    dependencies=[exempt(Exemption.PUBLIC)],
)
def get_crl(issuer_kid: KidPath, services: ServicesDep) -> Response:
    """The DER CRL of one issuing key (RFC 5280 §5), the URL in the certificates' CRL
    distribution point."""
    return Response(services.revocations.crl(issuer_kid), media_type=PKIX_CRL)


def _ocsp(services: ServicesDep, der: bytes) -> Response:
    return Response(services.revocations.ocsp(der), media_type=OCSP_RESPONSE)


@router.get(
    "/v1/ocsp/{encoded:path}",
    response_class=Response,
    responses={200: {"content": {OCSP_RESPONSE: {}}}},
    dependencies=[exempt(Exemption.PUBLIC)],
)
def ocsp_get(encoded: str, services: ServicesDep) -> Response:
    """OCSP over GET: the base64 DER request in the path (RFC 6960 Appendix A.1)."""
    try:
        der = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        der = b""  # answered as malformedRequest, in the protocol
    return _ocsp(services, der)


@router.post(
    "/v1/ocsp",
    response_class=Response,
    responses={200: {"content": {OCSP_RESPONSE: {}}}},
    openapi_extra={"requestBody": {"content": {OCSP_REQUEST: {}}, "required": True}},
    dependencies=[exempt(Exemption.PUBLIC)],
)
async def ocsp_post(request: Request, services: ServicesDep) -> Response:
    """OCSP over POST: a DER `application/ocsp-request` body (RFC 6960 Appendix A.1)."""
    der = await request.body()
    # Signing and the database read block: keep them off the event loop.
    answer = await run_in_threadpool(services.revocations.ocsp, der)
    return Response(answer, media_type=OCSP_RESPONSE)


# --------------------------------------------------------------------------- admin


def _certificate(row: CertificateRecord) -> CertificatePublic:
    return CertificatePublic.model_validate(row, from_attributes=True)


@router.post(
    "/v1/admin/certificates/revoke",
    response_model=RevokeResult,
    tags=["admin"],
    dependencies=[require("admin:certificate:revoke")],
)
def revoke_certificates(
    body: RevokeRequest, principal: AdminDep, services: ServicesDep
) -> RevokeResult:
    """Revoke one certificate (serial) or every unexpired SVID of a SPIFFE ID: CRL, OCSP,
    proxies refuse the serial and agents replace the SVID. With reason keyCompromise the
    identity is also quarantined unless `quarantine` is false (`quarantined` says so)."""
    revoked = services.revocations.revoke(
        principal,
        serial=body.serial,
        spiffe_id=body.spiffe_id,
        reason=body.reason,
        quarantine=body.quarantine,
    )
    made = revoked.quarantine
    return RevokeResult(
        serials=list(revoked.serials),
        revision=revoked.revision,
        quarantined=quarantine_public(made) if made is not None else None,
    )


@router.get(
    "/v1/admin/certificates",
    response_model=list[CertificatePublic],
    tags=["admin"],
    dependencies=[require("admin:certificate:read")],
)
def list_certificates(
    principal: AdminDep,
    services: ServicesDep,
    spiffe_id: Annotated[str | None, Query(max_length=2048)] = None,
    status: CertificateStatus | None = None,
    issuer_kid: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=64, description="Last serial seen")] = None,
    limit: LimitQuery = 100,
) -> list[CertificatePublic]:
    """Issued certificates ordered by serial, a page at a time."""
    rows = services.revocations.list_certificates(
        spiffe_id=spiffe_id, status=status, issuer_kid=issuer_kid, after=after, limit=limit
    )
    return [_certificate(r) for r in rows]


@router.get(
    "/v1/admin/certificates/{serial}",
    response_model=CertificateDetail,
    tags=["admin"],
    dependencies=[require("admin:certificate:read")],
)
def show_certificate(
    serial: Annotated[str, Path(max_length=64)], principal: AdminDep, services: ServicesDep
) -> CertificateDetail:
    """One issued certificate with its PEM."""
    row = services.revocations.get_certificate(serial)
    return CertificateDetail(**_certificate(row).model_dump(), certificate=row.certificate_pem)


@router.get(
    "/v1/admin/revocations",
    response_model=RevocationFeedPublic,
    tags=["admin"],
    dependencies=[require("admin:revocation:read")],
)
def revocations_since(
    principal: AdminDep,
    services: ServicesDep,
    since: SinceQuery = 0,
    limit: LimitQuery = 1000,
) -> RevocationFeedPublic:
    """Revocations after revision `since`, oldest first (what agents apply)."""
    feed = services.revocations.since(since, limit)
    return RevocationFeedPublic(
        revision=feed.revision,
        events=[RevocationEventPublic.model_validate(e, from_attributes=True) for e in feed.events],
    )


def _change(change: KeyChange) -> KeyChangePublic:
    return KeyChangePublic(
        kid=change.kid, kind=change.kind, status=change.status, bundle_sequence=change.sequence
    )


@router.get(
    "/v1/admin/ca/keys",
    response_model=list[AuthorityPublic],
    tags=["admin"],
    dependencies=[require("admin:ca:read")],
)
def list_keys(principal: AdminDep, services: ServicesDep) -> list[AuthorityPublic]:
    """Every CA key ever created, newest first: the rotation timeline."""
    token = services.settings.pkcs11_token_label
    return [authority_public(row, token) for row in services.rotation.timeline()]


@router.post(
    "/v1/admin/ca/prepare",
    response_model=KeyChangePublic,
    tags=["admin"],
    dependencies=[require("admin:ca:write")],
)
def prepare_key(body: KeyPrepare, principal: AdminDep, services: ServicesDep) -> KeyChangePublic:
    """Prepare the next key of a kind and publish it in the bundle now."""
    return _change(services.rotation.prepare(principal, body.kind, body.chain))


@router.post(
    "/v1/admin/ca/migrate-keys",
    response_model=list[KeyChangePublic],
    tags=["admin"],
    dependencies=[require("admin:ca:write")],
)
def migrate_keys(
    body: KeyMigrate, principal: AdminDep, services: ServicesDep
) -> list[KeyChangePublic]:
    """Prepare, in the backend new keys go to, the next key of every kind held elsewhere;
    rotation then retires the old keys. No key is exported."""
    return [_change(c) for c in services.rotation.migrate_keys(principal, body.to)]


@router.post(
    "/v1/admin/ca/activate",
    response_model=KeyChangePublic,
    tags=["admin"],
    dependencies=[require("admin:ca:write")],
)
def activate_key(body: KeyActivate, principal: AdminDep, services: ServicesDep) -> KeyChangePublic:
    """Activate the prepared key of a kind; the active one becomes old."""
    return _change(services.rotation.activate(principal, body.kind, body.kid, body.chain))


@router.post(
    "/v1/admin/ca/keys/{kid}/taint",
    response_model=KeyChangePublic,
    tags=["admin"],
    dependencies=[require("admin:ca:revoke")],
)
def taint_key(kid: KidPath, principal: AdminDep, services: ServicesDep) -> KeyChangePublic:
    """Taint an old key: everything it signed must be re-issued."""
    return _change(services.rotation.taint(principal, kid))


@router.post(
    "/v1/admin/ca/keys/{kid}/revoke",
    response_model=KeyChangePublic,
    tags=["admin"],
    dependencies=[require("admin:ca:revoke")],
)
def revoke_key(
    kid: KidPath, body: KeyRevoke, principal: AdminDep, services: ServicesDep
) -> KeyChangePublic:
    """Revoke a tainted key: it leaves the bundle and what it signed is revoked."""
    return _change(services.rotation.revoke(principal, kid, body.reason))


@router.get(
    "/v1/admin/ca/keys/{kid}/reissue",
    response_model=list[CertificatePublic],
    tags=["admin"],
    dependencies=[require("admin:ca:read")],
)
def reissue_batch(
    kid: KidPath,
    principal: AdminDep,
    services: ServicesDep,
    after: Annotated[str | None, Query(max_length=64, description="Last serial seen")] = None,
    limit: LimitQuery = 100,
) -> list[CertificatePublic]:
    """The next batch of unexpired certificates a tainted key signed, to re-issue."""
    return [_certificate(r) for r in services.rotation.reissue(kid, after, limit)]
