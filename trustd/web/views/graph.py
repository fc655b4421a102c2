"""Who may talk to whom under the mesh policy."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse

from trustd.api.deps import ServicesDep
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()


@router.get("/graph", response_class=HTMLResponse)
def graph(
    viewer: Annotated[Viewer, require("admin:graph:read")],
    request: Request,
    services: ServicesDep,
    denied: bool = False,
) -> HTMLResponse:
    """Who may talk to whom: identities on a circle, allowed edges, denied on demand."""
    result = services.ui_views.graph()
    count = max(len(result.identities), 1)
    radius = 160 + 6 * count
    size = 2 * radius + 360
    points = {
        ident: (
            size / 2 + radius * math.cos(2 * math.pi * i / count - math.pi / 2),
            size / 2 + radius * math.sin(2 * math.pi * i / count - math.pi / 2),
        )
        for i, ident in enumerate(result.identities)
    }
    edges = [e for e in result.edges if e.allowed or denied]
    return render(
        request,
        "graph.html",
        graph=result,
        points=points,
        edges=edges,
        size=size,
        denied=denied,
        denied_count=sum(not e.allowed for e in result.edges),
    )
