"""The dashboard: counts, recent issuance, the CA timeline, agents behind."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse

from trustd.api.admin import authority_public
from trustd.api.deps import ServicesDep
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()


@router.get("/", response_class=HTMLResponse)
def dashboard(
    request: Request,
    services: ServicesDep,
    viewer: Annotated[Viewer, require("admin:dashboard:read")],
) -> HTMLResponse:
    """Counts, recent issuance, the CA timeline and agents behind on revisions."""
    return render(
        request,
        "dashboard.html",
        stats=services.ui_views.dashboard(),
        keys=[authority_public(k) for k in services.rotation.timeline()[:12]],
        now=services.clock.now(),
        policy_revision=services.policy.revision,
    )
