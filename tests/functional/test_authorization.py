"""One authorization model: every route of the app declares exactly one
`admin:<resource>:<action>` permission or the model it follows instead, and the admin Rego
policy decides permissions for the JSON API and the UI alike (SPIRE `authpolicy` tests walk
their API the same way)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlmodel import col, select

import trustd
from policy.admin import evaluate, is_permission
from policy.engine import EmbeddedEngine
from policy.testing import load_directory
from trustd.api import problems
from trustd.api.deps import AdminDep, Declaration, Exemption
from trustd.app import create_app
from trustd.domain.audit import AuditOutcome
from trustd.roles import Role
from trustd.services.auth import Principal
from trustd.services.policy import SHIPPED_REGO
from trustd.store.audit import AuditEvent
from trustd.store.db import transaction
from trustd.store.entries import RegistrationEntry

from .conftest import Server, ServerFactory, make_settings

TD = "spiffe://example.org"
SETUP = Principal("test:setup", Role.ADMIN)
PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# The resources permissions may name: a typo in a declaration is a resource nobody holds.
RESOURCES = {
    "acme",
    "audit",
    "ca",
    "certificate",
    "data",
    "dashboard",
    "decision",
    "entry",
    "federation",
    "flow",
    "graph",
    "identity",
    "node",
    "policy",
    "revocation",
    "svid",
    "token",
    "user",
    "verdict",
}
# Routes FastAPI itself adds (the OpenAPI document) and static files (the UI's, Swagger UI's).
FRAMEWORK = {"/openapi.json", "/ui/static", "/docs/assets"}
# What an operator does day to day beyond reading; everything else written is the admin's.
OPERATOR_WRITES = {
    "admin:entry:write",
    "admin:entry:delete",
    "admin:node:write",
    "admin:svid:write",
    "admin:certificate:revoke",
    "admin:identity:quarantine",
    "admin:policy:test",
}
CREDENTIALS = {"token", "user"}


@dataclass(frozen=True)
class Declared:
    methods: frozenset[str]
    path: str
    declared: list[str]

    @property
    def reads(self) -> bool:
        return self.methods <= {"GET", "HEAD"}


def _declarations(dependant: Dependant) -> Iterator[str]:
    owner = getattr(dependant.call, "__self__", None)
    if isinstance(owner, Declaration):
        yield owner.declared
    for sub in dependant.dependencies:
        yield from _declarations(sub)


def declared_routes(app: FastAPI) -> tuple[list[Declared], list[str]]:
    """Every route with what it declares, and the paths of routes that are not API routes."""
    routes, others = [], []
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            others.append(str(route.path))
            continue
        routes.append(
            Declared(frozenset(route.methods or ()), route.path, list(_declarations(dependant)))
        )
    return routes, others


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The app as `trustd serve` builds it; not started, so no database is needed."""
    tmp = tmp_path_factory.mktemp("authz")
    settings = make_settings(tmp, f"sqlite:///{tmp}/unused.db")
    settings.data_dir.mkdir(parents=True)
    return create_app(settings)


@pytest.fixture(scope="module")
def shipped() -> EmbeddedEngine:
    return EmbeddedEngine({"admin.rego": (SHIPPED_REGO / "admin.rego").read_text()})


def permissions(app: FastAPI) -> set[str]:
    routes, _ = declared_routes(app)
    return {d for r in routes for d in r.declared if d.startswith("admin:")}


# -- every route declares its access ---------------------------------------------------


def test_every_route_declares_exactly_one_permission_or_exemption(app: FastAPI) -> None:
    routes, others = declared_routes(app)
    assert len(routes) > 100
    undeclared = [(sorted(r.methods), r.path, r.declared) for r in routes if len(r.declared) != 1]
    assert undeclared == []
    exemptions = {e.value for e in Exemption}
    malformed = [
        (r.path, r.declared[0])
        for r in routes
        if r.declared[0] not in exemptions and not is_permission(r.declared[0])
    ]
    assert malformed == []
    assert set(others) <= FRAMEWORK


