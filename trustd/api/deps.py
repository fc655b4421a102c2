"""Dependency aliases for routes: the services, the declared access of every route (one
`admin:<resource>:<action>` permission, or an exemption naming the route's own model) and the
admin principal that permission admitted."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from policy.admin import checked_permission
from trustd.errors import PermissionDenied, Unauthenticated
from trustd.roles import Role
from trustd.services.auth import Principal
from trustd.services.container import Services
from trustd.services.nodes import NodePrincipal

# Set on requests that arrive over the admin Unix socket (see `trustd.server`).
LOCAL_ADMIN_SCOPE_KEY = "trustd.local_admin"

_bearer = HTTPBearer(auto_error=False, description="Admin token: trustd.<id>.<secret>")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


class Exemption(StrEnum):
    """Why a route declares no admin permission: it has its own authentication model."""

    # Anyone: health, the trust bundle, CRLs and OCSP (RFC 5280 §5, RFC 6960: relying
    # parties fetch them without credentials).
    PUBLIC = "public"
    # Prometheus scrapes: the metrics token, or loopback only (see `api.health`).
    METRICS = "metrics"
    # Node attestation: the attestation evidence is the credential.
    ATTESTATION = "attestation"
    # The agent channel: a node credential signed with the node SVID's key.
    AGENT = "agent"
    # The ACME protocol: JWS signed by the account key (RFC 8555 §6.2).
    ACME = "acme"
    # The OPA Data and Policy API reads: the caller is checked per `policy_api_auth`.
    POLICY_API = "policy-api"
    # The UI's sign-in form: it establishes the session every other view needs.
    SIGN_IN = "sign-in"


class Declaration:
    """What a route declares about who may call it; every route has exactly one, found by
    walking its dependencies (`tests/functional/test_authorization.py`). Routes depend on
    the bound method `check`: FastAPI reads a dependency's annotations from its function's
    module, which a callable instance does not have."""

    declared: str


class Permission(Declaration):
    """A route's `admin:<resource>:<action>` permission. As a dependency it authenticates
    the caller and asks the admin policy; a refusal is audited (`admin:permission:denied`,
    outcome `denied`) and answered 403.
    """

    def __init__(self, permission: str) -> None:
        self.declared = checked_permission(permission)

    async def check(self, request: Request, credentials: BearerDep) -> Principal:
        """Raises:
        Unauthenticated: no token, or a token that is refused.
        PermissionDenied: the admin policy refuses the caller's role this permission.
        """
        services: Services = request.app.state.services
        principal = _remembered(request, credentials)
        if principal is None:
            # A database read (and an audit row when refused): off the event loop.
            principal = await run_in_threadpool(_principal, request, credentials)
        verdict = services.authz.decide(principal.role, self.declared)
        if not verdict.allowed:
            await run_in_threadpool(
                services.authz.refuse,
                principal,
                self.declared,
                verdict,
                action="admin:permission:denied",
                target=f"{request.method} {request.url.path}",
            )
            raise PermissionDenied(f"this action needs {self.declared}: {verdict.reason}")
        request.state.admin_principal = principal
        return principal

    def admitted(
        self, services: Services, scope: Scope, authorization: str | None
    ) -> Principal | None:
        """The caller of an ASGI request with this `Authorization` header (or None), when
        `check` would admit it without the database: a token accepted moments ago, or the
        admin socket, whose role this permission allows. None when only `check` can decide
        (a token to look up, a malformed one, a refusal to audit): lean paths hand such
        requests to their route, so that every refusal is answered and audited in one place.
        """
        try:
            principal = remembered_principal(
                services,
                local=bool(scope.get(LOCAL_ADMIN_SCOPE_KEY)),
                token=bearer_token(authorization),
            )
        except Unauthenticated:
            return None
        if principal is None or not services.authz.decide(principal.role, self.declared).allowed:
            return None
        return principal


class Exempt(Declaration):
    """A route outside the admin model, saying which model it follows instead."""

    def __init__(self, exemption: Exemption) -> None:
        self.declared = exemption.value

    async def check(self) -> None:
        return None


def require(permission: str) -> Any:
    """The dependency declaring a route's permission, as in
    `dependencies=[require("admin:entry:read")]`."""
    return Depends(Permission(permission).check)


def exempt(exemption: Exemption) -> Any:
    """The dependency declaring that a route (or a router) is outside the admin model."""
    return Depends(Exempt(exemption).check)


async def authorized_principal(request: Request) -> Principal:
    """The caller the route's declared permission admitted (FastAPI solves the decorator's
    `dependencies` before the parameters). Fails closed: a route taking the principal
    without declaring a permission refuses every caller.

    Raises:
        PermissionDenied: the route declares no permission.
    """
    principal: Principal | None = getattr(request.state, "admin_principal", None)
    if principal is None:
        raise PermissionDenied("this route declares no permission")
    return principal


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer <credentials>` header (RFC 6750 §2.1),
    None for any other header or none, as FastAPI's `HTTPBearer(auto_error=False)` reads
    it."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if not scheme or not credentials or scheme.lower() != "bearer":
        return None
    return credentials


def remembered_principal(services: Services, *, local: bool, token: str | None) -> Principal | None:
    """The caller when known without the database (the admin socket, a token accepted
    moments ago); None when `_principal` must ask it.

    Raises:
        Unauthenticated: a malformed token.
    """
    if local:
        return Principal("local:admin-socket", Role.ADMIN)
    if token is None:
        return None
    return services.tokens.remembered(token)


def _remembered(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal | None:
    if credentials is not None and credentials.scheme.lower() != "bearer":
        credentials = None
    return remembered_principal(
        request.app.state.services,
        local=bool(request.scope.get(LOCAL_ADMIN_SCOPE_KEY)),
        token=credentials.credentials if credentials is not None else None,
    )


def _principal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller: the local administrator on the admin socket, else a bearer-token holder.

    Raises:
        Unauthenticated: no token, or a token that is refused.
    """
    if request.scope.get(LOCAL_ADMIN_SCOPE_KEY):
        return Principal("local:admin-socket", Role.ADMIN)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("this endpoint needs an admin token: Authorization: Bearer <token>")
    services: Services = request.app.state.services
    return services.tokens.authenticate(credentials.credentials)


AdminDep = Annotated[Principal, Depends(authorized_principal)]


def get_node(services: ServicesDep, credentials: BearerDep) -> NodePrincipal:
    """The agent calling, from its node credential (a JWT signed with its node SVID key).
    A plain function, so FastAPI runs it on a worker thread: when a change wakes every
    agent, their key lookups and signature checks do not queue on the event loop.

    Raises:
        Unauthenticated: missing or refused credential.
    """
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("agent calls need a node credential: Authorization: Bearer <jwt>")
    return services.nodes.authenticate(credentials.credentials)


NodeDep = Annotated[NodePrincipal, Depends(get_node)]
