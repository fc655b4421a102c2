"""SVID issuance for administrators (registration entries authorise agents later)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Response

from pki.ca import serial_hex
from pki.jwt_svid import JwtSvid
from pki.wit_svid import WitSvid
from trustd.api.deps import AdminDep, ServicesDep, require
from trustd.api.schemas import (
    JwtSvidRequest,
    JwtSvidResponse,
    WitSvidRequest,
    WitSvidResponse,
    X509SvidRequest,
    X509SvidResponse,
)
from trustd.services.issuance import ca_pems

router = APIRouter(prefix="/v1/svid", tags=["svid"])

# X509-SVID issuance is a coroutine that signs on the event loop (short, CPU-bound work that a
# thread pool would only make contend for the GIL) and hands its rows to the group commit,
# which commits on a thread of its own (`trustd.store.group_commit`): a database failing over
# never stalls the loop. JWT-SVIDs commit their audit row alone, so that route is a plain
# function FastAPI runs on a worker thread. Throughput scales with worker processes
# (`trustd serve --workers N`).


def _ttl(seconds: int | None) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds is not None else None


@router.post(
    "/x509",
    response_model=X509SvidResponse,
    status_code=201,
    dependencies=[require("admin:svid:write")],
)
async def issue_x509_svid(
    body: X509SvidRequest, principal: AdminDep, services: ServicesDep
) -> Response:
    """Sign a CSR as an X509-SVID for `spiffe_id`. The CSR only proves key possession: its
    subject and names are ignored.
    """
    issued = await services.issuer.issue_x509_svid(
        principal,
        body.spiffe_id,
        body.csr.encode(),
        _ttl(body.ttl),
        body.dns_names,
        key_type=body.key_type,
    )
    cert = issued.certificate
    # Built from trusted values, so neither validated again nor put through FastAPI's
    # response_model pass (which re-validates it): serialised by its own schema in one step.
    document = X509SvidResponse.model_construct(
        spiffe_id=str(issued.spiffe_id),
        serial=serial_hex(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        certificate=issued.pem,
        intermediates=list(ca_pems(issued.intermediates)),
        bundle="".join(ca_pems(services.ca.state.bundle.x509_authorities)),
    )
    return Response(document.model_dump_json(), status_code=201, media_type="application/json")


@router.post(
    "/jwt",
    response_model=JwtSvidResponse,
    status_code=201,
    dependencies=[require("admin:svid:write")],
)
def mint_jwt_svid(
    body: JwtSvidRequest, principal: AdminDep, services: ServicesDep
) -> JwtSvidResponse:
    """Mint a JWT-SVID for `spiffe_id` with the given audience (JWT-SVID §3: `aud` required)."""
    svid = services.issuer.mint_jwt_svid(principal, body.spiffe_id, body.audience, _ttl(body.ttl))
    return jwt_svid_response(svid)


@router.post(
    "/wit",
    response_model=WitSvidResponse,
    status_code=201,
    dependencies=[require("admin:svid:write")],
)
async def mint_wit_svid(
    body: WitSvidRequest, principal: AdminDep, services: ServicesDep
) -> WitSvidResponse:
    """Mint a WIT-SVID (experimental, `TRUSTD_WIT_SVID`) binding the public key `jwk` to
    `spiffe_id`; 404 problem when the feature is off."""
    svid = services.issuer.mint_wit_svid(principal.name, body.spiffe_id, body.jwk, _ttl(body.ttl))
    return wit_svid_response(svid)


def wit_svid_response(svid: WitSvid) -> WitSvidResponse:
    return WitSvidResponse(
        token=svid.token,
        spiffe_id=str(svid.spiffe_id),
        kid=svid.kid,
        jti=svid.jti,
        expires_at=svid.expiry,
    )


def jwt_svid_response(svid: JwtSvid) -> JwtSvidResponse:
    return JwtSvidResponse(
        token=svid.token,
        spiffe_id=str(svid.spiffe_id),
        audience=list(svid.audience),
        kid=svid.kid,
        expires_at=svid.expiry,
    )
