"""The one confirmation step of every destructive action (revoke, ban, evict, delete,
roll back, activate a CA key): a page saying what will happen, whose form POSTs the
action with the session's CSRF token. The GET that shows it changes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fastapi import Request
from fastapi.responses import HTMLResponse

from trustd.web.rendering import render


def confirm(
    request: Request,
    *,
    title: str,
    subject: str,
    effect: str,
    action: str,
    button: str,
    back: str,
    fields: Mapping[str, str] | None = None,
    reasons: Sequence[str] = (),
) -> HTMLResponse:
    """The confirmation page: `subject` is what is acted on, `effect` what will happen;
    the form POSTs `fields` (and a chosen reason, when `reasons` are offered) to `action`;
    `back` cancels."""
    return render(
        request,
        "confirm.html",
        title=title,
        subject=subject,
        effect=effect,
        action=action,
        fields=dict(fields or {}),
        reasons=list(reasons),
        button=button,
        back=back,
    )
