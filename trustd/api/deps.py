"""Dependency aliases for routes: the services and the authenticated admin principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from trustd.errors import Unauthenticated
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


async def get_principal(request: Request, credentials: BearerDep) -> Principal:
    """The caller: the local administrator on the admin socket, else a bearer-token holder.

    Raises:
        Unauthenticated: no token, or a token that is refused.
    """
    return _principal(request, credentials)


async def require_admin(request: Request, credentials: BearerDep) -> Principal:
    """The caller, who must be an administrator. One dependency rather than one on top of
    `get_principal`: FastAPI solves every level of a chain again for each request.

    Raises:
        Unauthenticated: no token, or a token that is refused.
        PermissionDenied: the caller is not an administrator.
    """
    principal = _principal(request, credentials)
    principal.require(Role.ADMIN)
    return principal


def _principal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if request.scope.get(LOCAL_ADMIN_SCOPE_KEY):
        return Principal("local:admin-socket", Role.ADMIN)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("this endpoint needs an admin token: Authorization: Bearer <token>")
    services: Services = request.app.state.services
    return services.tokens.authenticate(credentials.credentials)


AdminDep = Annotated[Principal, Depends(require_admin)]


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
