"""Admin web UI over the real app: sign-in, sessions, CSRF, RBAC per view, and the pages'
actions (each audited, none changing state when refused)."""

from __future__ import annotations

import re
from datetime import timedelta

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import col, func, select

from pki.keys import KeyType, generate_private_key
from tests.join import attest_join_token
from trustd.roles import Role
from trustd.services.auth import Principal
from trustd.store.audit import AuditEvent
from trustd.store.db import transaction
from trustd.store.entries import RegistrationEntry
from trustd.store.ui import UiSession

from .conftest import Server, ServerFactory

PASSWORD = "correct horse battery staple"
ADMIN = Principal("test:setup", Role.ADMIN)
TD = "spiffe://example.org"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def ui(server_factory: ServerFactory) -> Server:
    server = server_factory(ui_cookie_secure=False, ui_lockout_threshold=3)
    for role in Role:
        server.services.ui.create_user(ADMIN, role.value, PASSWORD, role, totp=False)
    return server


def login_token(client: TestClient) -> str:
    """The sign-in form's CSRF token (its cookie is now in the client)."""
    match = CSRF.search(client.get("/ui/login").text)
    assert match is not None
    return match[1]


def sign_in(client: TestClient, username: str, password: str = PASSWORD, totp: str = "") -> str:
    """Sign in through the form; returns the session's CSRF token."""
    token = login_token(client)
    response = client.post(
        "/ui/login",
        data={"username": username, "password": password, "totp": totp, "csrf": token},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    page = client.get("/ui/")
    match = CSRF.search(page.text)
    assert match is not None
    return match[1]


def audit_actions(server: Server, actor: str) -> list[str]:
    with transaction(server.services.engine) as session:
        rows = session.exec(
            select(AuditEvent.action).where(AuditEvent.actor == actor).order_by(col(AuditEvent.id))
        ).all()
    return list(rows)


def entry_count(server: Server) -> int:
    with transaction(server.services.engine) as session:
        return int(session.exec(select(func.count()).select_from(RegistrationEntry)).one())


def make_entry(server: Server, name: str = "web") -> str:
    from trustd.services.entries import EntrySpec

    spec = EntrySpec(f"{TD}/ns/{name}/app", f"{TD}/node/a", ["unix:uid:1000"])
    return server.services.entries.create(ADMIN, [spec])[0].id


def issue(server: Server, spiffe_id: str) -> str:
    from pki.csr import create_csr

    key = generate_private_key(KeyType.EC_P256)
    response = server.client.post(
        "/v1/svid/x509",
        headers=server.auth,
        json={"spiffe_id": spiffe_id, "csr": create_csr(key)},
    )
    assert response.status_code == 201, response.text
    serial: str = response.json()["serial"]
    return serial


# -- signing in ------------------------------------------------------------------------


def test_sign_in_and_out(ui: Server) -> None:
    client = ui.client
    assert client.get("/ui/", follow_redirects=False).status_code == 303
    csrf = sign_in(client, "viewer")
    page = client.get("/ui/")
    assert page.status_code == 200
    assert "viewer (viewer)" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    cookie = next(c for c in client.cookies.jar if c.name == "trustd-session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    out = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/ui/", follow_redirects=False).status_code == 303
    assert audit_actions(ui, "ui:viewer")[-2:] == ["ui:session:created", "ui:session:ended"]


def test_wrong_password_is_refused_and_audited(ui: Server) -> None:
    token = login_token(ui.client)
    response = ui.client.post(
        "/ui/login", data={"username": "admin", "password": "nope-nope-nope", "csrf": token}
    )
    assert response.status_code == 401
    assert "wrong username, password or code" in response.text
    assert audit_actions(ui, "ui:admin") == ["ui:session:denied"]


def test_sign_in_without_form_token_is_refused(ui: Server) -> None:
    response = ui.client.post("/ui/login", data={"username": "admin", "password": PASSWORD})
    assert response.status_code == 403
    assert "expired" in response.text
    with transaction(ui.services.engine) as session:
        assert session.exec(select(func.count()).select_from(UiSession)).one() == 0


def test_repeated_failures_pause_the_account(ui: Server) -> None:
    token = login_token(ui.client)
    data = {"username": "operator", "password": "wrong password!", "csrf": token}
    statuses = [ui.client.post("/ui/login", data=data).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    # Even the right password waits out the pause.
    paused = ui.client.post("/ui/login", data={**data, "password": PASSWORD})
    assert paused.status_code == 429
    assert "try again after" in paused.text


def test_expired_session_goes_back_to_sign_in(ui: Server) -> None:
    sign_in(ui.client, "admin")
    with transaction(ui.services.engine) as session:
        past = ui.services.clock.now() - timedelta(seconds=1)
        session.execute(update(UiSession).values(expires_at=past))
    response = ui.client.get("/ui/entries", follow_redirects=False)
    assert response.status_code == 303
    assert "expired" in response.headers["location"]


def test_totp_is_required_when_enrolled(ui: Server) -> None:
    created = ui.services.ui.create_user(ADMIN, "otp", PASSWORD, Role.VIEWER, totp=True)
    assert created.totp_uri is not None
    secret = pyotp.parse_uri(created.totp_uri).secret
    token = login_token(ui.client)
    without = ui.client.post(
        "/ui/login", data={"username": "otp", "password": PASSWORD, "csrf": token}
    )
    assert without.status_code == 401
    code = pyotp.TOTP(secret).at(ui.services.clock.now())
    sign_in(ui.client, "otp", totp=code)
    # A code works once (RFC 6238 §5.2).
    ui.client.cookies.clear()
    token = login_token(ui.client)
    again = ui.client.post(
        "/ui/login",
        data={"username": "otp", "password": PASSWORD, "totp": code, "csrf": token},
    )
    assert again.status_code == 401


def test_disabled_user_loses_its_session(ui: Server) -> None:
    sign_in(ui.client, "operator")
    response = ui.client.post("/v1/admin/users/operator/disable", headers=ui.auth)
    assert response.status_code == 200
    assert response.json()["disabled"] is True
    assert ui.client.get("/ui/", follow_redirects=False).status_code == 303


# -- RBAC: every view refuses the roles it must refuse ---------------------------------

# (path, the lowest role that may open it)
VIEWS = [
    ("/ui/", Role.VIEWER),
    ("/ui/nodes", Role.VIEWER),
    ("/ui/entries", Role.VIEWER),
    ("/ui/entries/new", Role.OPERATOR),
    ("/ui/certificates", Role.VIEWER),
    ("/ui/ca", Role.VIEWER),
    ("/ui/ca/activate?kind=x509-intermediate", Role.ADMIN),
    ("/ui/policies", Role.VIEWER),
    ("/ui/policies/edit?module=data.json", Role.VIEWER),
    ("/ui/policies/1", Role.VIEWER),
    ("/ui/policies/rollback", Role.ADMIN),
    ("/ui/decisions", Role.VIEWER),
    ("/ui/graph", Role.VIEWER),
    ("/ui/graph?denied=1", Role.VIEWER),
    ("/ui/audit", Role.VIEWER),
    ("/ui/federations", Role.VIEWER),
]
_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@pytest.mark.parametrize("role", list(Role))
def test_views_refuse_lower_roles(ui: Server, role: Role) -> None:
    sign_in(ui.client, role.value)
    entry = make_entry(ui)
    views = [
        *VIEWS,
        (f"/ui/entries/{entry}", Role.VIEWER),
        (f"/ui/entries/{entry}/delete", Role.OPERATOR),
    ]
    for path, needed in views:
        response = ui.client.get(path)
        expected = 200 if _RANK[role] >= _RANK[needed] else 403
        assert response.status_code == expected, (role, path, response.text[:300])
        if expected == 403:
            assert "this page needs admin:" in response.text
    denied = audit_actions(ui, f"ui:{role.value}").count("ui:view:denied")
    assert denied == sum(_RANK[role] < _RANK[n] for _, n in views)


def test_viewer_cannot_post_operator_actions(ui: Server) -> None:
    csrf = sign_in(ui.client, "viewer")
    before = entry_count(ui)
    form = {"csrf": csrf, "spiffe_id": f"{TD}/x", "parent_id": f"{TD}/n", "selectors": "a:b"}
    response = ui.client.post("/ui/entries/new", data=form)
    assert response.status_code == 403
    assert entry_count(ui) == before


def test_operator_cannot_roll_back_policy(ui: Server) -> None:
    csrf = sign_in(ui.client, "operator")
    response = ui.client.post("/ui/policies/rollback", data={"csrf": csrf})
    assert response.status_code == 403
    assert "admin:policy:write" in response.text


# -- CSRF: every POST without the token fails, changing nothing ------------------------


def test_every_post_needs_the_csrf_token(ui: Server) -> None:
    sign_in(ui.client, "admin")
    entry = make_entry(ui)
    serial = issue(ui, f"{TD}/ns/web/app")
    node_form = {"spiffe_id": f"{TD}/node/a"}
    posts = [
        ("/ui/logout", {}),
        ("/ui/entries/new", {"spiffe_id": f"{TD}/y", "parent_id": f"{TD}/n", "selectors": "a:b"}),
        (f"/ui/entries/{entry}", {"spiffe_id": f"{TD}/z", "parent_id": f"{TD}/n"}),
        (f"/ui/entries/{entry}/delete", {}),
        (f"/ui/certificates/{serial}/revoke", {"reason": "keyCompromise"}),
        ("/ui/nodes/evict", node_form),
        ("/ui/nodes/ban", node_form),
        ("/ui/ca/prepare", {"kind": "x509-intermediate"}),
        ("/ui/ca/activate", {"kind": "x509-intermediate"}),
        ("/ui/policies/check", {"module": "data.json", "source": "{}"}),
        ("/ui/policies/activate", {"module": "data.json", "source": "{}"}),
        ("/ui/policies/rollback", {}),
    ]
    revision = ui.services.policy.revision
    for path, form in posts:
        for token in (None, "forged"):
            data = form if token is None else {**form, "csrf": token}
            response = ui.client.post(path, data=data, follow_redirects=False)
            assert response.status_code == 403, (path, response.text[:300])
            assert "security token" in response.text
    assert entry_count(ui) == 1
    assert ui.services.revocations.get_certificate(serial).status == "valid"
    assert ui.services.policy.revision == revision
    assert ui.client.get("/ui/").status_code == 200  # still signed in
    assert audit_actions(ui, "ui:admin").count("ui:csrf:denied") == 2 * len(posts)


# -- pages and their actions -----------------------------------------------------------


def test_entry_create_edit_delete(ui: Server) -> None:
    csrf = sign_in(ui.client, "operator")
    form = {
        "csrf": csrf,
        "spiffe_id": f"{TD}/ns/api/server",
        "parent_id": f"{TD}/node/a",
        "selectors": "unix:uid:1001\nunix:gid:50",
        "x509_ttl": "600",
    }
    created = ui.client.post("/ui/entries/new", data=form, follow_redirects=False)
    assert created.status_code == 303
    entry_id = created.headers["location"].rsplit("/", 1)[1]
    listed = ui.client.get("/ui/entries", params={"spiffe_id": f"{TD}/ns/api/server"})
    assert entry_id in listed.text
    api = ui.client.get(f"/v1/entries/{entry_id}", headers=ui.auth).json()
    assert api["selectors"] == ["unix:gid:50", "unix:uid:1001"]
    assert api["x509_ttl"] == 600

    edited = ui.client.post(
        f"/ui/entries/{entry_id}", data={**form, "x509_ttl": "900"}, follow_redirects=False
    )
    assert edited.status_code == 303
    assert ui.client.get(f"/v1/entries/{entry_id}", headers=ui.auth).json()["x509_ttl"] == 900
    # Federation is edited on the same form, and shown there again.
    federating = ui.client.post(
        f"/ui/entries/{entry_id}",
        data={**form, "federates_with": "b.example\nc.example"},
        follow_redirects=False,
    )
    assert federating.status_code == 303
    api = ui.client.get(f"/v1/entries/{entry_id}", headers=ui.auth).json()
    assert api["federates_with"] == ["b.example", "c.example"]
    assert "b.example\nc.example</textarea>" in ui.client.get(f"/ui/entries/{entry_id}").text

    confirm = ui.client.get(f"/ui/entries/{entry_id}/delete")
    assert "What will happen" in confirm.text
    deleted = ui.client.post(
        f"/ui/entries/{entry_id}/delete", data={"csrf": csrf}, follow_redirects=False
    )
    assert deleted.status_code == 303
    assert ui.client.get(f"/v1/entries/{entry_id}", headers=ui.auth).status_code == 404
    actions = audit_actions(ui, "ui:operator")
    for action in (
        "entry:registration:created",
        "entry:registration:updated",
        "entry:registration:deleted",
    ):
        assert action in actions


def test_entry_key_type_in_the_form(ui: Server) -> None:
    csrf = sign_in(ui.client, "operator")
    form = {
        "csrf": csrf,
        "spiffe_id": f"{TD}/ns/api/pq",
        "parent_id": f"{TD}/node/a",
        "selectors": "unix:uid:1001",
        "key_type": "ml-dsa-65",
    }
    # This trust domain keeps no ML-DSA chain: the form says what to do, nothing stored.
    refused = ui.client.post("/ui/entries/new", data=form)
    assert refused.status_code == 400
    assert "TRUSTD_ADDITIONAL_CA_KEY_TYPES" in refused.text
    assert entry_count(ui) == 0
    created = ui.client.post(
        "/ui/entries/new", data={**form, "key_type": "ec-p384"}, follow_redirects=False
    )
    assert created.status_code == 303
    entry_id = created.headers["location"].rsplit("/", 1)[1]
    page = ui.client.get(f"/ui/entries/{entry_id}")
    assert '<option value="ec-p384" selected>' in page.text
    # The empty choice puts the entry back on the trust domain's default.
    edited = ui.client.post(
        f"/ui/entries/{entry_id}", data={**form, "key_type": ""}, follow_redirects=False
    )
    assert edited.status_code == 303
    assert ui.client.get(f"/v1/entries/{entry_id}", headers=ui.auth).json()["key_type"] is None


def test_entry_with_bad_selectors_shows_why_and_stores_nothing(ui: Server) -> None:
    csrf = sign_in(ui.client, "operator")
    form = {
        "csrf": csrf,
        "spiffe_id": f"{TD}/ns/api/server",
        "parent_id": f"{TD}/node/a",
        "selectors": "no-colon-here",
    }
    response = ui.client.post("/ui/entries/new", data=form)
    assert response.status_code == 400
    assert 'role="alert"' in response.text
    assert "no-colon-here" in response.text  # the form keeps what was typed
    assert entry_count(ui) == 0
    assert "ui:action:failed" in audit_actions(ui, "ui:operator")


def test_revoke_through_the_confirmation_page(ui: Server) -> None:
    serial = issue(ui, f"{TD}/ns/web/app")
    csrf = sign_in(ui.client, "operator")
    found = ui.client.get("/ui/certificates", params={"q": f"{TD}/ns/web/app", "status": ""})
    assert serial in found.text
    bad = ui.client.get("/ui/certificates", params={"status": "bogus"})
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("text/html")
    by_serial = ui.client.get("/ui/certificates", params={"q": serial}, follow_redirects=False)
    assert by_serial.headers["location"] == f"/ui/certificates/{serial}"
    confirm = ui.client.get(f"/ui/certificates/{serial}/revoke")
    assert "CRL" in confirm.text
    done = ui.client.post(
        f"/ui/certificates/{serial}/revoke",
        data={"csrf": csrf, "reason": "keyCompromise"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    row = ui.services.revocations.get_certificate(serial)
    assert row.status == "revoked"
    assert row.revocation_reason == "keyCompromise"
    again = ui.client.post(f"/ui/certificates/{serial}/revoke", data={"csrf": csrf})
    assert again.status_code == 409
    assert "already revoked" in again.text


def test_invalid_rego_is_refused_and_policy_unchanged(ui: Server) -> None:
    csrf = sign_in(ui.client, "admin")
    revision = ui.services.policy.revision
    bad = {"csrf": csrf, "module": "mesh.rego", "source": "package trustd.mesh\nallow if {"}
    checked = ui.client.post("/ui/policies/check", data=bad)
    assert checked.status_code == 400
    assert "mesh.rego" in checked.text
    refused = ui.client.post("/ui/policies/activate", data=bad)
    assert refused.status_code == 400
    assert "active revision is unchanged" in refused.text
    assert ui.services.policy.revision == revision
    assert "policy:revision:refused" in audit_actions(ui, "ui:admin")


@pytest.mark.parametrize("module", ["../../etc/pwn", ".manifest", "x/data.json"])
def test_a_path_escaping_module_name_is_refused_in_the_editor(ui: Server, module: str) -> None:
    csrf = sign_in(ui.client, "admin")
    revision = ui.services.policy.revision
    edit = {"csrf": csrf, "module": module, "source": "package pwn\n"}
    assert ui.client.post("/ui/policies/check", data=edit).status_code in (400, 422)
    refused = ui.client.post("/ui/policies/activate", data=edit, follow_redirects=False)
    assert refused.status_code in (400, 422)
    assert ui.services.policy.revision == revision
    assert not any("pwn" in name for name in ui.services.policy.modules())


def test_data_change_activates_and_changes_decisions_then_rolls_back(ui: Server) -> None:
    csrf = sign_in(ui.client, "admin")
    make_entry(ui, "web")
    make_entry(ui, "db")
    rule = {"source": f"{TD}/ns/web/app", "destination": f"{TD}/ns/db/app"}
    decide = ui.client.post("/v1/data/trustd/mesh/allow", headers=ui.auth, json={"input": rule})
    assert decide.json()["result"] is False
    data = ui.services.policy.active.bundle.data
    data["mesh"]["allow"].append({"name": "web-to-db", **rule})
    import json

    activated = ui.client.post(
        "/ui/policies/activate",
        data={"csrf": csrf, "module": "data.json", "source": json.dumps(data)},
        follow_redirects=False,
    )
    assert activated.status_code == 303
    decide = ui.client.post("/v1/data/trustd/mesh/allow", headers=ui.auth, json={"input": rule})
    assert decide.json()["result"] is True
    graph = ui.client.get("/ui/graph")
    assert "allowed by rule web-to-db" in graph.text
    assert ui.client.get("/ui/policies/rollback").status_code == 200
    rolled = ui.client.post("/ui/policies/rollback", data={"csrf": csrf}, follow_redirects=False)
    assert rolled.status_code == 303
    decide = ui.client.post("/v1/data/trustd/mesh/allow", headers=ui.auth, json={"input": rule})
    assert decide.json()["result"] is False


def test_policy_page_shows_the_data_documents(ui: Server) -> None:
    sign_in(ui.client, "viewer")
    written = ui.client.put("/v1/data/teams/leads", json=["<ann>"], headers=ui.auth)
    assert written.status_code == 204
    page = ui.client.get("/ui/policies")
    assert page.status_code == 200
    assert "<code>data.teams</code>" in page.text
    # Shown escaped, read-only: the document is data, not markup.
    assert "&#34;&lt;ann&gt;&#34;" in page.text or "&quot;&lt;ann&gt;&quot;" in page.text
    assert "<code>data.mesh</code>" in page.text


def test_graph_shows_denied_edges_on_demand(ui: Server) -> None:
    sign_in(ui.client, "viewer")
    make_entry(ui, "quarantine")
    make_entry(ui, "api")
    plain = ui.client.get("/ui/graph")
    assert "denied by rule quarantine" not in plain.text
    shown = ui.client.get("/ui/graph", params={"denied": "1"})
    assert "denied by rule quarantine" in shown.text


def test_decision_log_filters(ui: Server) -> None:
    sign_in(ui.client, "viewer")
    for source in ("a", "b"):
        ui.client.post(
            "/v1/data/trustd/mesh/allow",
            headers=ui.auth,
            json={"input": {"source": f"{TD}/{source}", "destination": f"{TD}/db"}},
        )
    ui.services.policy.decision_log.flush()
    # The mesh decision's result is an object; "deny" finds it by its verdict.
    ui.client.post(
        "/v1/data/trustd/mesh/decision",
        headers=ui.auth,
        json={"input": {"source": f"{TD}/c", "destination": f"{TD}/db"}},
    )
    ui.services.policy.decision_log.flush()
    page = ui.client.get("/ui/decisions", params={"source": f"{TD}/a", "result": "deny"})
    assert page.status_code == 200
    assert f"{TD}/a" in page.text
    assert f"{TD}/b<" not in page.text
    denied = ui.client.get("/ui/decisions", params={"source": f"{TD}/c", "result": "deny"})
    assert f"{TD}/c<" in denied.text
    allowed = ui.client.get("/ui/decisions", params={"source": f"{TD}/c", "result": "allow"})
    assert f"{TD}/c<" not in allowed.text
    bad = ui.client.get("/ui/decisions", params={"since": "yesterday"})
    assert bad.status_code == 400
    assert "not a date and time" in bad.text


def test_users_api_needs_an_admin_token(ui: Server) -> None:
    body = {"username": "carol", "password": PASSWORD, "role": "operator"}
    assert ui.client.post("/v1/admin/users", json=body).status_code == 401
    created = ui.client.post("/v1/admin/users", json=body, headers=ui.auth)
    assert created.status_code == 201
    assert created.json()["totp_uri"] is None
    dup = ui.client.post("/v1/admin/users", json=body, headers=ui.auth)
    assert dup.status_code == 409
    short = ui.client.post(
        "/v1/admin/users", json={**body, "username": "d", "password": "short"}, headers=ui.auth
    )
    assert short.status_code == 422
    names = [u["username"] for u in ui.client.get("/v1/admin/users", headers=ui.auth).json()]
    assert "carol" in names


def test_dashboard_and_audit_pages_show_what_happened(ui: Server) -> None:
    node = attest_node(ui)
    make_entry(ui)  # a new sync revision the node has not applied yet
    issue(ui, f"{TD}/ns/web/app")
    sign_in(ui.client, "viewer")

    page = ui.client.get("/ui/").text
    assert '<span class="num">1</span> nodes (1 active)' in page
    assert '<span class="num">1</span> registration entries' in page
    lagging = re.search(
        rf'<td><code class="id">{re.escape(node)}</code></td><td>0</td><td class="warn">(\d+)</td>',
        page,
    )
    assert lagging is not None and int(lagging[1]) >= 1, page
    assert "times in UTC" in page

    audit = ui.client.get("/ui/audit", params={"actor": "ui:viewer"}).text
    assert "<td>ui:session:created</td>" in audit
    assert "<td>entry:registration:created</td>" not in audit  # filtered by actor


# -- components, verdicts, the graph, entries' pages ----------------------------------------


def attest_node(server: Server) -> str:
    """Attest a node with a join token over the API; its SPIFFE ID."""
    return attest_join_token(server.client, server.auth)


def decide(server: Server, source: str, destination: str, **request: object) -> None:
    response = server.client.post(
        "/v1/data/trustd/mesh/decision",
        headers=server.auth,
        json={"input": {"source": source, "destination": destination, **request}},
    )
    assert response.status_code == 200, response.text


def test_decision_log_renders_verdicts_not_raw_json(ui: Server) -> None:
    sign_in(ui.client, "viewer")
    decide(ui, f"{TD}/ns/web/a", f"{TD}/ns/db/postgres")
    decide(ui, f"{TD}/ns/api/b", f"{TD}/ns/db/postgres", port=5432, protocol="tcp")
    ui.services.policy.decision_log.flush()

    page = ui.client.get("/ui/decisions").text
    denied = re.search(r'<tr class="decision denied">(.*?)</tr>', page, re.DOTALL)
    assert denied is not None and f"{TD}/ns/web/a" in denied[1]
    assert '<span class="badge deny">deny</span>' in denied[1]
    assert '<span class="summary">no rule allows this call</span>' in denied[1]
    # The whole decision is behind a disclosure, not in the column.
    assert "<details" in denied[1]
    allowed = re.search(r'<tr class="decision allowed">(.*?)</tr>', page, re.DOTALL)
    assert allowed is not None and "allowed by rule api-to-db" in allowed[1]
    assert '<time class="ts" datetime="' in page

    only_denied = ui.client.get("/ui/decisions", params={"result": "deny"}).text
    assert f"{TD}/ns/web/a" in only_denied
    assert f"{TD}/ns/api/b" not in only_denied
    assert 'class="decision allowed"' not in only_denied


def test_dashboard_shows_decision_and_deny_rates(ui: Server) -> None:
    sign_in(ui.client, "viewer")
    for name in ("a", "b", "c"):
        decide(ui, f"{TD}/ns/web/{name}", f"{TD}/ns/db/postgres")
    decide(ui, f"{TD}/ns/api/x", f"{TD}/ns/db/postgres", port=5432, protocol="tcp")
    ui.services.policy.decision_log.flush()

    stats = ui.services.ui_views.dashboard()
    assert (stats.decisions.last_minute, stats.decisions.denied_last_minute) == (4, 3)
    assert (stats.decisions.last_hour, stats.decisions.denied_last_hour) == (4, 3)
    page = ui.client.get("/ui/").text
    rate = re.search(
        r'<div class="card" id="deny-rate"><span class="num[^"]*">([^<]+)</span>', page
    )
    assert rate is not None and rate[1] == "75 %"
    assert 'id="decision-rate"><span class="num">4</span>' in page
    assert "Times are shown in UTC" in page


def test_dashboard_warns_of_certificates_close_to_expiry_and_unseen_agents(
    ui: Server,
) -> None:
    from pki.clock import FakeClock
    from trustd.services.ui import UiViews

    node = attest_node(ui)
    services = ui.services
    quiet = services.ui_views.dashboard()
    assert quiet.expiring == ()
    # The agent was never seen since it attested: lagging, though on no revision behind
    # once it applies; its node SVID (an hour's lifetime) has most of its life left.
    assert [(n.spiffe_id, n.unseen) for n in quiet.lagging] == [(node, True)]
    # 55 minutes on, the node SVID is in its last sixth: its renewal is overdue.
    later = FakeClock(services.clock.now() + timedelta(minutes=55))
    stats = UiViews(services.settings, services.engine, later, services.policy).dashboard()
    assert [w.kind for w in stats.expiring] == ["node-svid"]
    assert stats.expiring[0].remaining <= timedelta(minutes=5)
    # After it expires it is no warning any more (it is gone, not expiring).
    later.advance(timedelta(minutes=10))
    gone = UiViews(services.settings, services.engine, later, services.policy).dashboard()
    assert gone.expiring == ()


def test_ca_page_offers_activation_only_for_a_prepared_key(ui: Server) -> None:
    csrf = sign_in(ui.client, "admin")
    page = ui.client.get("/ui/ca").text
    assert "/ui/ca/activate?kind=" not in page
    # The whole SHA-256 fingerprint of every key is shown.
    fingerprints = re.findall(r'<td class="fingerprint"><code class="id">([^<]+)</code>', page)
    assert fingerprints and all(len(f.replace(":", "")) == 64 for f in fingerprints), fingerprints
    prepared = ui.client.post(
        "/ui/ca/prepare", data={"csrf": csrf, "kind": "x509-intermediate"}, follow_redirects=False
    )
    assert prepared.status_code == 303
    page = ui.client.get("/ui/ca").text
    assert page.count("/ui/ca/activate?kind=") == 1
    assert "/ui/ca/activate?kind=x509-intermediate" in page


def test_entry_form_takes_addresses_and_flags_and_shows_receivers(ui: Server) -> None:
    node = attest_node(ui)
    csrf = sign_in(ui.client, "operator")
    new = ui.client.get("/ui/entries/new").text
    assert f'placeholder="{TD}/trustd/agent/join_token/…"' in new
    assert f'<option value="{node}">node (join_token)</option>' in new
    form = {
        "csrf": csrf,
        "spiffe_id": f"{TD}/ns/api/server",
        "parent_id": node,
        "selectors": "unix:uid:1001",
        "ip_addresses": "10.0.0.7\n10.0.1.0/24",
        "admin": "on",
    }
    bad = ui.client.post("/ui/entries/new", data={**form, "ip_addresses": "10.0.0.300"})
    assert bad.status_code == 400
    assert "not an IP address or prefix" in bad.text
    assert "10.0.0.300" in bad.text  # the form keeps what was typed
    assert entry_count(ui) == 0
    created = ui.client.post("/ui/entries/new", data=form, follow_redirects=False)
    assert created.status_code == 303, created.text
    entry_id = created.headers["location"].rsplit("/", 1)[1]
    api = ui.client.get(f"/v1/entries/{entry_id}", headers=ui.auth).json()
    assert api["ip_addresses"] == ["10.0.0.7/32", "10.0.1.0/24"]
    assert (api["admin"], api["downstream"]) == (True, False)

    serial = issue(ui, f"{TD}/ns/api/server")
    page = ui.client.get(f"/ui/entries/{entry_id}").text
    receivers = re.search(r'<table id="receivers">(.*?)</table>', page, re.DOTALL)
    assert receivers is not None and node in receivers[1]
    certificates = re.search(r'<table id="entry-certificates">(.*?)</table>', page, re.DOTALL)
    assert certificates is not None and serial in certificates[1]
    assert 'name="admin" checked' in page

    # Unticking a flag clears it; a downstream entry goes to no node without the selector
    # that allows a downstream CA.
    edited = ui.client.post(
        f"/ui/entries/{entry_id}",
        data={**{k: v for k, v in form.items() if k != "admin"}, "downstream": "on"},
        follow_redirects=False,
    )
    assert edited.status_code == 303
    api = ui.client.get(f"/v1/entries/{entry_id}", headers=ui.auth).json()
    assert (api["admin"], api["downstream"]) == (False, True)
    page = ui.client.get(f"/ui/entries/{entry_id}").text
    receivers = re.search(r'<table id="receivers">(.*?)</table>', page, re.DOTALL)
    assert receivers is not None and node not in receivers[1]
    assert "No active node receives this entry" in receivers[1]

    # A bad edit is refused on the entry's own page; the entry stays as it was.
    refused = ui.client.post(f"/ui/entries/{entry_id}", data={**form, "ip_addresses": "fe80::1"})
    assert refused.status_code == 400
    assert f"Entry {entry_id}" in refused.text
    assert "a link-local prefix names no one workload" in refused.text
    assert 'id="receivers"' in refused.text
    api = ui.client.get(f"/v1/entries/{entry_id}", headers=ui.auth).json()
    assert api["ip_addresses"] == ["10.0.0.7/32", "10.0.1.0/24"]
    assert api["downstream"] is True


def test_graph_is_drawn_by_graphviz_with_rules_on_edges(ui: Server) -> None:
    sign_in(ui.client, "viewer")
    for name in ("web", "api", "quarantine"):
        make_entry(ui, name)
    spec_db = f"{TD}/ns/db/postgres"
    from trustd.services.entries import EntrySpec

    ui.services.entries.create(ADMIN, [EntrySpec(spec_db, f"{TD}/node/a", ["unix:uid:5432"])])
    page = ui.client.get("/ui/graph")
    assert page.status_code == 200
    # Inline SVG from this server: the strict policy stays, no inline style or script.
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    svg = re.search(r'<div class="graph-wrap" id="graph">(<svg.*?</svg>)', page.text, re.DOTALL)
    assert svg is not None, page.text
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg[1])
    # web -> api: what the rule allows; api -> db: TCP on 5432.
    assert "http GET,POST :8443 /v1/**" in labels, labels
    assert "tcp :5432" in labels, labels
    # Clusters by path segment, the trust domain and common prefix as the graph's label.
    assert "example.org/ns" in labels and "web" in labels and "db" in labels
    assert "<script" not in svg[1] and "style=" not in svg[1]
    assert 'href="/ui/graph/edge?source=' in svg[1]
    assert "denied by quarantine" not in labels
    shown = ui.client.get("/ui/graph", params={"denied": "1"}).text
    assert "denied by quarantine" in shown
    assert 'stroke="#b42318"' in shown

    only_db = ui.client.get("/ui/graph", params={"identity": spec_db}).text
    assert "tcp :5432" in only_db
    assert "http GET,POST :8443 /v1/**" not in only_db

    decide(ui, f"{TD}/ns/api/app", spec_db, port=5432, protocol="tcp")
    ui.services.policy.decision_log.flush()
    edge = ui.client.get(
        "/ui/graph/edge", params={"source": f"{TD}/ns/api/app", "destination": spec_db}
    )
    assert edge.status_code == 200
    assert "allow rule <code>api-to-db</code>" in edge.text
    assert "&#34;ports&#34;: [\n    5432\n  ]" in edge.text or "5432" in edge.text
    decisions = re.search(r'<table id="edge-decisions">(.*?)</table>', edge.text, re.DOTALL)
    assert decisions is not None and '<span class="badge allow">allow</span>' in decisions[1]
    missing = ui.client.get(
        "/ui/graph/edge", params={"source": f"{TD}/ns/db/postgres", "destination": f"{TD}/x"}
    )
    assert missing.status_code == 404


def test_time_and_duration_formats() -> None:
    from datetime import UTC, datetime

    from trustd.web.rendering import duration, utc

    assert utc(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02 03:04:05 UTC"
    assert utc(None) == "never"
    assert duration(timedelta(days=3, hours=4, minutes=5)) == "3 d 4 h"
    assert duration(timedelta(seconds=42)) == "42 s"
    assert duration(-timedelta(minutes=90)) == "1 h 30 min ago"


def test_federation_pages_show_the_status_and_fetch_behind_a_confirmation(ui: Server) -> None:
    made = ui.client.post(
        "/v1/admin/federations",
        json={
            "trust_domain": "b.example",
            # Nothing listens on port 1: every fetch fails, with the reason on the status.
            "bundle_endpoint_url": "https://127.0.0.1:1/v1/bundle",
            "profile": "https_web",
        },
        headers=ui.auth,
    )
    assert made.status_code == 201, made.text
    csrf = sign_in(ui.client, "admin")
    listed = ui.client.get("/ui/federations")
    assert "/ui/federations/b.example" in listed.text and "none held" in listed.text
    detail = ui.client.get("/ui/federations/b.example")
    assert "https://127.0.0.1:1/v1/bundle" in detail.text
    assert "/ui/federations/b.example/refresh" in detail.text
    confirm_page = ui.client.get("/ui/federations/b.example/refresh")
    assert "What will happen" in confirm_page.text
    # No CSRF token: refused, nothing fetched.
    assert ui.client.post("/ui/federations/b.example/refresh").status_code == 403
    failed = ui.client.post("/ui/federations/b.example/refresh", data={"csrf": csrf})
    assert failed.status_code == 502
    assert 'role="alert"' in failed.text
    status = ui.client.get("/v1/admin/federations/b.example", headers=ui.auth).json()["status"]
    assert status["failures"] == 1 and status["last_error"] in failed.text
    assert "federation:bundle:refused" in audit_actions(ui, "ui:admin")
    # A viewer sees the status, but not the action, and cannot take it.
    viewer_csrf = sign_in(ui.client, "viewer")
    assert "/refresh" not in ui.client.get("/ui/federations/b.example").text
    refused = ui.client.post("/ui/federations/b.example/refresh", data={"csrf": viewer_csrf})
    assert refused.status_code == 403
