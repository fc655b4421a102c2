"""Observed flows in the UI: the flows of one pair (where a traffic edge of the graph
links), and what a draft policy would break: a stored revision that is not active,
replayed against the last day's allowed flows before it is activated."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from trustd.api.deps import ServicesDep
from trustd.api.wire import INT64_MAX
from trustd.domain.flows import FlowFilter, OverlayEdge, Usage, Verdict
from trustd.web.graphviz import edge_href
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
Identity = Annotated[str | None, Query(max_length=2048)]
# Flows listed on one page; the JSON API and `trustd flows` page through the rest.
SHOWN = 200
DRAFTS_LISTED = 50


@router.get("/flows", response_class=HTMLResponse)
def flows(
    viewer: Annotated[Viewer, require("admin:flow:read")],
    request: Request,
    services: ServicesDep,
    source: Identity = None,
    destination: Identity = None,
    verdict: Verdict | None = None,
) -> HTMLResponse:
    """The newest observed flows, filtered by source, destination (an ID, or a prefix
    ending in `/`) and verdict; for one pair, the policy rule that decides it."""
    source, destination = (source or "").strip() or None, (destination or "").strip() or None
    rows = services.flows.query(
        FlowFilter(source=source, destination=destination, verdict=verdict, limit=SHOWN)
    )
    decided: OverlayEdge | None = None
    rule_href = None
    if source and destination and not source.endswith("/") and not destination.endswith("/"):
        edge = next(
            (
                e
                for e in services.ui_views.graph().edges
                if e.source == source and e.destination == destination
            ),
            None,
        )
        usage = Usage.SEEN if edge is not None and edge.allowed else Usage.DENIED
        decided = OverlayEdge(source, destination, usage, edge)
        rule_href = edge_href(edge) if edge is not None else None
    return render(
        request,
        "flows.html",
        rows=rows,
        filters={
            "source": source or "",
            "destination": destination or "",
            "verdict": verdict.value if verdict else "",
        },
        verdicts=[v.value for v in Verdict],
        decided=decided,
        rule_href=rule_href,
        shown=SHOWN,
    )


@router.get("/flows/impact", response_class=HTMLResponse)
def impact(
    viewer: Annotated[Viewer, require("admin:flow:read")],
    request: Request,
    services: ServicesDep,
    revision: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
) -> HTMLResponse:
    """What would this policy change break: the flows allowed in the last day that a
    stored revision (a draft, not yet active) would deny, compiled as the nodes' verdicts
    would be.

    Raises:
        NotFound: no such revision.
        PolicyEvaluationError: the draft's mesh policy failed to evaluate.
    """
    active = services.policy.revision
    drafts = [r for r in services.policy.list_revisions(DRAFTS_LISTED) if r.revision != active]
    broken = services.flows.impact(revision) if revision is not None else None
    return render(
        request,
        "flows_impact.html",
        drafts=drafts,
        active=active,
        revision=revision,
        broken=broken,
    )
