"""The ACME server's HTTP surface (RFC 8555 §7) under /acme, and its admin view under
/v1/admin/acme.

Every ACME response carries a fresh Replay-Nonce (§6.5) and a Link to the directory (§7.1),
errors included; the error documents themselves come from `trustd.api.problems`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from pki.acme.errors import UnsupportedMediaType
from pki.acme.jws import b64encode
from pki.errors import TrustdError
from trustd.api import problems
from trustd.api.deps import AdminDep, Exemption, ServicesDep, exempt, require
from trustd.api.wire import CountQuery, Seconds, WireModel
from trustd.domain.acme import (
    Account,
    AuthorizationView,
    Challenge,
    EabKey,
    Order,
    OrderView,
    ResourceKind,
    ResourceRef,
)
from trustd.services.acme.authentication import Authenticated
from trustd.services.acme.urls import PREFIX, AcmeUrls
from trustd.services.container import Services

JOSE_JSON = "application/jose+json"
PEM_CHAIN = "application/pem-certificate-chain"
_NONCE_STATE = "acme_replay_nonce"
T = TypeVar("T")


class AcmeRoute(APIRoute):
    """Adds Replay-Nonce, the index Link and no-store to every ACME response, errors too
    (RFC 8555 §6.5: a badNonce error must carry a fresh nonce)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def acme_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except TrustdError as exc:
                response = problems.trustd_error_response(exc)
            services: Services = request.app.state.services
            # Issued with the request's own work when it got that far (`_authenticated`).
            nonce: str | None = getattr(request.state, _NONCE_STATE, None)
            if nonce is None:
                try:
                    nonce = await run_in_threadpool(services.acme.nonces.issue)
                except TrustdError as exc:
                    return problems.trustd_error_response(exc)
            response.headers["Replay-Nonce"] = nonce
            response.headers["Cache-Control"] = "no-store"
            response.headers.append("Link", f'<{services.acme.urls.directory}>;rel="index"')
            return response

        return acme_handler


acme_router = APIRouter(
    prefix=PREFIX, tags=["acme"], route_class=AcmeRoute, dependencies=[exempt(Exemption.ACME)]
)
admin_router = APIRouter(prefix="/v1/admin/acme", tags=["admin"])


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json(
    document: Any,
    status: int = 200,
    location: str | None = None,
    retry_after: int | None = None,
) -> JSONResponse:
    headers: dict[str, str] = {}
    if location:
        headers["Location"] = location
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(document, status_code=status, headers=headers)


async def _authenticated(
    request: Request,
    services: Services,
    call: Callable[[Authenticated], T],
    *,
    allow_jwk: bool = False,
    target: ResourceRef | None = None,
) -> T:
    """Authenticate the request (RFC 8555 §6.2-§6.5), reading the signing account with the
    resource *target* its URL names, and run *call* with it. Both block (database, nonce
    store), so they share one trip to a worker thread; the response's fresh nonce comes from
    the same exchange with the nonce store that spends the request's own."""
    # RFC 8555 §6.2: request bodies are application/jose+json; anything else is refused.
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != JOSE_JSON:
        raise UnsupportedMediaType(f"ACME requests must be sent as {JOSE_JSON}")
    body = await request.body()
    url = services.acme.urls.url(request.url.path)

    def keep_nonce(nonce: str) -> None:
        setattr(request.state, _NONCE_STATE, nonce)

    def authenticated_call() -> T:
        auth = services.acme.authenticate(
            body, url, allow_jwk=allow_jwk, target=target, on_nonce=keep_nonce
        )
        return call(auth)

    return await run_in_threadpool(authenticated_call)


# --------------------------------------------------------------------------- rendering


def _account_json(urls: AcmeUrls, account: Account) -> dict[str, Any]:
    return {
        "status": str(account.status),
        "contact": list(account.contact),
        "orders": urls.orders(account.id),
        "createdAt": _ts(account.created_at),
    }


def _order_json(urls: AcmeUrls, view: OrderView) -> dict[str, Any]:
    order = view.order
    document: dict[str, Any] = {
        "status": str(order.status),
        "expires": _ts(order.expires),
        "identifiers": [i.to_json() for i in order.identifiers],
        "authorizations": [urls.authz(a) for a in view.authorization_ids],
        "finalize": urls.finalize(order.id),
        "profile": order.profile,
    }
    if order.not_before is not None:
        document["notBefore"] = _ts(order.not_before)
    if order.not_after is not None:
        document["notAfter"] = _ts(order.not_after)
    if order.replaces is not None:
        document["replaces"] = order.replaces
    if order.certificate_serial is not None:
        document["certificate"] = urls.certificate(order.certificate_serial)
    if order.error is not None:
        document["error"] = order.error
    return document


