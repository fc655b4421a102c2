"""CSRF defences (OWASP CSRF cheat sheet): every POST of a session carries the session's
synchronizer token; the sign-in form, which has no session yet, uses a double-submit token
(a random value in a SameSite cookie and in the form)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from trustd.services.container import Services
from trustd.services.ui import CsrfRefused, UiPrincipal
from trustd.web.cookies import delete_cookie, login_cookie, set_cookie


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def check_form(request: Request, services: Services, who: UiPrincipal) -> None:
    """Refuse a POST whose form lacks the session's synchronizer token (compared in
    constant time), auditing the refusal.

    Raises:
        CsrfRefused: the token is missing or does not match.
    """
    form = await request.form()
    if services.ui.csrf_matches(who.csrf_token, _text(form.get("csrf"))):
        return
    await run_in_threadpool(
        services.ui.record, who.principal.name, "ui:csrf:denied", target=request.url.path
    )
    raise CsrfRefused(
        "this form is missing its security token or it is stale; reload the page and submit again"
    )


def issue_login_token(response: Response, services: Services, token: str) -> None:
    """Set the sign-in form's double-submit cookie to `token` (also put in the form)."""
    set_cookie(response, services, login_cookie(services), token)


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def login_token(request: Request, services: Services) -> str:
    """The double-submit token the sign-in form was served with ("" when none)."""
    return request.cookies.get(login_cookie(services), "")


def login_token_matches(request: Request, services: Services, presented: str) -> bool:
    """Whether the sign-in POST carries the token of its form's cookie."""
    expected = login_token(request, services)
    return bool(expected) and services.ui.csrf_matches(expected, presented)


def end_login_token(response: Response, services: Services) -> None:
    delete_cookie(response, login_cookie(services))
