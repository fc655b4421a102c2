"""The admin web UI under /ui/: server-rendered pages over the same services as the admin
JSON API, and the JSON API for UI accounts (`trustd admin user ...`).

Every view names the one permission it needs (`admin:<resource>:<action>`), decided by the
active `admin` Rego policy for the user's role; every POST carries the session's CSRF
token; destructive actions (revoke, ban, evict, delete, roll back, activate a CA key) first
show a confirmation page saying what will happen. Refusals and failures are audited.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from pki.errors import TrustdError
from pki.revocation import RevocationReason
from pki.rotation import KeyKind
from policy.admin import checked_permission
from policy.bundle import Bundle
from policy.engine import EmbeddedEngine
from policy.errors import PolicyCompileError
from policy.testing import check, run_tests
from trustd.api import deps
from trustd.api.admin import authority_public
from trustd.api.deps import AdminDep, Declaration, Exemption, ServicesDep, exempt
from trustd.api.problems import status_for
from trustd.api.ui_schemas import UserCreate, UserCreated, UserPublic
from trustd.domain.audit import AuditOutcome
from trustd.domain.certificates import CertificateStatus
from trustd.domain.nodes import NodeStatus
from trustd.errors import InvalidRequest, PermissionDenied, Unauthenticated
from trustd.services.container import Services
from trustd.services.entries import EntryFilter, EntryPatch, EntrySpec
from trustd.services.ui import (
    CsrfRefused,
    DecisionQuery,
    UiPrincipal,
)
from trustd.store.ui import UiUser

WEB = Path(__file__).resolve().parents[1] / "web"
templates = Jinja2Templates(directory=WEB / "templates")
PAGE = 50
# The permissions the navigation and buttons depend on, checked once per page.
_NAV = (
    "admin:dashboard:read",
    "admin:node:read",
    "admin:node:write",
    "admin:entry:read",
    "admin:entry:write",
    "admin:entry:delete",
    "admin:certificate:read",
    "admin:certificate:revoke",
    "admin:ca:read",
    "admin:ca:write",
    "admin:policy:read",
    "admin:policy:test",
    "admin:policy:write",
    "admin:decision:read",
    "admin:graph:read",
    "admin:audit:read",
)
# OWASP secure headers for HTML: nothing but this origin's own scripts and styles, no
# framing (clickjacking), no referrer leaking search terms, no caching of admin pages.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _SignInRequired(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


def session_cookie(services: Services) -> str:
    # The __Host- prefix pins the cookie to this origin, path / and Secure (RFC 6265bis
    # §4.1.3.2); it is only allowed on a Secure cookie.
    return "__Host-trustd-session" if services.settings.ui_cookie_secure else "trustd-session"


def _login_cookie(services: Services) -> str:
    return "__Host-trustd-login" if services.settings.ui_cookie_secure else "trustd-login"


def _set_cookie(response: Response, services: Services, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=int(services.settings.ui_session_ttl.total_seconds()),
        path="/",
        secure=services.settings.ui_cookie_secure,
        httponly=True,
        samesite="strict",
    )


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page with the secure headers; `who` and `can` come from the request's viewer."""
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    context.setdefault("who", viewer.who if viewer else None)
    context.setdefault("csrf", viewer.who.csrf_token if viewer else "")
    context.setdefault("can", viewer.can if viewer else set())
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(_HEADERS)
    return response


def _error_page(request: Request, exc: TrustdError) -> HTMLResponse:
    return render(request, "error.html", status_for(exc), title=exc.title, message=exc.detail)