def _challenge_json(urls: AcmeUrls, challenge: Challenge) -> dict[str, Any]:
    document: dict[str, Any] = {
        "type": str(challenge.type),
        "url": urls.challenge(challenge.id),
        "status": str(challenge.status),
        "token": challenge.token,
    }
    if challenge.validated is not None:
        document["validated"] = _ts(challenge.validated)
    if challenge.error is not None:
        document["error"] = challenge.error
    return document


def _authz_json(urls: AcmeUrls, view: AuthorizationView) -> dict[str, Any]:
    authz = view.authorization
    document: dict[str, Any] = {
        "identifier": {"type": authz.identifier_type, "value": authz.identifier_value},
        "status": str(authz.status),
        "expires": _ts(authz.expires),
        "challenges": [_challenge_json(urls, c) for c in view.challenges],
    }
    if authz.wildcard:
        document["wildcard"] = True
    return document


# --------------------------------------------------------------------------- ACME resources


@acme_router.get("/directory")
def directory(services: ServicesDep) -> JSONResponse:
    """The ACME directory (RFC 8555 §7.1.1)."""
    return _json(services.acme.directory.document())


@acme_router.head("/new-nonce", status_code=200)
def new_nonce_head() -> Response:
    """A fresh nonce in Replay-Nonce (RFC 8555 §7.2: HEAD answers 200)."""
    return Response(status_code=200)


@acme_router.get("/new-nonce", status_code=204)
def new_nonce_get() -> Response:
    """A fresh nonce in Replay-Nonce (RFC 8555 §7.2: GET answers 204)."""
    return Response(status_code=204)


@acme_router.post("/new-account")
async def new_account(request: Request, services: ServicesDep) -> JSONResponse:
    """Create or find the account of the signing key (RFC 8555 §7.3)."""
    account, created = await _authenticated(
        request, services, services.acme.accounts.new_account, allow_jwk=True
    )
    urls = services.acme.urls
    return _json(_account_json(urls, account), 201 if created else 200, urls.account(account.id))


@acme_router.post("/account/{account_id}")
async def account(account_id: str, request: Request, services: ServicesDep) -> JSONResponse:
    """Read, update or deactivate the account (RFC 8555 §7.3.2, §7.3.6)."""
    account = await _authenticated(
        request, services, lambda auth: services.acme.accounts.update_account(auth, account_id)
    )
    return _json(_account_json(services.acme.urls, account))


@acme_router.post("/account/{account_id}/orders")
async def account_orders(
    account_id: str, request: Request, services: ServicesDep, cursor: CountQuery = 0
) -> JSONResponse:
    """The account's orders, paginated with Link rel="next" (RFC 8555 §7.1.2.1)."""
    page = await _authenticated(
        request,
        services,
        lambda auth: services.acme.orders.account_orders(auth, account_id, max(cursor, 0)),
    )
    urls = services.acme.urls
    response = _json({"orders": [urls.order(i) for i in page.order_ids]})
    if page.more:
        response.headers.append(
            "Link", f'<{urls.orders(account_id)}?cursor={cursor + 1}>;rel="next"'
        )
    return response


@acme_router.post("/key-change")
async def key_change(request: Request, services: ServicesDep) -> JSONResponse:
    """Roll the account over to a new key (RFC 8555 §7.3.5)."""
    account = await _authenticated(request, services, services.acme.accounts.key_change)
    return _json(_account_json(services.acme.urls, account))


@acme_router.post("/new-order")
async def new_order(request: Request, services: ServicesDep) -> JSONResponse:
    """Create an order (RFC 8555 §7.4)."""
    view = await _authenticated(request, services, services.acme.orders.new_order)
    urls = services.acme.urls
    return _json(_order_json(urls, view), 201, urls.order(view.order.id))


@acme_router.post("/order/{order_id}")
async def order(order_id: str, request: Request, services: ServicesDep) -> JSONResponse:
    """The order (POST-as-GET)."""
    view = await _authenticated(
        request,
        services,
        lambda auth: services.acme.orders.get_order(auth, order_id),
        target=ResourceRef(ResourceKind.ORDER, order_id),
    )
    return _json(_order_json(services.acme.urls, view))


@acme_router.post("/order/{order_id}/finalize")
async def finalize(order_id: str, request: Request, services: ServicesDep) -> JSONResponse:
    """Finalize a ready order with a CSR (RFC 8555 §7.4)."""
    view = await _authenticated(
        request,
        services,
        lambda auth: services.acme.certificates.finalize(auth, order_id),
        target=ResourceRef(ResourceKind.ORDER, order_id),
    )
    urls = services.acme.urls
    return _json(_order_json(urls, view), location=urls.order(order_id))


