"""Signing in and out of the admin UI."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from pki.errors import TrustdError
from trustd.api.deps import Exemption, ServicesDep, exempt
from trustd.api.problems import status_for
from trustd.web.cookies import delete_cookie, session_cookie, set_cookie
from trustd.web.csrf import (
    end_login_token,
    issue_login_token,
    login_token,
    login_token_matches,
    new_login_token,
)
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()


@router.get("/login", response_class=HTMLResponse, dependencies=[exempt(Exemption.SIGN_IN)])
def login_form(
    request: Request,
    services: ServicesDep,
    next: Annotated[str, Query(max_length=512)] = "/ui/",
    message: Annotated[str, Query(max_length=256)] = "",
) -> HTMLResponse:
    """The sign-in form. A random token in a SameSite cookie and in the form protects the
    sign-in POST too (login CSRF, OWASP double-submit)."""
    token = new_login_token()
    response = render(request, "login.html", next=_safe_next(next), csrf=token, message=message)
    issue_login_token(response, services, token)
    return response


def _safe_next(target: str) -> str:
    # Only paths of this UI: an absolute or scheme-relative URL would be an open redirect.
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/"


@router.post("/login", response_class=HTMLResponse, dependencies=[exempt(Exemption.SIGN_IN)])
async def login(
    request: Request,
    services: ServicesDep,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    totp: Annotated[str, Form(max_length=16)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=512)] = "/ui/",
) -> Response:
    """Check the credentials and open a session; a failure says so and changes nothing
    but the account's failure count."""
    expected = login_token(request, services)
    if not login_token_matches(request, services, csrf):
        await run_in_threadpool(
            services.ui.record, f"ui:{username[:64]}", "ui:csrf:denied", target="/ui/login"
        )
        return render(
            request,
            "login.html",
            403,
            next=_safe_next(next),
            csrf=expected,
            error="the sign-in form expired; reload the page and try again",
        )
    try:
        signed_in = await run_in_threadpool(services.ui.sign_in, username, password, totp)
    except TrustdError as exc:
        return render(
            request,
            "login.html",
            status_for(exc),
            next=_safe_next(next),
            csrf=expected,
            error=exc.detail,
            username=username,
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_cookie(response, services, session_cookie(services), signed_in.token)
    end_login_token(response, services)
    return response


@router.post("/logout")
def logout(
    services: ServicesDep, viewer: Annotated[Viewer, require("admin:dashboard:read")]
) -> RedirectResponse:
    """End the session here and in the database."""
    services.ui.sign_out(viewer.who)
    response = RedirectResponse("/ui/login?message=signed out", status_code=303)
    delete_cookie(response, session_cookie(services))
    return response
