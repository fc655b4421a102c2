"""Registration entries: search, create, edit, delete."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from pki.errors import TrustdError
from pki.keys import KeyType
from trustd.api.deps import ServicesDep
from trustd.api.problems import status_for
from trustd.domain.audit import AuditOutcome
from trustd.domain.entries import Entry
from trustd.errors import InvalidRequest
from trustd.services.container import Services
from trustd.services.entries import DEFAULT_KEY_TYPE, EntryFilter, EntryPatch, EntrySpec
from trustd.web.confirm import confirm
from trustd.web.forms import lines
from trustd.web.rendering import PAGE, render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()
Opt = Annotated[str | None, Query(max_length=2048)]
# Certificates listed on an entry's page, newest first; the certificates page has the rest.
ENTRY_CERTIFICATES = 20


@router.get("/entries", response_class=HTMLResponse)
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
    ip_addresses: str = ""
    admin: bool = False
    downstream: bool = False
    federates_with: str = ""
    # Empty: the trust domain's default (TRUSTD_KEY_TYPE).
    key_type: str = ""

    # The choices of the key type field.
    key_types = tuple(KeyType)

    @classmethod
    def of(cls, row: Entry) -> EntryForm:
        """The form showing a stored entry."""
        return cls(
            row.spiffe_id,
            row.parent_id,
            "\n".join(row.selectors),
            "\n".join(row.dns_names),
            str(row.x509_ttl),
            str(row.jwt_ttl),
            row.hint,
            "\n".join(row.ip_addresses),
            row.admin,
            row.downstream,
            federates_with="\n".join(row.federates_with),
            key_type=str(row.key_type or ""),
        )

    @staticmethod
    def ttl(value: str, name: str) -> int | None:
        """A TTL field in seconds; empty means the default.

        Raises:
            InvalidRequest: not a number of seconds.
        """
        if not value.strip():
            return None
        if not value.strip().isdigit():
            raise InvalidRequest(f"{name} is a number of seconds")
        return int(value)

    def fields(self) -> dict[str, Any]:
        """The entry's fields as the entries service takes them (create or patch).

        Raises:
            InvalidRequest: a TTL is not a number of seconds, or the key type is unknown.
        """
        key_type = self.key_type.strip()
        if key_type and key_type not in tuple(KeyType):
            raise InvalidRequest(f"key type {key_type!r} is not one of {', '.join(KeyType)}")
        return {
            "spiffe_id": self.spiffe_id.strip(),
            "parent_id": self.parent_id.strip(),
            "selectors": lines(self.selectors),
            "dns_names": lines(self.dns_names),
            "x509_ttl": self.ttl(self.x509_ttl, "X509-SVID TTL"),
            "jwt_ttl": self.ttl(self.jwt_ttl, "JWT-SVID TTL"),
            "hint": self.hint,
            "ip_addresses": lines(self.ip_addresses),
            "admin": self.admin,
            "downstream": self.downstream,
            "federates_with": lines(self.federates_with),
            "key_type": KeyType(key_type) if key_type else None,
        }


def _entry_form(
    spiffe_id: Annotated[str, Form(max_length=2048)] = "",
    parent_id: Annotated[str, Form(max_length=2048)] = "",
    selectors: Annotated[str, Form(max_length=16384)] = "",
    dns_names: Annotated[str, Form(max_length=16384)] = "",
    x509_ttl: Annotated[str, Form(max_length=12)] = "",
    jwt_ttl: Annotated[str, Form(max_length=12)] = "",
    hint: Annotated[str, Form(max_length=256)] = "",
    ip_addresses: Annotated[str, Form(max_length=16384)] = "",
    # HTML checkboxes: sent ("on") when ticked, absent when not.
    admin: Annotated[str, Form(max_length=8)] = "",
    downstream: Annotated[str, Form(max_length=8)] = "",
    federates_with: Annotated[str, Form(max_length=16384)] = "",
    key_type: Annotated[str, Form(max_length=16)] = "",
) -> EntryForm:
    return EntryForm(
        spiffe_id,
        parent_id,
        selectors,
        dns_names,
        x509_ttl,
        jwt_ttl,
        hint,
        ip_addresses,
        bool(admin),
        bool(downstream),
        federates_with=federates_with,
        key_type=key_type,
    )


EntryFormDep = Annotated[EntryForm, Depends(_entry_form)]


@router.get("/entries/new", response_class=HTMLResponse)
def entry_new(
    request: Request, services: ServicesDep, viewer: Annotated[Viewer, require("admin:entry:write")]
) -> HTMLResponse:
    """An empty entry form."""
    return _form(request, services, EntryForm(), "/ui/entries/new")


def _form(
    request: Request,
    services: Services,
    form: EntryForm,
    action: str,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The entry form, with the parents to pick from: the attested nodes, and the server's
    ID (parent of node aliases, whose entries every node with their selectors receives)."""
    return render(
        request,
        "entry_form.html",
        status,
        form=form,
        action=action,
        parents=services.entries.parent_choices(),
        parent_example=services.entries.agent_id_example(),
        **context,
    )


