"""Policy revisions: browse, edit and check, activate, diff, roll back."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from pki.errors import TrustdError
from policy.bundle import MAX_MODULE_ID, MODULE_ID_PATTERN, Bundle
from policy.engine import EmbeddedEngine
from policy.errors import InvalidModuleId, PolicyCompileError
from policy.testing import check, run_tests
from trustd.api.deps import ServicesDep
from trustd.api.wire import CountQuery, RevisionPath
from trustd.domain.audit import AuditOutcome
from trustd.errors import InvalidRequest
from trustd.services.container import Services
from trustd.web.confirm import confirm
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()


DATA_DOCUMENT = "data.json"
# A data document is shown up to this many characters: the page stays readable and quick
# whatever a client PUT (the JSON API and the CLI give the whole document).
SHOWN_CHARS = 20_000


def _shown(value: object) -> str:
    text = json.dumps(value, indent=2, sort_keys=True)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "\n…"


@router.get("/policies", response_class=HTMLResponse)
def policies(
    request: Request, services: ServicesDep, viewer: Annotated[Viewer, require("admin:policy:read")]
) -> HTMLResponse:
    """Revisions, the active one, its modules and its data documents (read-only)."""
    active = services.policy.active
    return render(
        request,
        "policies.html",
        revisions=services.policy.list_revisions(50),
        active=active.revision,
        modules=sorted(active.bundle.modules),
        data_document=DATA_DOCUMENT,
        documents=[(key, _shown(value)) for key, value in sorted(services.policy.data().items())],
    )


@router.get("/policies/edit", response_class=HTMLResponse)
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


PolicyModule = Annotated[
    str, Form(min_length=1, max_length=MAX_MODULE_ID, pattern=MODULE_ID_PATTERN)
]
PolicySource = Annotated[str, Form(max_length=1_000_000)]


@router.post("/policies/check", response_class=HTMLResponse)
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


@router.post("/policies/activate", response_class=HTMLResponse)
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
    return _store(viewer, request, services, module, source, note, activate=True)


@router.post("/policies/draft", response_class=HTMLResponse)
def policy_draft(
    viewer: Annotated[Viewer, require("admin:policy:write")],
    request: Request,
    services: ServicesDep,
    module: PolicyModule,
    source: PolicySource,
    note: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Store the edited bundle as a new revision without activating it, and show what it
    would break (the last day's allowed flows it would deny)."""
    return _store(viewer, request, services, module, source, note, activate=False)


def _store(
    viewer: Viewer,
    request: Request,
    services: ServicesDep,
    module: str,
    source: str,
    note: str,
    *,
    activate: bool,
) -> Response:
    try:
        bundle = _edited(services, module, source)
        EmbeddedEngine(bundle.modules, bundle.data)
        row = services.policy.create_revision(
            viewer.who.principal, bundle, activate=activate, note=note or f"ui: edit {module}"
        )
    except (PolicyCompileError, InvalidModuleId, InvalidRequest) as exc:
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
    if not activate:
        return RedirectResponse(f"/ui/flows/impact?revision={row.revision}", status_code=303)
    return RedirectResponse(f"/ui/policies/{row.revision}", status_code=303)


@router.get("/policies/diff", response_class=HTMLResponse)
def policy_diff(
    viewer: Annotated[Viewer, require("admin:policy:read")],
    request: Request,
    services: ServicesDep,
    old: Annotated[CountQuery, Query(ge=1)],
    new: Annotated[CountQuery, Query(ge=1)],
) -> HTMLResponse:
    """What changed between two revisions."""
    return render(
        request, "policy_diff.html", old=old, new=new, diff=services.policy.diff(old, new)
    )


@router.get("/policies/rollback", response_class=HTMLResponse)
def rollback_confirm(
    request: Request,
    services: ServicesDep,
    viewer: Annotated[Viewer, require("admin:policy:write")],
) -> HTMLResponse:
    """Say what rolling back does."""
    return confirm(
        request,
        title="Roll back the policy",
        subject=f"active revision {services.policy.revision}",
        effect="The revision that was active before this one becomes active on every "
        "replica; decisions change at once.",
        action="/ui/policies/rollback",
        button="Roll back",
        back="/ui/policies",
    )


@router.post("/policies/rollback")
def rollback(
    services: ServicesDep, viewer: Annotated[Viewer, require("admin:policy:write")]
) -> RedirectResponse:
    """Activate the previously active revision."""
    row = services.policy.rollback(viewer.who.principal)
    return RedirectResponse(f"/ui/policies/{row.revision}", status_code=303)


@router.get("/policies/{revision}", response_class=HTMLResponse)
def policy_revision(
    viewer: Annotated[Viewer, require("admin:policy:read")],
    request: Request,
    revision: RevisionPath,
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
