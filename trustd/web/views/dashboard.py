"""The dashboard: counts, decision and deny rates, expiry warnings, the CA timeline,
agents behind."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse

from pki.rotation import SlotStatus
from trustd.api.admin import authority_public
from trustd.api.deps import ServicesDep
from trustd.domain.ui import ExpiryWarning, expiring_soon
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
# CA keys in these states sign or are about to: their expiry matters.
_LIVE_KEYS = {SlotStatus.ACTIVE, SlotStatus.PREPARED}


@router.get("/", response_class=HTMLResponse)
def dashboard(
    request: Request,
    services: ServicesDep,
    viewer: Annotated[Viewer, require("admin:dashboard:read")],
) -> HTMLResponse:
    """Counts, rates, what is close to expiry, the CA timeline and agents lagging."""
    now = services.clock.now()
    stats = services.ui_views.dashboard()
    keys = [authority_public(k) for k in services.rotation.timeline()]
    key_warnings = [
        ExpiryWarning(k.kind, k.kid, k.subject, k.not_after, k.not_after - now, ca_key=True)
        for k in keys
        if k.status in _LIVE_KEYS and expiring_soon(k.not_before, k.not_after, now)
    ]
    return render(
        request,
        "dashboard.html",
        stats=stats,
        keys=keys[:12],
        warnings=[*key_warnings, *stats.expiring],
        now=now,
        policy_revision=services.policy.revision,
    )
