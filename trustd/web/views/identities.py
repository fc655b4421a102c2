"""Identities: what trustd knows of one SPIFFE ID (its SVIDs, revoked serials, quarantine
and the nodes that applied it, as `trustd identity show`), the quarantined identities, and
quarantining or releasing one behind a confirmation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import URL

from trustd.api.deps import ServicesDep
from trustd.domain.quarantines import MAX_REASON
from trustd.errors import InvalidRequest
from trustd.web.confirm import confirm
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
SpiffeIdQuery = Annotated[str, Query(max_length=2048)]
Reason = Annotated[str, Query(max_length=MAX_REASON)]


def _page(spiffe_id: str) -> str:
    return str(URL("/ui/identities/view").include_query_params(spiffe_id=spiffe_id))


def _until(value: str) -> datetime | None:
    """The form's `until`: empty for none, or a date and time, read as UTC when it names
    no zone (an HTML datetime-local field does not).

    Raises:
        InvalidRequest: not a date and time.
    """
    if not value.strip():
        return None
    try:
        instant = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequest(f"until {value!r} is not a date and time") from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


@router.get("/identities", response_class=HTMLResponse)
def identities(
    viewer: Annotated[Viewer, require("admin:identity:read")],
    request: Request,
    services: ServicesDep,
    q: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response:
    """The quarantined identities; a search goes to one identity's page."""
    if q and q.strip():
        return RedirectResponse(_page(q.strip()), status_code=303)
    return render(request, "identities.html", quarantined=services.quarantines.list())


@router.get("/identities/view", response_class=HTMLResponse)
def identity(
    viewer: Annotated[Viewer, require("admin:identity:read")],
    request: Request,
    services: ServicesDep,
    spiffe_id: SpiffeIdQuery,
) -> HTMLResponse:
    """One identity: its SVIDs, revoked serials, quarantine and the nodes that applied it."""
    overview = services.quarantines.overview(spiffe_id)
    return render(request, "identity.html", identity=overview)


@router.get("/identities/quarantine", response_class=HTMLResponse)
def quarantine_confirm(
    viewer: Annotated[Viewer, require("admin:identity:quarantine")],
    request: Request,
    services: ServicesDep,
    spiffe_id: SpiffeIdQuery,
    reason: Reason = "",
    until: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    """Say what quarantining does before it is done."""
    overview = services.quarantines.overview(spiffe_id)
    if not reason.strip():
        raise InvalidRequest("a quarantine needs a reason")
    ends = _until(until)
    return confirm(
        request,
        title="Quarantine identity",
        subject=f"{overview.spiffe_id}: {reason.strip()}",
        effect="Every node drops its traffic at once, established connections included; "
        "it reaches nothing but the nodes' always-allowed prefixes; agents stop serving "
        "and minting its SVIDs and the Workload API refuses it with this reason, "
        + (f"until {ends.isoformat()}." if ends else "until it is released."),
        action="/ui/identities/quarantine",
        fields={
            "spiffe_id": overview.spiffe_id,
            "reason": reason.strip(),
            "until": ends.isoformat() if ends else "",
        },
        button="Quarantine",
        back=_page(overview.spiffe_id),
    )


@router.post("/identities/quarantine")
def quarantine(
    viewer: Annotated[Viewer, require("admin:identity:quarantine")],
    services: ServicesDep,
    spiffe_id: Annotated[str, Form(max_length=2048)],
    reason: Annotated[str, Form(max_length=MAX_REASON)],
    until: Annotated[str, Form(max_length=64)] = "",
) -> RedirectResponse:
    """Quarantine the identity."""
    made = services.quarantines.quarantine(viewer.who.principal, spiffe_id, reason, _until(until))
    return RedirectResponse(_page(made.spiffe_id), status_code=303)


@router.get("/identities/release", response_class=HTMLResponse)
def release_confirm(
    viewer: Annotated[Viewer, require("admin:identity:quarantine")],
    request: Request,
    services: ServicesDep,
    spiffe_id: SpiffeIdQuery,
) -> HTMLResponse:
    """Say what releasing does before it is done."""
    overview = services.quarantines.overview(spiffe_id)
    if overview.quarantine is None:
        raise InvalidRequest(f"{overview.spiffe_id} is not quarantined")
    return confirm(
        request,
        title="Release identity",
        subject=f"{overview.spiffe_id} (quarantined: {overview.quarantine.reason})",
        effect="Every node lets it back in and its agents mint its SVIDs again.",
        action="/ui/identities/release",
        fields={"spiffe_id": overview.spiffe_id},
        button="Release",
        back=_page(overview.spiffe_id),
    )


@router.post("/identities/release")
def release(
    viewer: Annotated[Viewer, require("admin:identity:quarantine")],
    services: ServicesDep,
    spiffe_id: Annotated[str, Form(max_length=2048)],
) -> RedirectResponse:
    """Release the identity."""
    released = services.quarantines.release(viewer.who.principal, spiffe_id)
    return RedirectResponse(_page(released.quarantine.spiffe_id), status_code=303)
