"""Rendering the UI's pages: the templates, OWASP secure headers on every page, and the
error page a failed view shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
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
# Every time the UI shows is in this one format, in UTC, the zone written out: operators in
# different zones read the same value, and it is the zone the logs and the API use.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
TIME_ZONE = "UTC"
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


def utc(value: datetime | None) -> str:
    """A time as every page shows it (`TIME_FORMAT`); "never" for none."""
    if value is None:
        return "never"
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.strftime(TIME_FORMAT)


def iso(value: datetime) -> str:
    """A time for a `<time datetime>` attribute (RFC 3339, UTC)."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat(timespec="seconds").replace("+00:00", "Z")


def duration(value: timedelta) -> str:
    """A span in its two largest units (`3 d 4 h`, `12 min`); negative spans read `ago`."""
    seconds = int(value.total_seconds())
    suffix = " ago" if seconds < 0 else ""
    seconds = abs(seconds)
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    parts: list[str] = []
    for name, size in units:
        if seconds >= size or (name == "s" and not parts):
            parts.append(f"{seconds // size} {name}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts) + suffix


def pretty_json(value: Any) -> str:
    """A JSON value indented for reading."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


templates.env.filters.update(utc=utc, iso=iso, duration=duration, pretty_json=pretty_json)
templates.env.globals.update(time_zone=TIME_ZONE)


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
