"""Who is viewing: the session behind the cookie, the CSRF check of a POST, and the
admin policy's decision on the one permission a view names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from policy.admin import checked_permission
from trustd.api.deps import Declaration
from trustd.errors import PermissionDenied, Unauthenticated
from trustd.services.ui import UiPrincipal
from trustd.web.cookies import services_of, session_cookie
from trustd.web.csrf import check_form

# The permissions the navigation and buttons depend on, checked once per page.
NAV = (
    "admin:dashboard:read",
    "admin:node:read",
    "admin:node:write",
    "admin:entry:read",
    "admin:entry:write",
    "admin:entry:delete",
    "admin:certificate:read",
    "admin:certificate:revoke",
    "admin:identity:read",
    "admin:identity:quarantine",
    "admin:ca:read",
    "admin:ca:write",
    "admin:federation:read",
    "admin:federation:write",
    "admin:policy:read",
    "admin:policy:test",
    "admin:policy:write",
    "admin:decision:read",
    "admin:graph:read",
    "admin:flow:read",
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


class ViewPermission(Declaration):
    """A view's `admin:<resource>:<action>` permission. As a dependency: a live session,
    then for POSTs the CSRF token, then the same admin-policy decision the JSON API asks
    (`services.authz`); a refusal is audited (`ui:view:denied`, outcome `denied`).
    """

    def __init__(self, permission: str) -> None:
        self.declared = checked_permission(permission)

    async def check(self, request: Request) -> Viewer:
        """Raises:
        CsrfRefused: a POST without the session's synchronizer token.
        PermissionDenied: the admin policy refuses the user's role this permission.
        """
        permission = self.declared
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
        verdict = services.authz.decide(who.role, permission)
        if not verdict.allowed:
            await run_in_threadpool(
                services.authz.refuse,
                who.principal,
                permission,
                verdict,
                action="ui:view:denied",
                target=request.url.path,
                details={"method": request.method},
            )
            raise PermissionDenied(f"this page needs {permission}: {verdict.reason}")
        viewer = Viewer(who, permission, services.authz.granted(who.role, NAV))
        request.state.viewer = viewer
        return viewer


def require(permission: str) -> Any:
    """The dependency of a view needing `permission` (see `ViewPermission`)."""
    return Depends(ViewPermission(permission).check)