def test_permissions_name_known_resources(app: FastAPI) -> None:
    assert {p.split(":")[1] for p in permissions(app)} <= RESOURCES


def test_admin_json_reads_are_read_permissions_and_writes_are_not(app: FastAPI) -> None:
    """Reads are what a viewer gets: a GET declaring a write, or a POST declaring a read,
    would give a viewer a change or refuse it a page. (UI confirmation pages are GETs that
    need the write they confirm.)"""
    routes, _ = declared_routes(app)
    wrong = [
        (sorted(r.methods), r.path, r.declared[0])
        for r in routes
        if r.declared[0].startswith("admin:")
        and not r.path.startswith("/ui/")
        and r.reads != r.declared[0].endswith(":read")
    ]
    assert wrong == []


def test_only_the_protocols_with_their_own_credentials_are_exempt(app: FastAPI) -> None:
    routes, _ = declared_routes(app)
    exempt = {r.path: r.declared[0] for r in routes if not r.declared[0].startswith("admin:")}
    assert {p for p, d in exempt.items() if d == Exemption.AGENT} == {
        f"/v1/agents/{name}"
        for name in ("sync", "ack", "addresses", "flows", "svids", "jwt", "wit", "renew")
    }
    assert exempt["/v1/bundle"] == exempt["/v1/ocsp"] == exempt["/healthz"] == "public"
    assert exempt["/v1/attest"] == "attestation"
    assert exempt["/ui/login"] == "sign-in"
    assert exempt["/v1/data/{path:path}"] == "policy-api"
    assert {d for p, d in exempt.items() if p.startswith("/acme/")} == {"acme"}
    assert not [p for p in exempt if p.startswith(("/v1/admin/", "/v1/entries", "/v1/nodes"))]


def test_the_shipped_policy_grants_each_role_its_share(
    app: FastAPI, shipped: EmbeddedEngine
) -> None:
    declared = permissions(app)
    held = {
        role: {p for p in declared if evaluate(shipped, role.value, p).allowed} for role in Role
    }
    reads = {p for p in declared if p.endswith(":read") and p.split(":")[1] not in CREDENTIALS}
    assert held[Role.ADMIN] == declared
    assert held[Role.VIEWER] == reads
    assert held[Role.OPERATOR] == reads | (OPERATOR_WRITES & declared)
    assert evaluate(shipped, "root", "admin:entry:read").reason == "root is not a known role"


def _route_pattern(path: str) -> re.Pattern[str]:
    pattern = re.sub(r"\{[^}:]+:path\}", ".+", path)
    return re.compile(re.sub(r"\{[^}]+\}", "[^/]+", pattern) + "$")


def test_every_cli_command_calls_declared_routes(app: FastAPI) -> None:
    """The CLI is a client of the admin API: each path it calls is a route declaring a
    permission (or the public bundle), so each command needs what its routes need."""
    routes, _ = declared_routes(app)
    patterns = [(_route_pattern(r.path), r.declared[0]) for r in routes]
    package = Path(trustd.__file__).parent
    sources = [package / "cli.py", *sorted((package / "cli").glob("**/*.py"))]
    called = {
        literal
        for source in sources
        if source.is_file()
        for literal in re.findall(r'f?"(/(?:v1|acme)/[^"?]*)"', source.read_text())
    }
    assert len(called) > 30
    needs = {
        path: {d for pattern, d in patterns if pattern.match(re.sub(r"\{[^}]+\}", "x", path))}
        for path in called
    }
    assert [path for path, declared in needs.items() if not declared] == []
    # Paths are matched without their method: `/v1/data/...` is the OPA Data API's read
    # (policy-api) and its admin writes, which are what the CLI calls there.
    outside = {
        d
        for declared in needs.values()
        if not any(d.startswith("admin:") for d in declared)
        for d in declared
    }
    assert outside <= {Exemption.PUBLIC.value}


