"""SVID issuance for administrators (registration entries authorise agents later)."""

from __future__ import annotations

import json
from datetime import timedelta

from fastapi import APIRouter, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from pki.ca import serial_hex
from pki.errors import TrustdError
from pki.jwt_svid import JwtSvid
from pki.wit_svid import WitSvid
from trustd.api.deps import AdminDep, Permission, ServicesDep, require
from trustd.api.middleware import answered_by, read_body
from trustd.api.problems import trustd_error_response
from trustd.api.schemas import (
    JwtSvidRequest,
    JwtSvidResponse,
    WitSvidRequest,
    WitSvidResponse,
    X509SvidRequest,
    X509SvidResponse,
)
from trustd.services.auth import Principal
from trustd.services.container import Services
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


X509_PATH = "/v1/svid/x509"
X509_PERMISSION = "admin:svid:write"


@router.post(
    "/x509",
    response_model=X509SvidResponse,
    status_code=201,
    dependencies=[require(X509_PERMISSION)],
)
async def issue_x509_svid(
    body: X509SvidRequest, principal: AdminDep, services: ServicesDep
) -> Response:
    """Sign a CSR as an X509-SVID for `spiffe_id`. The CSR only proves key possession: its
    subject and names are ignored.
    """
    return await x509_svid_response(services, principal, body)


async def x509_svid_response(
    services: Services, principal: Principal, body: X509SvidRequest
) -> Response:
    """The answer to an admitted, validated X509-SVID request (the route's and
    `IssuancePath`'s).

    Raises:
        As `Issuer.issue`.
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


class IssuancePath:
    """The lean path of `POST /v1/svid/x509`, as `trustd.api.opa.DecisionPath` is for
    decisions: the common request (a JSON body the route's model accepts, from a caller
    admitted without the database) is answered here, below the middleware every request
    passes (request id, size and nesting limits, the last word on errors, metrics, access
    log) but without the router, the route's dependency solving and its request handler,
    which profiles under `bench/issuance.py` showed cost more CPU than building and
    signing the certificate. The answer is the route's (`x509_svid_response`), issuance
    errors go through the one mapper (`trustd.api.problems`). Every other request (no or
    an unknown token, a refusal to audit, a body the model refuses, another media type) is
    handed to the route itself, which validates, refuses and maps it as it always did; it
    stays declared for the OpenAPI document.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._permission = Permission(X509_PERMISSION)
        self._route = next(
            r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is issue_x509_svid
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != X509_PATH:
            await self.app(scope, receive, send)
            return
        authorization: str | None = None
        content_type: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
        raw, receive = await read_body(receive)
        services: Services = scope["app"].state.services
        principal = self._permission.admitted(services, scope, authorization)
        body = _x509_request(content_type, raw) if principal is not None else None
        if principal is None or body is None:
            await self.app(scope, receive, send)
            return
        answered_by(scope, self._route)
        try:
            response = await x509_svid_response(services, principal, body)
        except TrustdError as exc:
            response = trustd_error_response(exc)
        await response(scope, receive, send)


def _x509_request(content_type: str | None, raw: bytes) -> X509SvidRequest | None:
    """The request body as the route would validate it (a JSON document parsed as Starlette
    parses it, then the route's model), or None when the route must answer: a media type
    other than plain `application/json`, a body that is not JSON or that the model refuses
    (the route reports why, RFC 9457 problem)."""
    if content_type is None or content_type.split(";", 1)[0].strip().lower() != "application/json":
        return None
    try:
        return X509SvidRequest.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None


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