@acme_router.post("/authz/{authz_id}")
async def authorization(authz_id: str, request: Request, services: ServicesDep) -> JSONResponse:
    """The authorization (POST-as-GET), or its deactivation (RFC 8555 §7.5.2)."""
    view = await _authenticated(
        request,
        services,
        lambda auth: services.acme.authorizations.get_authorization(auth, authz_id),
        target=ResourceRef(ResourceKind.AUTHORIZATION, authz_id),
    )
    return _json(_authz_json(services.acme.urls, view), retry_after=view.retry_after)


@acme_router.post("/chall/{challenge_id}")
async def challenge(challenge_id: str, request: Request, services: ServicesDep) -> JSONResponse:
    """Read a challenge, or ask for its validation (RFC 8555 §7.5.1); the answer carries
    the outcome of a validation that finished quickly, else `processing`."""
    view = await _authenticated(
        request,
        services,
        lambda auth: services.acme.challenges.respond(auth, challenge_id),
        target=ResourceRef(ResourceKind.CHALLENGE, challenge_id),
    )
    urls = services.acme.urls
    response = _json(_challenge_json(urls, view.challenge), retry_after=view.retry_after)
    response.headers.append("Link", f'<{urls.authz(view.authorization_id)}>;rel="up"')
    return response


async def _certificate(
    serial: str, alternate: int, request: Request, services: Services
) -> Response:
    chain = await _authenticated(
        request,
        services,
        lambda auth: services.acme.certificates.chain(auth, serial, alternate),
        target=ResourceRef(ResourceKind.CERTIFICATE, serial),
    )
    response = Response(chain.pem, media_type=PEM_CHAIN)
    urls = services.acme.urls
    # RFC 8555 §7.4.2: other chains are offered with Link rel="alternate".
    for n in range(chain.alternates + 1):
        if n != alternate:
            response.headers.append("Link", f'<{urls.certificate(serial, n)}>;rel="alternate"')
    return response


@acme_router.post("/cert/{serial}")
async def certificate(serial: str, request: Request, services: ServicesDep) -> Response:
    """The certificate chain, PEM (RFC 8555 §7.4.2)."""
    return await _certificate(serial, 0, request, services)


@acme_router.post("/cert/{serial}/{alternate}")
async def certificate_alternate(
    serial: str,
    alternate: Annotated[int, Path(ge=0, le=16)],
    request: Request,
    services: ServicesDep,
) -> Response:
    """An alternate chain: the same leaf, ending in the root."""
    return await _certificate(serial, alternate, request, services)


@acme_router.post("/revoke-cert")
async def revoke_cert(request: Request, services: ServicesDep) -> Response:
    """Revoke a certificate (RFC 8555 §7.6)."""
    await _authenticated(request, services, services.acme.revocations.revoke, allow_jwk=True)
    return Response(status_code=200)


@acme_router.get("/renewal-info/{cert_id}")
def renewal_info(cert_id: str, services: ServicesDep) -> JSONResponse:
    """The suggested renewal window (RFC 9773 §4.2), with Retry-After (§4.3)."""
    info = services.acme.renewals.renewal_info(cert_id)
    window = {"start": _ts(info.window.start), "end": _ts(info.window.end)}
    return _json({"suggestedWindow": window}, retry_after=info.retry_after)


# --------------------------------------------------------------------------- admin view


class AcmeAccountPublic(WireModel):
    id: str
    status: str
    contact: list[str]
    eab_key_id: str | None
    thumbprint: str
    created_at: datetime


class AcmeOrderPublic(WireModel):
    id: str
    account_id: str
    status: str
    identifiers: list[dict[str, str]]
    profile: str
    expires: datetime
    replaces: str | None
    certificate_serial: str | None
    created_at: datetime


class AcmeCertificatePublic(WireModel):
    serial: str
    account_id: str
    order_id: str
    identifiers: list[dict[str, str]]
    status: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None
    revocation_reason: str | None


class EabKeyCreate(WireModel):
    label: str = Field(min_length=1, max_length=128)
    dns_suffixes: list[str] = Field(default_factory=list, max_length=64)
    ip_networks: list[str] = Field(default_factory=list, max_length=64)
    ttl: Seconds | None = Field(default=None, description="Lifetime in seconds")


class EabKeyPublic(WireModel):
    id: str
    label: str
    dns_suffixes: list[str]
    ip_networks: list[str]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class EabKeyCreated(EabKeyPublic):
    hmac_key: str = Field(description="base64url MAC key; shown once")