def test_a_route_that_takes_the_principal_without_a_declaration_refuses() -> None:
    bare = FastAPI()
    problems.install(bare)

    @bare.get("/undeclared")
    def undeclared(principal: AdminDep) -> dict[str, str]:
        return {"name": principal.name}

    with TestClient(bare, raise_server_exceptions=False) as client:
        response = client.get("/undeclared", headers={"Authorization": "Bearer x"})
    assert response.status_code == 403
    assert response.json()["detail"] == "this route declares no permission"


# -- the policy decides, the API and the UI alike -----------------------------------------


def token(server: Server, role: Role) -> tuple[str, dict[str, str]]:
    """A bearer token of `role`: its audit actor name and the request headers."""
    created = server.client.post(
        "/v1/admin/tokens", json={"name": role.value, "role": role.value}, headers=server.auth
    ).json()
    return f"token:{created['id']}", {"Authorization": f"Bearer {created['token']}"}


def denials(server: Server, actor: str) -> list[dict[str, Any]]:
    with transaction(server.services.engine) as session:
        rows = session.exec(
            select(AuditEvent)
            .where(AuditEvent.actor == actor, AuditEvent.outcome == AuditOutcome.DENIED)
            .order_by(col(AuditEvent.id))
        ).all()
        return [
            {"action": r.action, "target": r.target, "permission": r.details["permission"]}
            for r in rows
        ]


def actions(server: Server, actor: str) -> list[str]:
    with transaction(server.services.engine) as session:
        query = select(AuditEvent.action).where(AuditEvent.actor == actor)
        return list(session.exec(query.order_by(col(AuditEvent.id))).all())


def entries(server: Server) -> int:
    with transaction(server.services.engine) as session:
        return len(session.exec(select(RegistrationEntry.id)).all())


def new_entry(name: str) -> dict[str, Any]:
    return {"spiffe_id": f"{TD}/{name}", "parent_id": f"{TD}/node", "selectors": ["unix:uid:1"]}


