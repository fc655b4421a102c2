"""The decision log, filtered and keyset-paged."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from trustd.api.deps import ServicesDep
from trustd.domain.policy import LoggedDecision
from trustd.domain.ui import DecisionQuery
from trustd.web.forms import when
from trustd.web.rendering import PAGE, render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
Opt = Annotated[str | None, Query(max_length=2048)]
# How much of a result the verdict column shows; the whole decision is behind a disclosure.
SUMMARY_LENGTH = 90


def summary(decision: LoggedDecision) -> str:
    """What a decision said, in a line: its reasons when the result gives some (the mesh
    decision's `reasons`, an ext_authz-style `reason`), else the result itself, cut short."""
    if not decision.defined:
        return "the policy defines no result for this input"
    result: Any = decision.result
    if isinstance(result, dict):
        reasons = result.get("reasons", result.get("reason"))
        if isinstance(reasons, str):
            reasons = [reasons]
        if isinstance(reasons, list) and reasons:
            text = "; ".join(str(r) for r in reasons)
            return text if len(text) <= SUMMARY_LENGTH else text[: SUMMARY_LENGTH - 1] + "…"
    if isinstance(result, bool):
        return ""
    text = json.dumps(result, sort_keys=True)
    return text if len(text) <= SUMMARY_LENGTH else text[: SUMMARY_LENGTH - 1] + "…"


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
        rows=[(row, summary(row)) for row in rows],
        filters=filters,
        next_before=f"{last.at.isoformat()}|{last.decision_id}" if last else None,
    )
