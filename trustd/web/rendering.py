"""Rendering the UI's pages: the templates, OWASP secure headers on every page, and the
error page a failed view shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from pki.errors import TrustdError
from trustd.api.problems import status_for

WEB = Path(__file__).resolve().parent
STATIC = WEB / "static"
templates = Jinja2Templates(directory=WEB / "templates")
# Rows per page of the UI's listings.
PAGE = 50
# OWASP secure headers for HTML: nothing but this origin's own scripts and styles, no
# framing (clickjacking), no referrer leaking search terms, no caching of admin pages.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def secure_headers() -> dict[str, str]:
    """The headers every HTML page carries."""
    return dict(_HEADERS)


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page with the secure headers; `who`, `csrf` and `can` come from the request's
    viewer (set by `trustd.web.session.require`) unless given."""
    viewer = getattr(request.state, "viewer", None)
    context.setdefault("who", viewer.who if viewer else None)
    context.setdefault("csrf", viewer.who.csrf_token if viewer else "")
    context.setdefault("can", viewer.can if viewer else set())
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(_HEADERS)
    return response


def error_page(request: Request, exc: TrustdError) -> HTMLResponse:
    """The error as a page, with the status the JSON API would give."""
    return render(request, "error.html", status_for(exc), title=exc.title, message=exc.detail)