def assert_refused(response: Any, permission: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:trustd:problem:permission-denied"
    assert permission in body["detail"]


def test_viewer_reads_and_is_refused_writes(server: Server) -> None:
    actor, viewer = token(server, Role.VIEWER)
    created = server.client.post("/v1/entries", json=new_entry("a"), headers=server.auth)
    assert created.status_code == 201
    for path in (
        "/v1/entries",
        f"/v1/entries/{created.json()['id']}",
        "/v1/nodes",
        "/v1/admin/ca",
        "/v1/admin/ca/keys",
        "/v1/admin/certificates",
        "/v1/admin/revocations",
        "/v1/admin/policy/bundles",
        "/v1/admin/policy/decisions",
        "/v1/admin/acme/accounts",
        "/v1/verdicts/agents",
    ):
        response = server.client.get(path, headers=viewer)
        assert response.status_code == 200, (path, response.text)

    before = entries(server)
    assert_refused(
        server.client.post("/v1/entries", json=new_entry("b"), headers=viewer),
        "admin:entry:write",
    )
    assert_refused(
        server.client.delete(f"/v1/entries/{created.json()['id']}", headers=viewer),
        "admin:entry:delete",
    )
    # Reading "everything" stops at credentials: who holds which token or account.
    assert_refused(server.client.get("/v1/admin/tokens", headers=viewer), "admin:token:read")
    assert_refused(server.client.get("/v1/admin/users", headers=viewer), "admin:user:read")
    assert entries(server) == before
    entry_path = f"/v1/entries/{created.json()['id']}"
    assert denials(server, actor) == [
        {"action": "admin:permission:denied", "target": target, "permission": permission}
        for target, permission in [
            ("POST /v1/entries", "admin:entry:write"),
            (f"DELETE {entry_path}", "admin:entry:delete"),
            ("GET /v1/admin/tokens", "admin:token:read"),
            ("GET /v1/admin/users", "admin:user:read"),
        ]
    ]


def test_operator_writes_entries_and_every_write_is_audited(server: Server) -> None:
    actor, operator = token(server, Role.OPERATOR)
    created = server.client.post("/v1/entries", json=new_entry("web"), headers=operator)
    assert created.status_code == 201, created.text
    entry_id = created.json()["id"]
    patched = server.client.patch(
        f"/v1/entries/{entry_id}", json={"selectors": ["unix:uid:2"]}, headers=operator
    )
    assert patched.status_code == 200, patched.text
    assert server.client.delete(f"/v1/entries/{entry_id}", headers=operator).status_code == 204
    assert actions(server, actor) == [
        "entry:registration:created",
        "entry:registration:updated",
        "entry:registration:deleted",
    ]
    assert denials(server, actor) == []


@pytest.mark.parametrize(
    ("method", "path", "body", "permission"),
    [
        ("post", "/v1/admin/tokens", {"name": "x", "role": "admin"}, "admin:token:write"),
        ("get", "/v1/admin/tokens", None, "admin:token:read"),
        ("post", "/v1/admin/users", {"username": "eve", "password": "p" * 16}, "admin:user:write"),
        ("post", "/v1/admin/ca/prepare", {"kind": "x509-intermediate"}, "admin:ca:write"),
        ("post", "/v1/admin/policy/rollback", None, "admin:policy:write"),
        ("put", "/v1/data/mesh/allow", [], "admin:data:write"),
        ("post", "/v1/admin/acme/eab-keys", {"label": "x"}, "admin:acme:write"),
    ],
)
def test_admin_only_actions_refuse_operators(
    server: Server, method: str, path: str, body: Any, permission: str
) -> None:
    actor, operator = token(server, Role.OPERATOR)
    revision = server.services.policy.revision
    sequence = server.services.ca.state.bundle.sequence
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    assert_refused(getattr(server.client, method)(path, headers=operator, **kwargs), permission)
    assert denials(server, actor) == [
        {
            "action": "admin:permission:denied",
            "target": f"{method.upper()} {path}",
            "permission": permission,
        }
    ]
    # Nothing changed: the audit row is the refusal's only write.
    assert server.services.policy.revision == revision
    assert server.services.ca.state.bundle.sequence == sequence
    assert [a for a in actions(server, actor) if a != "admin:permission:denied"] == []
    admin = f"token:{server.admin_token.split('.')[1]}"
    done = len(actions(server, admin))
    allowed = getattr(server.client, method)(path, headers=server.auth, **kwargs)
    assert allowed.status_code not in (401, 403), allowed.text
    if method != "get" and allowed.is_success:
        # Every admin action is an audit row, written with the action.
        assert len(actions(server, admin)) > done


def test_decisions_follow_the_active_revision(server: Server) -> None:
    _, operator = token(server, Role.OPERATOR)
    eab = {"label": "ops"}
    assert_refused(
        server.client.post("/v1/admin/acme/eab-keys", json=eab, headers=operator),
        "admin:acme:write",
    )
    shipped = load_directory(SHIPPED_REGO, tests=False)
    grant = {**shipped.data, "admin": {"roles": {"operator": ["admin:acme:write"]}}}
    activated = server.client.post(
        "/v1/admin/policy/bundles",
        json={"modules": shipped.modules, "data": grant},
        headers=server.auth,
    )
    assert activated.status_code == 201, activated.text
    granted = server.client.post("/v1/admin/acme/eab-keys", json=eab, headers=operator)
    assert granted.status_code == 201, granted.text
    rolled_back = server.client.post("/v1/admin/policy/rollback", headers=server.auth)
    assert rolled_back.status_code == 200, rolled_back.text
    assert_refused(
        server.client.post("/v1/admin/acme/eab-keys", json=eab, headers=operator),
        "admin:acme:write",
    )


def test_a_revision_without_the_admin_module_is_decided_by_the_shipped_one(
    server: Server,
) -> None:
    _, viewer = token(server, Role.VIEWER)
    bare = {"modules": {"m.rego": "package m\nimport rego.v1\nanswer := 1\n"}}
    activated = server.client.post("/v1/admin/policy/bundles", json=bare, headers=server.auth)
    assert activated.status_code == 201, activated.text
    assert server.client.get("/v1/entries", headers=viewer).status_code == 200
    assert_refused(
        server.client.post("/v1/entries", json=new_entry("c"), headers=viewer),
        "admin:entry:write",
    )
    # The administrators are not locked out of repairing the policy.
    assert server.client.post("/v1/admin/policy/rollback", headers=server.auth).status_code == 200


def test_decisions_are_evaluated_once_per_revision(server: Server) -> None:
    authz = server.services.authz
    first = authz.decide(Role.VIEWER, "admin:entry:read")
    assert first.allowed
    assert authz.decide(Role.VIEWER, "admin:entry:read") is first
    refused = authz.decide(Role.VIEWER, "admin:entry:write")
    assert not refused.allowed
    assert refused.reason == "role viewer lacks admin:entry:write"
    assert authz.granted(Role.OPERATOR, ["admin:entry:write", "admin:ca:write"]) == {
        "admin:entry:write"
    }


def test_ui_and_api_ask_the_same_decision(server_factory: ServerFactory) -> None:
    """A UI view and the JSON route over the same concept need the same permission, and a
    UI refusal is audited like an API one (outcome denied, with the permission)."""
    server = server_factory(ui_cookie_secure=False)
    routes, _ = declared_routes(server.client.app)  # type: ignore[arg-type]
    needs = {(m, r.path): r.declared[0] for r in routes for m in r.methods}
    same = [
        (("POST", "/ui/entries/new"), ("POST", "/v1/entries")),
        (("GET", "/ui/entries"), ("GET", "/v1/entries")),
        (("POST", "/ui/entries/{entry_id}/delete"), ("DELETE", "/v1/entries/{entry_id}")),
        (("GET", "/ui/nodes"), ("GET", "/v1/nodes")),
        (("POST", "/ui/nodes/{action}"), ("POST", "/v1/nodes/evict")),
        (("GET", "/ui/certificates"), ("GET", "/v1/admin/certificates")),
        (("POST", "/ui/certificates/{serial}/revoke"), ("POST", "/v1/admin/certificates/revoke")),
        (("GET", "/ui/ca"), ("GET", "/v1/admin/ca")),
        (("POST", "/ui/ca/prepare"), ("POST", "/v1/admin/ca/prepare")),
        (("POST", "/ui/policies/rollback"), ("POST", "/v1/admin/policy/rollback")),
        (("GET", "/ui/decisions"), ("GET", "/v1/admin/policy/decisions")),
        (("GET", "/ui/federations"), ("GET", "/v1/admin/federations")),
        (
            ("GET", "/ui/federations/{trust_domain}"),
            ("GET", "/v1/admin/federations/{trust_domain}"),
        ),
        (
            ("POST", "/ui/federations/{trust_domain}/refresh"),
            ("POST", "/v1/admin/federations/{trust_domain}/refresh"),
        ),
    ]
    assert [(ui, api) for ui, api in same if needs[ui] != needs[api]] == []

    server.services.ui.create_user(SETUP, "vera", PASSWORD, Role.VIEWER, totp=False)
    client = server.client
    login = CSRF.search(client.get("/ui/login").text)
    assert login is not None
    form = {"username": "vera", "password": PASSWORD, "totp": "", "csrf": login[1]}
    assert client.post("/ui/login", data=form, follow_redirects=False).status_code == 303
    session = CSRF.search(client.get("/ui/").text)
    assert session is not None
    before = entries(server)
    refused = client.post(
        "/ui/entries/new", data={"csrf": session[1], **new_entry("ui"), "selectors": "unix:uid:1"}
    )
    assert refused.status_code == 403
    assert entries(server) == before
    assert denials(server, "ui:vera") == [
        {"action": "ui:view:denied", "target": "/ui/entries/new", "permission": "admin:entry:write"}
    ]
