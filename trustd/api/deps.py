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


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller: the local administrator on the admin socket, else a bearer-token holder.

    Raises:
        Unauthenticated: no token, or a token that is refused.
    """
    if request.scope.get(LOCAL_ADMIN_SCOPE_KEY):
        return Principal("local:admin-socket", Role.ADMIN)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("this endpoint needs an admin token: Authorization: Bearer <token>")
    return services.tokens.authenticate(credentials.credentials)


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    principal.require(Role.ADMIN)
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def get_node(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> NodePrincipal:
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
