"""Who is viewing: the session behind the cookie, the CSRF check of a POST, and the
admin policy's decision on the one permission a view names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from trustd.errors import PermissionDenied, Unauthenticated
from trustd.services.ui import UiPrincipal, authorize, permissions_of
from trustd.web.cookies import services_of, session_cookie
from trustd.web.csrf import check_form

# The permissions the navigation and buttons depend on, checked once per page.
NAV = (
    "admin:dashboard:read",
    "admin:node:read",
    "admin:node:write",
    "admin:entry:read",
    "admin:entry:write",
    "admin:svid:read",
    "admin:svid:revoke",
    "admin:ca:read",
    "admin:ca:write",
    "admin:policy:read",
    "admin:policy:test",
    "admin:policy:write",
    "admin:decision:read",
    "admin:graph:read",
    "admin:audit:read",
)


class SignInRequired(Exception):
    """No live session: the view answers with a redirect to the sign-in page."""

    def __init__(self, message: str) -> None:
        self.message = message


@dataclass(frozen=True)
class Viewer:
    who: UiPrincipal
    permission: str
    can: set[str]


def require(permission: str) -> Any:
    """The dependency of a view needing `permission`: a live session, then for POSTs the
    CSRF token, then the admin policy's decision for the user's role.
    """

    async def dependency(request: Request) -> Viewer:
        services = services_of(request)
        token = request.cookies.get(session_cookie(services))
        if not token:
            raise SignInRequired("sign in to continue")
        try:
            who = await run_in_threadpool(services.ui.authenticate, token)
        except Unauthenticated as exc:
            raise SignInRequired(exc.detail) from None
        if request.method == "POST":
            await check_form(request, services, who)
        verdict = authorize(services.policy, who.role, permission)
        if not verdict.allowed:
            await run_in_threadpool(
                services.ui.record,
                who.principal.name,
                "ui:view:denied",
                target=request.url.path,
                details={"permission": permission, "reason": verdict.reason},
            )
            raise PermissionDenied(f"this page needs {permission}: {verdict.reason}")
        viewer = Viewer(who, permission, permissions_of(services.policy, who.role, NAV))
        request.state.viewer = viewer
        return viewer

    return Depends(dependency)
