"""Federation relationships: each foreign trust domain, how its last fetches went, the
bundle held for it; fetch it now (behind the confirmation step)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pki.errors import TrustdError
from trustd.api.deps import ServicesDep
from trustd.api.federation import federation_public
from trustd.api.problems import status_for
from trustd.web.confirm import confirm
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
TrustDomainPath = Annotated[str, Path(max_length=255)]


@router.get("/federations", response_class=HTMLResponse)
def federations(
    viewer: Annotated[Viewer, require("admin:federation:read")],
    request: Request,
    services: ServicesDep,
) -> HTMLResponse:
    """Every relationship with its status: last success, last error, sequence, next fetch."""
    rows = [federation_public(f) for f in services.federation.list()]
    return render(request, "federations.html", rows=rows)


def _detail(
    request: Request, services: ServicesDep, trust_domain: str, status: int = 200, error: str = ""
) -> HTMLResponse:
    federation = federation_public(services.federation.show(trust_domain), with_bundle=True)
    response = render(request, "federation.html", f=federation, error=error)
    response.status_code = status
    return response


@router.get("/federations/{trust_domain}", response_class=HTMLResponse)
def federation(
    viewer: Annotated[Viewer, require("admin:federation:read")],
    request: Request,
    services: ServicesDep,
    trust_domain: TrustDomainPath,
) -> HTMLResponse:
    """One relationship, with the bundle held for it."""
    return _detail(request, services, trust_domain)


@router.get("/federations/{trust_domain}/refresh", response_class=HTMLResponse)
def federation_refresh_confirm(
    viewer: Annotated[Viewer, require("admin:federation:write")],
    request: Request,
    services: ServicesDep,
    trust_domain: TrustDomainPath,
) -> HTMLResponse:
    """Say what fetching the bundle now does."""
    held = services.federation.show(trust_domain)
    return confirm(
        request,
        title=f"Fetch the bundle of {held.trust_domain} now",
        subject=held.bundle_endpoint_url,
        effect="The bundle is fetched from its endpoint now. A bundle that passes the checks "
        "replaces the held one and reaches the agents; a refused one leaves it as it is, "
        "with the reason on the status.",
        action=f"/ui/federations/{held.trust_domain}/refresh",
        button="Fetch now",
        back=f"/ui/federations/{held.trust_domain}",
    )


@router.post("/federations/{trust_domain}/refresh", response_model=None)
def federation_refresh(
    viewer: Annotated[Viewer, require("admin:federation:write")],
    request: Request,
    services: ServicesDep,
    trust_domain: TrustDomainPath,
) -> Response:
    """Fetch now; a refused fetch shows the page again with the reason (the status keeps
    it too), the held bundle unchanged."""
    try:
        services.federation.refresh(viewer.who.principal, trust_domain)
    except TrustdError as exc:
        return _detail(request, services, trust_domain, status_for(exc), exc.detail)
    return RedirectResponse(f"/ui/federations/{trust_domain}", status_code=303)
