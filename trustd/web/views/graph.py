"""Who may talk to whom under the mesh policy: the graph drawn by Graphviz, and one edge's
page (its rules and its decisions)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from trustd.api.deps import ServicesDep
from trustd.domain.flows import OverlayEdge, Usage
from trustd.domain.ui import DecisionQuery, Edge, Graph
from trustd.errors import NotFound
from trustd.services.flows import overlay
from trustd.web.graphviz import (
    GraphNotDrawn,
    dot_source,
    edge_href,
    edge_label,
    render_svg,
    traffic_dot_source,
    traffic_href,
    traffic_label,
)
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
Identity = Annotated[str, Query(max_length=2048)]
# Decisions shown on an edge's page; the decision log has the rest.
EDGE_DECISIONS = 20
# The traffic overlay's time windows.
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
Window = Literal["1h", "24h", "7d"]
USAGE_WORDS = {
    Usage.SEEN.value: "allowed, seen",
    Usage.UNUSED.value: "allowed, unused (least-privilege candidate)",
    Usage.DENIED.value: "denied attempts",
}


def touches(edge: Edge | OverlayEdge, identity: str) -> bool:
    """Whether `edge` starts or ends at `identity`, or at an identity under it when it
    names a path prefix (`spiffe://example.org/ns/web` covers `.../ns/web/frontend`)."""
    prefix = identity.rstrip("/") + "/"
    return any(end == identity or end.startswith(prefix) for end in (edge.source, edge.destination))


@router.get("/graph", response_class=HTMLResponse)
def graph(
    viewer: Annotated[Viewer, require("admin:graph:read")],
    request: Request,
    services: ServicesDep,
    denied: bool = False,
    identity: Annotated[str | None, Query(max_length=2048)] = None,
    window: Window | None = None,
) -> HTMLResponse:
    """Identities clustered by trust domain and path, edges labelled with what is allowed;
    explicit denials on demand; `identity` keeps the edges of one identity (or prefix).
    With a `window` (and the flows' permission), the graph from traffic instead: the
    policy's edges as seen or unused in the window, and the denied attempts."""
    result = services.ui_views.graph()
    identity = (identity or "").strip() or None
    if window is not None and "admin:flow:read" in viewer.can:
        return _traffic(request, services, result, identity, window)
    edges = [e for e in result.edges if (e.allowed or denied)]
    shown = list(result.identities)
    if identity:
        edges = [e for e in edges if touches(e, identity)]
        ends = {end for e in edges for end in (e.source, e.destination)}
        shown = [i for i in result.identities if i in ends or i == identity]
    svg, problem = "", None
    try:
        svg = render_svg(dot_source(shown, edges, focus=identity))
    except GraphNotDrawn as exc:
        problem = exc.detail
    return render(
        request,
        "graph.html",
        graph=result,
        edges=[(e, edge_label(e), edge_href(e)) for e in edges],
        allowed_count=sum(e.allowed for e in edges),
        svg=svg,
        problem=problem,
        denied=denied,
        denied_count=sum(not e.allowed for e in result.edges),
        identity=identity or "",
        window=None,
        windows=list(WINDOWS),
    )


def _traffic(
    request: Request, services: ServicesDep, result: Graph, identity: str | None, window: Window
) -> HTMLResponse:
    edges = overlay(result.edges, services.flows.traffic(WINDOWS[window]))
    if identity:
        edges = [e for e in edges if touches(e, identity)]
    ends = {end for e in edges for end in (e.source, e.destination)}
    # Every identity the policy draws, plus the ends of denied attempts it does not list.
    shown = [i for i in result.identities if not identity or i in ends or i == identity]
    shown += sorted(ends - set(shown))
    svg, problem = "", None
    try:
        svg = render_svg(traffic_dot_source(shown, edges, focus=identity))
    except GraphNotDrawn as exc:
        problem = exc.detail
    return render(
        request,
        "graph.html",
        graph=result,
        traffic=[
            (
                e,
                traffic_label(e),
                traffic_href(e.source, e.destination),
                edge_href(e.policy) if e.policy is not None else None,
            )
            for e in edges
        ],
        counts={usage.value: sum(e.usage is usage for e in edges) for usage in Usage},
        usage_words=USAGE_WORDS,
        allowed_count=sum(e.allowed for e in result.edges),
        denied_count=sum(not e.allowed for e in result.edges),
        svg=svg,
        problem=problem,
        denied=False,
        identity=identity or "",
        window=window,
        windows=list(WINDOWS),
    )


@router.get("/graph/edge", response_class=HTMLResponse)
def graph_edge(
    viewer: Annotated[Viewer, require("admin:graph:read")],
    request: Request,
    services: ServicesDep,
    source: Identity,
    destination: Identity,
) -> HTMLResponse:
    """One edge: the rules that decide it and the latest logged decisions between its ends.

    Raises:
        NotFound: the policy draws no edge between these identities.
    """
    result = services.ui_views.graph()
    edge = next(
        (e for e in result.edges if e.source == source and e.destination == destination), None
    )
    if edge is None:
        raise NotFound(f"the mesh policy draws no edge from {source} to {destination}")
    # The decisions are the decision log's: shown to those who may read it.
    decisions = (
        services.ui_views.decisions(
            DecisionQuery(source=source, destination=destination, limit=EDGE_DECISIONS)
        )
        if "admin:decision:read" in viewer.can
        else []
    )
    return render(
        request,
        "graph_edge.html",
        edge=edge,
        label=edge_label(edge),
        revision=result.revision,
        decisions=decisions,
    )