@router.post("/entries/new", response_class=HTMLResponse)
def entry_create(
    viewer: Annotated[Viewer, require("admin:entry:write")],
    request: Request,
    services: ServicesDep,
    form: EntryFormDep,
) -> Response:
    """Create an entry; a bad field redisplays the form with the reason, nothing stored."""
    try:
        spec = EntrySpec(**form.fields())
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
    **context: Any,
) -> HTMLResponse:
    services.ui.record(
        viewer.who.principal.name,
        "ui:action:failed",
        target=action,
        outcome=AuditOutcome.FAILURE,
        details={"error": type(exc).__name__, "detail": exc.detail[:512]},
    )
    return _form(request, services, form, action, status_for(exc), error=exc.detail, **context)


@router.get("/entries/{entry_id}", response_class=HTMLResponse)
def entry_edit(
    viewer: Annotated[Viewer, require("admin:entry:read")],
    request: Request,
    entry_id: str,
    services: ServicesDep,
) -> HTMLResponse:
    """One entry, editable by those who may write entries, with the nodes that receive it
    and the certificates issued for its SPIFFE ID."""
    row = services.entries.get(entry_id)
    return _form(
        request,
        services,
        EntryForm.of(row),
        f"/ui/entries/{entry_id}",
        **_entry_page(services, row),
    )


def _entry_page(services: Services, row: Entry) -> dict[str, Any]:
    """What an entry's page shows besides the form: the nodes that receive it and the
    certificates issued for its SPIFFE ID."""
    return {
        "entry": row,
        "receivers": services.entries.receivers(row),
        "certificates": services.revocations.latest_certificates(row.spiffe_id, ENTRY_CERTIFICATES),
        "now": services.clock.now(),
    }


@router.post("/entries/{entry_id}", response_class=HTMLResponse)
def entry_update(
    viewer: Annotated[Viewer, require("admin:entry:write")],
    request: Request,
    entry_id: str,
    services: ServicesDep,
    form: EntryFormDep,
) -> Response:
    """Change an entry; a bad field redisplays the form, the entry stays as it was."""
    try:
        fields = form.fields()
        # The empty choice puts the entry back on the trust domain's default.
        patch = EntryPatch(**{**fields, "key_type": fields["key_type"] or DEFAULT_KEY_TYPE})
        services.entries.update(viewer.who.principal, entry_id, patch)
    except TrustdError as exc:
        # The page stays the entry's own (its heading, its receivers), with the change
        # as typed.
        row = services.entries.get(entry_id)
        return _form_error(
            request,
            services,
            viewer,
            exc,
            f"/ui/entries/{entry_id}",
            form,
            **_entry_page(services, row),
        )
    return RedirectResponse(f"/ui/entries/{entry_id}", status_code=303)


@router.get("/entries/{entry_id}/delete", response_class=HTMLResponse)
def entry_delete_confirm(
    viewer: Annotated[Viewer, require("admin:entry:delete")],
    request: Request,
    entry_id: str,
    services: ServicesDep,
) -> HTMLResponse:
    """Say what deleting the entry does."""
    row = services.entries.get(entry_id)
    return confirm(
        request,
        title="Delete entry",
        subject=f"{row.spiffe_id} (parent {row.parent_id})",
        effect="Workloads matching its selectors stop receiving this SPIFFE ID on their "
        "agents' next sync. SVIDs already issued stay valid until they expire; revoke them "
        "on the certificates page to end them now.",
        action=f"/ui/entries/{entry_id}/delete",
        button="Delete",
        back=f"/ui/entries/{entry_id}",
    )


@router.post("/entries/{entry_id}/delete")
def entry_delete(
    entry_id: str, services: ServicesDep, viewer: Annotated[Viewer, require("admin:entry:delete")]
) -> RedirectResponse:
    """Delete an entry."""
    services.entries.delete(viewer.who.principal, entry_id)
    return RedirectResponse("/ui/entries", status_code=303)
