"""The CA: the bundle and every key's rotation state; prepare and activate keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from pki.rotation import KeyKind, SlotStatus
from trustd.api.admin import authority_public
from trustd.api.deps import ServicesDep
from trustd.web.confirm import confirm
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()


@router.get("/ca", response_class=HTMLResponse)
def ca(
    request: Request, services: ServicesDep, viewer: Annotated[Viewer, require("admin:ca:read")]
) -> HTMLResponse:
    """The trust bundle's chain and every CA key with its rotation state; activation is
    offered only for a kind whose next key is prepared."""
    keys = [authority_public(k) for k in services.rotation.timeline()]
    return render(
        request,
        "ca.html",
        keys=keys,
        prepared=sorted({k.kind for k in keys if k.status == SlotStatus.PREPARED}),
        sequence=services.ca.state.bundle.sequence,
        bundle_pem=services.ca.state.bundle.to_pem(),
        # Only the kinds this deployment keeps (the WIT-SVID key with TRUSTD_WIT_SVID on).
        kinds=[k.value for k in services.ca.kinds],
        now=services.clock.now(),
    )


@router.post("/ca/prepare")
def ca_prepare(
    viewer: Annotated[Viewer, require("admin:ca:write")],
    services: ServicesDep,
    kind: Annotated[KeyKind, Form()],
) -> RedirectResponse:
    """Prepare the next key of a kind (published in the bundle before it signs)."""
    services.rotation.prepare(viewer.who.principal, kind)
    return RedirectResponse("/ui/ca", status_code=303)


@router.get("/ca/activate", response_class=HTMLResponse)
def ca_activate_confirm(
    viewer: Annotated[Viewer, require("admin:ca:write")],
    request: Request,
    kind: Annotated[KeyKind, Query()],
) -> HTMLResponse:
    """Say what activating the prepared key does."""
    return confirm(
        request,
        title=f"Activate the prepared {kind.value} key",
        subject=kind.value,
        effect="The prepared key starts signing now; the active one becomes old and stays "
        "in the bundle until what it signed expires.",
        action="/ui/ca/activate",
        fields={"kind": kind.value},
        button="Activate",
        back="/ui/ca",
    )


@router.post("/ca/activate")
def ca_activate(
    viewer: Annotated[Viewer, require("admin:ca:write")],
    services: ServicesDep,
    kind: Annotated[KeyKind, Form()],
) -> RedirectResponse:
    """Activate the prepared key of a kind."""
    services.rotation.activate(viewer.who.principal, kind)
    return RedirectResponse("/ui/ca", status_code=303)