def _eab_public(key: EabKey) -> EabKeyPublic:
    return EabKeyPublic.model_validate(key, from_attributes=True)


def _account_public(account: Account) -> AcmeAccountPublic:
    return AcmeAccountPublic.model_validate(account, from_attributes=True)


def _order_public(order: Order) -> AcmeOrderPublic:
    return AcmeOrderPublic(
        id=order.id,
        account_id=order.account_id,
        status=str(order.status),
        identifiers=[i.to_json() for i in order.identifiers],
        profile=order.profile,
        expires=order.expires,
        replaces=order.replaces,
        certificate_serial=order.certificate_serial,
        created_at=order.created_at,
    )


@admin_router.get(
    "/accounts", response_model=list[AcmeAccountPublic], dependencies=[require("admin:acme:read")]
)
def list_accounts(principal: AdminDep, services: ServicesDep) -> list[AcmeAccountPublic]:
    """Every ACME account."""
    return [_account_public(a) for a in services.acme.admin.accounts()]


@admin_router.post(
    "/accounts/{account_id}/deactivate",
    response_model=AcmeAccountPublic,
    dependencies=[require("admin:acme:write")],
)
def deactivate_account(
    account_id: str, principal: AdminDep, services: ServicesDep
) -> AcmeAccountPublic:
    """Deactivate an account: it can no longer order or revoke."""
    return _account_public(services.acme.accounts.deactivate(principal, account_id))


@admin_router.get(
    "/orders", response_model=list[AcmeOrderPublic], dependencies=[require("admin:acme:read")]
)
def list_orders(
    principal: AdminDep,
    services: ServicesDep,
    account_id: str | None = None,
    status: str | None = None,
) -> list[AcmeOrderPublic]:
    """The newest 1000 orders, optionally of one account or in one status."""
    return [_order_public(o) for o in services.acme.admin.orders(account_id, status)]


@admin_router.get(
    "/certificates",
    response_model=list[AcmeCertificatePublic],
    dependencies=[require("admin:acme:read")],
)
def list_certificates(principal: AdminDep, services: ServicesDep) -> list[AcmeCertificatePublic]:
    """The newest 1000 certificates issued through ACME."""
    return [
        AcmeCertificatePublic(
            serial=cert.serial,
            # The listing joins each certificate to its order: both are set.
            account_id=cert.account_id or "",
            order_id=cert.order_id or "",
            identifiers=[i.to_json() for i in cert.identifiers],
            status=str(cert.status),
            not_before=cert.not_before,
            not_after=cert.not_after,
            revoked_at=cert.revoked_at,
            revocation_reason=cert.revocation_reason,
        )
        for cert in services.acme.admin.certificates()
    ]


@admin_router.post(
    "/eab-keys",
    response_model=EabKeyCreated,
    status_code=201,
    dependencies=[require("admin:acme:write")],
)
def create_eab_key(body: EabKeyCreate, principal: AdminDep, services: ServicesDep) -> EabKeyCreated:
    """Create an External Account Binding key; the MAC key is in this response only."""
    created = services.acme.eab_keys.create(
        principal,
        body.label,
        body.dns_suffixes,
        body.ip_networks,
        timedelta(seconds=body.ttl) if body.ttl else None,
    )
    return EabKeyCreated(
        **_eab_public(created.key).model_dump(), hmac_key=b64encode(created.secret)
    )


@admin_router.get(
    "/eab-keys", response_model=list[EabKeyPublic], dependencies=[require("admin:acme:read")]
)
def list_eab_keys(principal: AdminDep, services: ServicesDep) -> list[EabKeyPublic]:
    """Every EAB key, without MAC keys."""
    return [_eab_public(k) for k in services.acme.eab_keys.list()]


@admin_router.delete(
    "/eab-keys/{key_id}",
    status_code=204,
    response_class=Response,
    dependencies=[require("admin:acme:write")],
)
def revoke_eab_key(key_id: str, principal: AdminDep, services: ServicesDep) -> Response:
    """Revoke an EAB key: no new account can bind with it."""
    services.acme.eab_keys.revoke(principal, key_id)
    return Response(status_code=204)


@admin_router.post(
    "/prune", response_model=dict[str, int], dependencies=[require("admin:acme:delete")]
)
def prune(principal: AdminDep, services: ServicesDep) -> dict[str, int]:
    """Expire stale pending objects and delete old finished ones now."""
    expired, deleted = services.acme.housekeeping.prune(principal)
    return {"expired": expired, "deleted": deleted}


router = APIRouter()
router.include_router(acme_router)
router.include_router(admin_router)
