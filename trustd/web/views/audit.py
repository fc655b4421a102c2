"""The audit log, filtered and keyset-paged."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from trustd.api.deps import ServicesDep
from trustd.api.wire import CountQuery
from trustd.web.rendering import PAGE, render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()


@router.get("/audit", response_class=HTMLResponse)
def audit(
    viewer: Annotated[Viewer, require("admin:audit:read")],
    request: Request,
    services: ServicesDep,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    before: Annotated[CountQuery | None, Query(ge=1)] = None,
) -> HTMLResponse:
    """Audit events, newest first."""
    rows = services.ui_views.audit(actor=actor, action=action, before=before, limit=PAGE)
    return render(
        request,
        "audit.html",
        rows=rows,
        filters={"actor": actor or "", "action": action or ""},
        next_before=rows[-1].id if len(rows) == PAGE else None,
    )
