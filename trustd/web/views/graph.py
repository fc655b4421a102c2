"""Who may talk to whom under the mesh policy: the graph drawn by Graphviz, and one edge's
page (its rules and its decisions)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from trustd.api.deps import ServicesDep
from trustd.domain.ui import DecisionQuery, Edge
from trustd.errors import NotFound
from trustd.web.graphviz import GraphNotDrawn, dot_source, edge_href, edge_label, render_svg
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
Identity = Annotated[str, Query(max_length=2048)]
# Decisions shown on an edge's page; the decision log has the rest.
EDGE_DECISIONS = 20


def touches(edge: Edge, identity: str) -> bool:
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
) -> HTMLResponse:
    """Identities clustered by trust domain and path, edges labelled with what is allowed;
    explicit denials on demand; `identity` keeps the edges of one identity (or prefix)."""
    result = services.ui_views.graph()
    identity = (identity or "").strip() or None
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