class UiRoute(APIRoute):
    """Errors become HTML pages with the status the JSON API would give; a missing or
    ended session goes to the sign-in page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except _SignInRequired as exc:
                target = request.url.path if request.method == "GET" else "/ui/"
                response = RedirectResponse(
                    f"/ui/login?next={target}&message={exc.message}", status_code=303
                )
                response.delete_cookie(session_cookie(_services(request)), path="/")
                return response
            except RequestValidationError as exc:
                # The same summary the JSON API gives, as a page: where and why, never the
                # submitted value.
                where = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}"
                    for e in exc.errors()
                )
                return render(request, "error.html", 422, title="Invalid input", message=where)
            except TrustdError as exc:
                viewer: Viewer | None = getattr(request.state, "viewer", None)
                if viewer is not None and request.method == "POST":
                    await run_in_threadpool(
                        _services(request).ui.record,
                        viewer.who.principal.name,
                        "ui:action:failed",
                        target=request.url.path,
                        outcome=AuditOutcome.FAILURE,
                        details={"error": type(exc).__name__, "detail": exc.detail[:512]},
                    )
                return _error_page(request, exc)

        return run


@dataclass(frozen=True)
class Viewer:
    who: UiPrincipal
    permission: str
    can: set[str]


class ViewPermission(Declaration):
    """A view's `admin:<resource>:<action>` permission. As a dependency: a live session,
    then for POSTs the CSRF token, then the same admin-policy decision the JSON API asks
    (`services.authz`); a refusal is audited (`ui:view:denied`, outcome `denied`).
    """

    def __init__(self, permission: str) -> None:
        self.declared = checked_permission(permission)

    async def check(self, request: Request) -> Viewer:
        """Raises:
        CsrfRefused: a POST without the session's synchronizer token.
        PermissionDenied: the admin policy refuses the user's role this permission.
        """
        permission = self.declared
        services = _services(request)
        token = request.cookies.get(session_cookie(services))
        if not token:
            raise _SignInRequired("sign in to continue")
        try:
            who = await run_in_threadpool(services.ui.authenticate, token)
        except Unauthenticated as exc:
            raise _SignInRequired(exc.detail) from None
        if request.method == "POST":
            form = await request.form()
            if not services.ui.csrf_matches(who.csrf_token, _text(form.get("csrf"))):
                await run_in_threadpool(
                    services.ui.record,
                    who.principal.name,
                    "ui:csrf:denied",
                    target=request.url.path,
                )
                raise CsrfRefused(
                    "this form is missing its security token or it is stale; "
                    "reload the page and submit again"
                )
        verdict = services.authz.decide(who.role, permission)
        if not verdict.allowed:
            await run_in_threadpool(
                services.authz.refuse,
                who.principal,
                permission,
                verdict,
                action="ui:view:denied",
                target=request.url.path,
                details={"method": request.method},
            )
            raise PermissionDenied(f"this page needs {permission}: {verdict.reason}")
        viewer = Viewer(who, permission, services.authz.granted(who.role, _NAV))
        request.state.viewer = viewer
        return viewer


def require(permission: str) -> Any:
    """The dependency of a view needing `permission` (see `ViewPermission`)."""
    return Depends(ViewPermission(permission).check)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


def _when(value: str | None) -> datetime | None:
    """A `datetime-local` form value, read as UTC.

    Raises:
        InvalidRequest: not a date and time.
    """
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{value!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


pages = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
users = APIRouter(prefix="/v1/admin/users", tags=["admin"])
Opt = Annotated[str | None, Query(max_length=2048)]

# -- signing in ------------------------------------------------------------------------


@pages.get("/login", response_class=HTMLResponse, dependencies=[exempt(Exemption.SIGN_IN)])
def login_form(
    request: Request,
    services: ServicesDep,
    next: Annotated[str, Query(max_length=512)] = "/ui/",
    message: Annotated[str, Query(max_length=256)] = "",
) -> HTMLResponse:
    """The sign-in form. A random token in a SameSite cookie and in the form protects the
    sign-in POST too (login CSRF, OWASP double-submit)."""
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", next=_safe_next(next), csrf=token, message=message)
    _set_cookie(response, services, _login_cookie(services), token)
    return response


def _safe_next(target: str) -> str:
    # Only paths of this UI: an absolute or scheme-relative URL would be an open redirect.
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/"


@pages.post("/login", response_class=HTMLResponse, dependencies=[exempt(Exemption.SIGN_IN)])
async def login(
    request: Request,
    services: ServicesDep,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    totp: Annotated[str, Form(max_length=16)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=512)] = "/ui/",
) -> Response:
    """Check the credentials and open a session; a failure says so and changes nothing
    but the account's failure count."""
    expected = request.cookies.get(_login_cookie(services), "")
    if not expected or not services.ui.csrf_matches(expected, csrf):
        await run_in_threadpool(
            services.ui.record, f"ui:{username[:64]}", "ui:csrf:denied", target="/ui/login"
        )
        return render(
            request,
            "login.html",
            403,
            next=_safe_next(next),
            csrf=expected,
            error="the sign-in form expired; reload the page and try again",
        )
    try:
        signed_in = await run_in_threadpool(services.ui.sign_in, username, password, totp)
    except TrustdError as exc:
        return render(
            request,
            "login.html",
            status_for(exc),
            next=_safe_next(next),
            csrf=expected,
            error=exc.detail,
            username=username,
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    _set_cookie(response, services, session_cookie(services), signed_in.token)
    response.delete_cookie(_login_cookie(services), path="/")
    return response


@pages.post("/logout")
def logout(
    services: ServicesDep, viewer: Annotated[Viewer, require("admin:dashboard:read")]
) -> RedirectResponse:
    """End the session here and in the database."""
    services.ui.sign_out(viewer.who)
    response = RedirectResponse("/ui/login?message=signed out", status_code=303)
    response.delete_cookie(session_cookie(services), path="/")
    return response


# -- dashboard -------------------------------------------------------------------------


@pages.get("/", response_class=HTMLResponse)
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


# -- nodes -----------------------------------------------------------------------------


@pages.get("/nodes", response_class=HTMLResponse)
def nodes(
    request: Request, services: ServicesDep, viewer: Annotated[Viewer, require("admin:node:read")]
) -> HTMLResponse:
    """Attested nodes."""
    return render(request, "nodes.html", nodes=services.nodes.list(), now=services.clock.now())


_NODE_ACTIONS = {
    "evict": (
        NodeStatus.EVICTED,
        "Evict",
        "Its credentials stop working at once; the agent must attest again before it gets SVIDs.",
    ),
    "ban": (
        NodeStatus.BANNED,
        "Ban",
        "Its credentials stop working at once and it can never attest again under this SPIFFE ID.",
    ),
}


def _node_action(action: str) -> tuple[NodeStatus, str, str]:
    if action not in _NODE_ACTIONS:
        raise InvalidRequest("the node action is evict or ban")
    return _NODE_ACTIONS[action]


@pages.get("/nodes/{action}", response_class=HTMLResponse)
def node_confirm(
    viewer: Annotated[Viewer, require("admin:node:write")],
    request: Request,
    action: str,
    services: ServicesDep,
    spiffe_id: Annotated[str, Query(max_length=2048)],
) -> HTMLResponse:
    """Say what evicting or banning the node does; the POST does it."""
    _, verb, effect = _node_action(action)
    node = services.nodes.get(spiffe_id)
    return render(
        request,
        "confirm.html",
        title=f"{verb} node",
        subject=node.spiffe_id,
        effect=effect,
        action=f"/ui/nodes/{action}",
        fields={"spiffe_id": node.spiffe_id},
        button=verb,
        back="/ui/nodes",
    )


@pages.post("/nodes/{action}")
def node_act(
    viewer: Annotated[Viewer, require("admin:node:write")],
    action: str,
    services: ServicesDep,
    spiffe_id: Annotated[str, Form(max_length=2048)],
) -> RedirectResponse:
    """Evict or ban a node."""
    status, _, _ = _node_action(action)
    services.nodes.set_status(viewer.who.principal, spiffe_id, status)
    return RedirectResponse("/ui/nodes", status_code=303)


# -- registration entries --------------------------------------------------------------


@pages.get("/entries", response_class=HTMLResponse)
def entries(
    viewer: Annotated[Viewer, require("admin:entry:read")],
    request: Request,
    services: ServicesDep,
    spiffe_id: Opt = None,
    parent_id: Opt = None,
    selector: Opt = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """Entries by SPIFFE ID, parent or selector, a page at a time (indexed equality)."""
    query = EntryFilter(
        spiffe_id or None, parent_id or None, selector or None, PAGE, (page - 1) * PAGE
    )
    rows, total = services.entries.search(query)
    return render(
        request,
        "entries.html",
        rows=rows,
        total=total,
        page=page,
        pages=max(1, math.ceil(total / PAGE)),
        query={
            "spiffe_id": spiffe_id or "",
            "parent_id": parent_id or "",
            "selector": selector or "",
        },
    )


@dataclass
class EntryForm:
    spiffe_id: str = ""
    parent_id: str = ""
    selectors: str = ""
    dns_names: str = ""
    x509_ttl: str = ""
    jwt_ttl: str = ""
    hint: str = ""

    def ttl(self, value: str, name: str) -> int | None:
        if not value.strip():
            return None
        if not value.strip().isdigit():
            raise InvalidRequest(f"{name} is a number of seconds")
        return int(value)


def _entry_form(
    spiffe_id: Annotated[str, Form(max_length=2048)] = "",
    parent_id: Annotated[str, Form(max_length=2048)] = "",
    selectors: Annotated[str, Form(max_length=16384)] = "",
    dns_names: Annotated[str, Form(max_length=16384)] = "",
    x509_ttl: Annotated[str, Form(max_length=12)] = "",
    jwt_ttl: Annotated[str, Form(max_length=12)] = "",
    hint: Annotated[str, Form(max_length=256)] = "",
) -> EntryForm:
    return EntryForm(spiffe_id, parent_id, selectors, dns_names, x509_ttl, jwt_ttl, hint)


EntryFormDep = Annotated[EntryForm, Depends(_entry_form)]


@pages.get("/entries/new", response_class=HTMLResponse)
def entry_new(
    request: Request, services: ServicesDep, viewer: Annotated[Viewer, require("admin:entry:write")]
) -> HTMLResponse:
    """An empty entry form."""
    return render(request, "entry_form.html", form=EntryForm(), action="/ui/entries/new")


@pages.post("/entries/new", response_class=HTMLResponse)
def entry_create(
    viewer: Annotated[Viewer, require("admin:entry:write")],
    request: Request,
    services: ServicesDep,
    form: EntryFormDep,
) -> Response:
    """Create an entry; a bad field redisplays the form with the reason, nothing stored."""
    try:
        spec = EntrySpec(
            spiffe_id=form.spiffe_id.strip(),
            parent_id=form.parent_id.strip(),
            selectors=_lines(form.selectors),
            dns_names=_lines(form.dns_names),
            x509_ttl=form.ttl(form.x509_ttl, "X509-SVID TTL"),
            jwt_ttl=form.ttl(form.jwt_ttl, "JWT-SVID TTL"),
            hint=form.hint,
        )
        row = services.entries.create(viewer.who.principal, [spec])[0]
    except TrustdError as exc:
        return _form_error(request, services, viewer, exc, "/ui/entries/new", form)
    return RedirectResponse(f"/ui/entries/{row.id}", status_code=303)


def _form_error(
    request: Request,
    services: Services,
    viewer: Viewer,
    exc: TrustdError,
    action: str,
    form: EntryForm,
) -> HTMLResponse:
    services.ui.record(
        viewer.who.principal.name,
        "ui:action:failed",
        target=action,
        outcome=AuditOutcome.FAILURE,
        details={"error": type(exc).__name__, "detail": exc.detail[:512]},
    )
    return render(
        request, "entry_form.html", status_for(exc), form=form, action=action, error=exc.detail
    )


@pages.get("/entries/{entry_id}", response_class=HTMLResponse)
def entry_edit(
    viewer: Annotated[Viewer, require("admin:entry:read")],
    request: Request,
    entry_id: str,
    services: ServicesDep,
) -> HTMLResponse:
    """One entry, editable by those who may write entries."""
    row = services.entries.get(entry_id)
    form = EntryForm(
        row.spiffe_id,
        row.parent_id,
        "\n".join(row.selectors),
        "\n".join(row.dns_names),
        str(row.x509_ttl),
        str(row.jwt_ttl),
        row.hint,
    )
    return render(
        request, "entry_form.html", form=form, entry=row, action=f"/ui/entries/{entry_id}"
    )


@pages.post("/entries/{entry_id}", response_class=HTMLResponse)
def entry_update(
    viewer: Annotated[Viewer, require("admin:entry:write")],
    request: Request,
    entry_id: str,
    services: ServicesDep,
    form: EntryFormDep,
) -> Response:
    """Change an entry; a bad field redisplays the form, the entry stays as it was."""
    try:
        patch = EntryPatch(
            spiffe_id=form.spiffe_id.strip(),
            parent_id=form.parent_id.strip(),
            selectors=_lines(form.selectors),
            dns_names=_lines(form.dns_names),
            x509_ttl=form.ttl(form.x509_ttl, "X509-SVID TTL"),
            jwt_ttl=form.ttl(form.jwt_ttl, "JWT-SVID TTL"),
            hint=form.hint,
        )
        services.entries.update(viewer.who.principal, entry_id, patch)
    except TrustdError as exc:
        return _form_error(request, services, viewer, exc, f"/ui/entries/{entry_id}", form)
    return RedirectResponse(f"/ui/entries/{entry_id}", status_code=303)


@pages.get("/entries/{entry_id}/delete", response_class=HTMLResponse)
def entry_delete_confirm(
    viewer: Annotated[Viewer, require("admin:entry:delete")],
    request: Request,
    entry_id: str,
    services: ServicesDep,
) -> HTMLResponse:
    """Say what deleting the entry does."""
    row = services.entries.get(entry_id)
    return render(
        request,
        "confirm.html",
        title="Delete entry",
        subject=f"{row.spiffe_id} (parent {row.parent_id})",
        effect="Workloads matching its selectors stop receiving this SPIFFE ID on their "
        "agents' next sync. SVIDs already issued stay valid until they expire; revoke them "
        "on the certificates page to end them now.",
        action=f"/ui/entries/{entry_id}/delete",
        fields={},
        button="Delete",
        back=f"/ui/entries/{entry_id}",
    )


@pages.post("/entries/{entry_id}/delete")
def entry_delete(
    entry_id: str, services: ServicesDep, viewer: Annotated[Viewer, require("admin:entry:delete")]
) -> RedirectResponse:
    """Delete an entry."""
    services.entries.delete(viewer.who.principal, entry_id)
    return RedirectResponse("/ui/entries", status_code=303)


# -- certificates ----------------------------------------------------------------------


@pages.get("/certificates", response_class=HTMLResponse)
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


@pages.get("/certificates/{serial}", response_class=HTMLResponse)
def certificate(
    viewer: Annotated[Viewer, require("admin:certificate:read")],
    request: Request,
    serial: str,
    services: ServicesDep,
) -> HTMLResponse:
    """One certificate with its PEM."""
    row = services.revocations.get_certificate(serial)
    return render(request, "certificate.html", cert=row, now=services.clock.now())


@pages.get("/certificates/{serial}/revoke", response_class=HTMLResponse)
def revoke_confirm(
    viewer: Annotated[Viewer, require("admin:certificate:revoke")],
    request: Request,
    serial: str,
    services: ServicesDep,
) -> HTMLResponse:
    """Say what revoking does and ask for a reason."""
    row = services.revocations.get_certificate(serial)
    return render(
        request,
        "confirm.html",
        title="Revoke certificate",
        subject=f"serial {row.serial} ({row.spiffe_id or row.kind})",
        effect="The certificate goes on its issuer's CRL and OCSP answers revoked; agents "
        "drop it on their next sync. A revocation cannot be undone.",
        action=f"/ui/certificates/{row.serial}/revoke",
        fields={},
        reasons=[r.value for r in RevocationReason],
        button="Revoke",
        back=f"/ui/certificates/{row.serial}",
    )


@pages.post("/certificates/{serial}/revoke")
def revoke(
    viewer: Annotated[Viewer, require("admin:certificate:revoke")],
    serial: str,
    services: ServicesDep,
    reason: Annotated[RevocationReason, Form()] = RevocationReason.UNSPECIFIED,
) -> RedirectResponse:
    """Revoke one certificate."""
    services.revocations.revoke(viewer.who.principal, serial=serial, reason=reason)
    return RedirectResponse(f"/ui/certificates/{serial}", status_code=303)


# -- CA --------------------------------------------------------------------------------


@pages.get("/ca", response_class=HTMLResponse)
def ca(
    request: Request, services: ServicesDep, viewer: Annotated[Viewer, require("admin:ca:read")]
) -> HTMLResponse:
    """The trust bundle's chain and every CA key with its rotation state."""
    return render(
        request,
        "ca.html",
        keys=[authority_public(k) for k in services.rotation.timeline()],
        sequence=services.ca.state.bundle.sequence,
        bundle_pem=services.ca.state.bundle.to_pem(),
        kinds=[k.value for k in KeyKind],
        now=services.clock.now(),
    )


@pages.post("/ca/prepare")
def ca_prepare(
    viewer: Annotated[Viewer, require("admin:ca:write")],
    services: ServicesDep,
    kind: Annotated[KeyKind, Form()],
) -> RedirectResponse:
    """Prepare the next key of a kind (published in the bundle before it signs)."""
    services.rotation.prepare(viewer.who.principal, kind)
    return RedirectResponse("/ui/ca", status_code=303)


@pages.get("/ca/activate", response_class=HTMLResponse)
def ca_activate_confirm(
    viewer: Annotated[Viewer, require("admin:ca:write")],
    request: Request,
    kind: Annotated[KeyKind, Query()],
) -> HTMLResponse:
    """Say what activating the prepared key does."""
    return render(
        request,
        "confirm.html",
        title=f"Activate the prepared {kind.value} key",
        subject=kind.value,
        effect="The prepared key starts signing now; the active one becomes old and stays "
        "in the bundle until what it signed expires.",
        action="/ui/ca/activate",
        fields={"kind": kind.value},
        button="Activate",
        back="/ui/ca",
    )


@pages.post("/ca/activate")
def ca_activate(
    viewer: Annotated[Viewer, require("admin:ca:write")],
    services: ServicesDep,
    kind: Annotated[KeyKind, Form()],
) -> RedirectResponse:
    """Activate the prepared key of a kind."""
    services.rotation.activate(viewer.who.principal, kind)
    return RedirectResponse("/ui/ca", status_code=303)


# -- policies --------------------------------------------------------------------------

DATA_DOCUMENT = "data.json"


@pages.get("/policies", response_class=HTMLResponse)
def policies(
    request: Request, services: ServicesDep, viewer: Annotated[Viewer, require("admin:policy:read")]
) -> HTMLResponse:
    """Revisions, the active one, and its modules."""
    active = services.policy.active
    return render(
        request,
        "policies.html",
        revisions=services.policy.list_revisions(50),
        active=active.revision,
        modules=sorted(active.bundle.modules),
        data_document=DATA_DOCUMENT,
    )


@pages.get("/policies/edit", response_class=HTMLResponse)
def policy_edit(
    viewer: Annotated[Viewer, require("admin:policy:read")],
    request: Request,
    services: ServicesDep,
    module: Annotated[str, Query(min_length=1, max_length=256)] = DATA_DOCUMENT,
) -> HTMLResponse:
    """A module (or the data document) of the active revision in the editor."""
    bundle = services.policy.active.bundle
    if module == DATA_DOCUMENT:
        source = json.dumps(bundle.data, indent=2, sort_keys=True)
    else:
        source = bundle.modules.get(module, "package example\n\nimport rego.v1\n")
    return render(request, "policy_edit.html", module=module, source=source)


def _edited(services: Services, module: str, source: str) -> Bundle:
    """The active bundle with `module` (or the data document) replaced.

    Raises:
        InvalidRequest: the data document is not a JSON object.
    """
    base = services.policy.active.bundle
    if module == DATA_DOCUMENT:
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{DATA_DOCUMENT}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
        if not isinstance(data, dict):
            raise InvalidRequest(f"{DATA_DOCUMENT} must be a JSON object")
        return Bundle(dict(base.modules), data)
    return Bundle({**base.modules, module: source}, base.data)


PolicyModule = Annotated[str, Form(min_length=1, max_length=256, pattern=r"^[\w./-]+$")]
PolicySource = Annotated[str, Form(max_length=1_000_000)]


@pages.post("/policies/check", response_class=HTMLResponse)
def policy_check(
    viewer: Annotated[Viewer, require("admin:policy:test")],
    request: Request,
    services: ServicesDep,
    module: PolicyModule,
    source: PolicySource,
) -> HTMLResponse:
    """Parse, check and run the tests of the edited bundle; nothing is stored."""
    problems: list[str] = []
    results = []
    try:
        bundle = _edited(services, module, source)
        problems = check(bundle.modules, bundle.data)
        if not problems:
            results = run_tests(bundle.modules, bundle.data)
    except TrustdError as exc:
        problems = [exc.detail]
    return render(
        request,
        "policy_edit.html",
        400 if problems else 200,
        module=module,
        source=source,
        problems=problems,
        results=results,
        checked=True,
    )


@pages.post("/policies/activate", response_class=HTMLResponse)
def policy_activate(
    viewer: Annotated[Viewer, require("admin:policy:write")],
    request: Request,
    services: ServicesDep,
    module: PolicyModule,
    source: PolicySource,
    note: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Store the edited bundle as a new revision and activate it; one that does not
    compile is refused and the active revision stays."""
    try:
        bundle = _edited(services, module, source)
        EmbeddedEngine(bundle.modules, bundle.data)
        row = services.policy.create_revision(
            viewer.who.principal, bundle, activate=True, note=note or f"ui: edit {module}"
        )
    except (PolicyCompileError, InvalidRequest) as exc:
        services.ui.record(
            viewer.who.principal.name,
            "policy:revision:refused",
            target=module,
            outcome=AuditOutcome.FAILURE,
            details={"detail": exc.detail[:512]},
        )
        return render(
            request,
            "policy_edit.html",
            400,
            module=module,
            source=source,
            problems=[exc.detail],
            refused=True,
        )
    return RedirectResponse(f"/ui/policies/{row.revision}", status_code=303)


@pages.get("/policies/diff", response_class=HTMLResponse)
def policy_diff(
    viewer: Annotated[Viewer, require("admin:policy:read")],
    request: Request,
    services: ServicesDep,
    old: Annotated[int, Query(ge=1)],
    new: Annotated[int, Query(ge=1)],
) -> HTMLResponse:
    """What changed between two revisions."""
    return render(
        request, "policy_diff.html", old=old, new=new, diff=services.policy.diff(old, new)
    )


@pages.get("/policies/rollback", response_class=HTMLResponse)
def rollback_confirm(
    request: Request,
    services: ServicesDep,
    viewer: Annotated[Viewer, require("admin:policy:write")],
) -> HTMLResponse:
    """Say what rolling back does."""
    return render(
        request,
        "confirm.html",
        title="Roll back the policy",
        subject=f"active revision {services.policy.revision}",
        effect="The revision that was active before this one becomes active on every "
        "replica; decisions change at once.",
        action="/ui/policies/rollback",
        fields={},
        button="Roll back",
        back="/ui/policies",
    )


@pages.post("/policies/rollback")
def rollback(
    services: ServicesDep, viewer: Annotated[Viewer, require("admin:policy:write")]
) -> RedirectResponse:
    """Activate the previously active revision."""
    row = services.policy.rollback(viewer.who.principal)
    return RedirectResponse(f"/ui/policies/{row.revision}", status_code=303)


@pages.get("/policies/{revision}", response_class=HTMLResponse)
def policy_revision(
    viewer: Annotated[Viewer, require("admin:policy:read")],
    request: Request,
    revision: int,
    services: ServicesDep,
) -> HTMLResponse:
    """One revision's modules and data."""
    row = services.policy.get_revision(revision)
    return render(
        request,
        "policy_revision.html",
        row=row,
        active=services.policy.revision,
        data=json.dumps(row.data, indent=2, sort_keys=True),
    )


# -- decision log, graph, audit --------------------------------------------------------


@pages.get("/decisions", response_class=HTMLResponse)
def decisions(
    viewer: Annotated[Viewer, require("admin:decision:read")],
    request: Request,
    services: ServicesDep,
    since: Annotated[str | None, Query(max_length=32)] = None,
    until: Annotated[str | None, Query(max_length=32)] = None,
    path: Annotated[str | None, Query(max_length=512)] = None,
    source: Opt = None,
    destination: Opt = None,
    result: Annotated[str, Query(pattern="^(|allow|deny)$")] = "",
    before: Annotated[str | None, Query(max_length=80)] = None,
) -> HTMLResponse:
    """The decision log, newest first, filtered by time, source, destination and result."""
    cursor = None
    if before:
        at, _, decision_id = before.partition("|")
        parsed = _when(at)
        assert parsed is not None
        cursor = (parsed, decision_id)
    query = DecisionQuery(
        since=_when(since),
        until=_when(until),
        path=path or None,
        source=source or None,
        destination=destination or None,
        allowed={"allow": True, "deny": False}.get(result),
        before=cursor,
        limit=PAGE,
    )
    rows = services.ui_views.decisions(query)
    filters = {
        "since": since or "",
        "until": until or "",
        "path": path or "",
        "source": source or "",
        "destination": destination or "",
        "result": result,
    }
    last = rows[-1] if len(rows) == PAGE else None
    return render(
        request,
        "decisions.html",
        rows=rows,
        filters=filters,
        next_before=f"{last.at.isoformat()}|{last.decision_id}" if last else None,
    )


@pages.get("/graph", response_class=HTMLResponse)
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


@pages.get("/audit", response_class=HTMLResponse)
def audit(
    viewer: Annotated[Viewer, require("admin:audit:read")],
    request: Request,
    services: ServicesDep,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    """Audit events, newest first."""
    rows = services.ui_views.audit(actor=actor, action=action, before=before, limit=PAGE)
    return render(
        request,
        "audit.html",
        rows=rows,
        filters={"actor": actor or "", "action": action or ""},
        next_before=rows[-1].id if len(rows) == PAGE else None,
    )


# -- UI accounts (JSON, for `trustd admin user ...`) ------------------------------------


def _user(row: UiUser) -> UserPublic:
    return UserPublic(
        username=row.username,
        role=row.role,
        totp=row.totp_secret is not None,
        disabled=row.disabled,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


@users.post(
    "", response_model=UserCreated, status_code=201, dependencies=[deps.require("admin:user:write")]
)
def create_user(body: UserCreate, principal: AdminDep, services: ServicesDep) -> UserCreated:
    """Create a UI account; the TOTP enrolment URI is in this response only."""
    created = services.ui.create_user(
        principal, body.username, body.password.get_secret_value(), body.role, totp=body.totp
    )
    return UserCreated(**_user(created.user).model_dump(), totp_uri=created.totp_uri)


@users.get("", response_model=list[UserPublic], dependencies=[deps.require("admin:user:read")])
def list_users(principal: AdminDep, services: ServicesDep) -> list[UserPublic]:
    """Every UI account."""
    return [_user(u) for u in services.ui.list_users()]


@users.post(
    "/{username}/disable",
    response_model=UserPublic,
    dependencies=[deps.require("admin:user:write")],
)
def disable_user(username: str, principal: AdminDep, services: ServicesDep) -> UserPublic:
    """Disable an account; its sessions end at once."""
    return _user(services.ui.disable_user(principal, username))


router = APIRouter()
router.include_router(pages)
router.include_router(users)
