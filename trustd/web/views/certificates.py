"""Issued certificates: search by SPIFFE ID or serial, one certificate, revocation."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from pki.revocation import RevocationReason
from trustd.api.deps import ServicesDep
from trustd.domain.certificates import CertificateStatus
from trustd.web.confirm import confirm
from trustd.web.rendering import PAGE, render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
Opt = Annotated[str | None, Query(max_length=2048)]


@router.get("/certificates", response_class=HTMLResponse)
def certificates(
    viewer: Annotated[Viewer, require("admin:certificate:read")],
    request: Request,
    services: ServicesDep,
    q: Opt = None,
    status: Annotated[str, Query(pattern="^(|valid|revoked)$")] = "",
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Issued certificates by serial order; search by SPIFFE ID or serial (keyset pages)."""
    q = (q or "").strip()
    if q and not q.startswith("spiffe://"):
        row = services.revocations.get_certificate(q.replace(":", ""))
        return RedirectResponse(f"/ui/certificates/{row.serial}", status_code=303)
    rows = services.revocations.list_certificates(
        spiffe_id=q or None,
        status=CertificateStatus(status) if status else None,
        after=after,
        limit=PAGE,
    )
    return render(
        request,
        "certificates.html",
        rows=rows,
        q=q,
        status_filter=status,
        next_after=rows[-1].serial if len(rows) == PAGE else None,
        now=services.clock.now(),
    )


@router.get("/certificates/{serial}", response_class=HTMLResponse)
def certificate(
    viewer: Annotated[Viewer, require("admin:certificate:read")],
    request: Request,
    serial: str,
    services: ServicesDep,
) -> HTMLResponse:
    """One certificate with its PEM."""
    row = services.revocations.get_certificate(serial)
    return render(request, "certificate.html", cert=row, now=services.clock.now())


@router.get("/certificates/{serial}/revoke", response_class=HTMLResponse)
def revoke_confirm(
    viewer: Annotated[Viewer, require("admin:certificate:revoke")],
    request: Request,
    serial: str,
    services: ServicesDep,
) -> HTMLResponse:
    """Say what revoking does and ask for a reason."""
    row = services.revocations.get_certificate(serial)
    return confirm(
        request,
        title="Revoke certificate",
        subject=f"serial {row.serial} ({row.spiffe_id or row.kind})",
        effect="The certificate goes on its issuer's CRL and OCSP answers revoked; agents "
        "drop it on their next sync. A revocation cannot be undone. With keyCompromise the "
        "identity is also quarantined on every node until released.",
        action=f"/ui/certificates/{row.serial}/revoke",
        reasons=[r.value for r in RevocationReason],
        button="Revoke",
        back=f"/ui/certificates/{row.serial}",
    )


@router.post("/certificates/{serial}/revoke")
def revoke(
    viewer: Annotated[Viewer, require("admin:certificate:revoke")],
    serial: str,
    services: ServicesDep,
    reason: Annotated[RevocationReason, Form()] = RevocationReason.UNSPECIFIED,
) -> RedirectResponse:
    """Revoke one certificate."""
    services.revocations.revoke(viewer.who.principal, serial=serial, reason=reason)
    return RedirectResponse(f"/ui/certificates/{serial}", status_code=303)
