"""The decision log, filtered and keyset-paged."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from trustd.api.deps import ServicesDep
from trustd.domain.ui import DecisionQuery
from trustd.web.forms import when
from trustd.web.rendering import PAGE, render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
Opt = Annotated[str | None, Query(max_length=2048)]


@router.get("/decisions", response_class=HTMLResponse)
def decisions(
    viewer: Annotated[Viewer, require("admin:decision:read")],
    request: Request,
    services: ServicesDep,
    since: Annotated[str | None, Query(max_length=32)] = None,
    until: Annotated[str | None, Query(max_length=32)] = None,
    path: Annotated[str | None, Query(max_length=512)] = None,
    source: Opt = None,
    destination: Opt = None,
    result: Annotated[str, Query(pattern="^(|allow|deny)$")] = "",
    before: Annotated[str | None, Query(max_length=80)] = None,
) -> HTMLResponse:
    """The decision log, newest first, filtered by time, source, destination and result."""
    cursor = None
    if before:
        at, _, decision_id = before.partition("|")
        parsed = when(at)
        assert parsed is not None
        cursor = (parsed, decision_id)
    query = DecisionQuery(
        since=when(since),
        until=when(until),
        path=path or None,
        source=source or None,
        destination=destination or None,
        allowed={"allow": True, "deny": False}.get(result),
        before=cursor,
        limit=PAGE,
    )
    rows = services.ui_views.decisions(query)
    filters = {
        "since": since or "",
        "until": until or "",
        "path": path or "",
        "source": source or "",
        "destination": destination or "",
        "result": result,
    }
    last = rows[-1] if len(rows) == PAGE else None
    return render(
        request,
        "decisions.html",
        rows=rows,
        filters=filters,
        next_before=f"{last.at.isoformat()}|{last.decision_id}" if last else None,
    )
