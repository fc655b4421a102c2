"""The one place errors become HTTP: RFC 9457 `application/problem+json` documents."""

from __future__ import annotations

import re
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from pki import errors as pki_errors
from pki import federation as pki_federation
from pki.acme import errors as acme
from pki.errors import TrustdError
from policy import errors as policy_errors
from trustd import errors
from trustd.attestation.base import AttestationFailed
from trustd.leader import LostLeadership
from trustd.services import flows, ui

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("trustd.api")

_STATUS: dict[type[TrustdError], int] = {
    pki_errors.InvalidSpiffeId: 400,
    pki_errors.InvalidTrustDomain: 400,
    pki_errors.InvalidCsr: 400,
    pki_errors.WeakKey: 400,
    pki_errors.InvalidJwt: 400,
    pki_errors.InvalidSvid: 400,
    pki_errors.InvalidSvidParams: 400,
    pki_errors.InvalidBundle: 400,
    pki_errors.InvalidSelector: 400,
    AttestationFailed: 401,
    # CA rotation and revocation.
    pki_errors.InvalidTransition: 409,
    pki_errors.InvalidOcspRequest: 400,
    LostLeadership: 409,
    errors.InvalidRequest: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    # The server does not offer it: as for a route that is not there.
    errors.FeatureDisabled: 404,
    errors.PayloadTooLarge: 413,
    errors.BundleEndpointError: 502,
    pki_federation.InvalidEndpoint: 400,
    errors.StoreUnavailable: 503,
    errors.NotReady: 503,
    # A PKCS#11 token that fails mid-signature: nothing was signed or recorded; retry.
    pki_errors.KeyUnavailable: 503,
    # Policy: a refused module or bundle is the caller's to fix; an evaluation failure
    # (engine error or panic) is reported with its reason, not hidden as a 500.
    policy_errors.PolicyCompileError: 400,
    policy_errors.InvalidInput: 400,
    policy_errors.InvalidModuleId: 400,
    policy_errors.InvalidPolicyBundle: 400,
    policy_errors.BundleSignatureError: 400,
    policy_errors.UnknownPath: 404,
    # OPA Data API writes: a missing document is 404; OPA answers a write conflict
    # (a non-object in the way) 404 too, with code resource_conflict (server/writer).
    policy_errors.DataNotFound: 404,
    policy_errors.DataConflict: 404,
    policy_errors.InvalidDataWrite: 400,
    policy_errors.PolicyEvaluationError: 422,
    # RFC 8555 §6.7 errors; statuses as RFC 8555 and RFC 9773 give them.
    acme.AcmeError: 500,
    acme.Malformed: 400,
    acme.UnsupportedMediaType: 415,
    acme.KeyInUse: 409,
    acme.AcmeNotFound: 404,
    acme.BadNonce: 400,
    acme.BadSignatureAlgorithm: 400,
    acme.BadPublicKey: 400,
    acme.Unauthorized: 403,
    acme.AccountDoesNotExist: 400,
    acme.ExternalAccountRequired: 400,
    acme.InvalidContact: 400,
    acme.UnsupportedContact: 400,
    acme.RejectedIdentifier: 400,
    acme.UnsupportedIdentifier: 400,
    acme.BadCsr: 400,
    acme.OrderNotReady: 403,
    acme.RateLimited: 429,
    acme.BadRevocationReason: 400,
    acme.AlreadyRevoked: 400,
    acme.AlreadyReplaced: 409,
    acme.InvalidProfile: 400,
    # A node sending flow batches faster than it may.
    flows.FlowBatchesThrottled: 429,
    # Admin web UI.
    ui.SignInPaused: 429,
    ui.CsrfRefused: 403,
}


def problem_type(name: str) -> str:
    """`InvalidCsr` -> `urn:trustd:problem:invalid-csr`."""
    return "urn:trustd:problem:" + re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def problem_response(
    status: int,
    title: str,
    detail: str,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extensions}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def status_for(exc: TrustdError) -> int:
    """The HTTP status of `exc` (the admin UI renders the same status as an HTML page)."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


async def _trustd_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TrustdError)
    return trustd_error_response(exc)


def trustd_error_response(exc: TrustdError) -> JSONResponse:
    """The problem document for `exc`; ACME errors carry their RFC 8555 type."""
    status = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, acme.AcmeError) and status < 500:
        if isinstance(exc, acme.RateLimited):
            # RFC 8555 §6.6: rateLimited responses say when to retry.
            headers["Retry-After"] = str(exc.fields.get("retry_after", 1))
        if isinstance(exc, acme.KeyInUse):
            # RFC 8555 §7.3.5: a 409 names the account holding the key in Location.
            headers["Location"] = str(exc.fields.get("location", ""))
        return problem_response(
            status,
            exc.title,
            exc.detail,
            exc.type_uri,
            headers,
            # RFC 8555 §6.2 `algorithms`, §6.7.1 `subproblems`.
            **{k: v for k, v in exc.fields.items() if k in ("algorithms", "subproblems")},
        )
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="trustd"'
    if status == 503:
        headers["Retry-After"] = "1"
    if status == 429:
        # RFC 9110 §10.2.3 / RFC 6585 §4: say when to come back.
        headers["Retry-After"] = str(exc.fields.get("retry_after", 1))
    if status >= 500:
        # Internal faults are logged once, here; the client learns nothing about internals.
        log.error("request_failed", error=type(exc).__name__, detail=exc.detail, status=status)
        if status == 500:
            return problem_response(500, "Internal error", "the server could not complete this")
    return problem_response(
        status,
        exc.title,
        exc.detail,
        problem_type(type(exc).__name__),
        headers,
        **{k: v for k, v in exc.fields.items() if isinstance(v, str | int | float | bool)},
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Echo where and why, never the input itself: it may hold a CSR or a token.
    details = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    summary = "; ".join(
        f"{'.'.join(str(p) for p in d['loc'] if p != 'body') or 'body'}: {d['msg']}"
        for d in details
    )
    return problem_response(
        422,
        "Invalid request",
        summary,
        problem_type("InvalidRequest"),
        errors=details,
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path. The router names only the
    first route whose path matched, but RFC 9110 §15.5.6 has a 405 list the target's
    methods (`/v1/data/{path}` is served by one route per method)."""
    methods: set[str] = set()
    path = request.url.path
    for route in iter_route_contexts(request.app.routes):
        served, pattern = route.methods, route.path
        if served and pattern and compile_path(pattern)[0].match(path):
            methods.update(served)
    return sorted(methods)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    return problem_response(
        exc.status_code,
        _TITLES.get(exc.status_code, "Error"),
        str(exc.detail),
        headers=headers,
    )


_TITLES = {404: "Not found", 405: "Method not allowed", 413: "Request too large"}


def install(app: FastAPI) -> None:
    app.add_exception_handler(TrustdError, _trustd_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Exceptions nothing maps are answered (and logged, once) by `RequestContext`: a
    # handler for `Exception` runs in Starlette's ServerErrorMiddleware, which re-raises
    # after answering, so the server logged every 500 a second time.
