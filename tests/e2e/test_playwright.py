"""The admin UI in a real browser (Debian's Chromium through Playwright) against a real
`trustd serve` subprocess over TLS; each action is cross-checked through the JSON API.

One server and one browser for the module, seeded once (nodes attested with join tokens,
entries with long SPIFFE IDs, certificates, allowed and denied decisions); every page is
checked at 1280x800 for sideways scrolling, and its screenshot goes to
tests/e2e/artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography import x509

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.integration.conftest import TRUSTD, Running, start_server, tls
from tests.join import attest_join_token

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
PASSWORD = "e2e password that is long"
TD = "spiffe://example.org"
VIEWPORT = {"width": 1280, "height": 800}
DECISIONS = "/v1/admin/policy/decisions"
# A SPIFFE ID as long as real ones get (deep paths, generated names): it must wrap, not
# widen the pages.
LONG = (
    f"{TD}/ns/payments-settlement-processing/sa/"
    "reconciliation-batch-worker-7f9c2b4d1e8a4c6b9d3f2e1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0"
)
PAGES = {
    "dashboard": "/ui/",
    "nodes": "/ui/nodes",
    "entries": "/ui/entries",
    "entry": None,  # the long-ID entry's page, found at seeding
    "entry-new": "/ui/entries/new",
    "certificates": "/ui/certificates",
    "certificate": None,  # the long-ID SVID's page
    "ca": "/ui/ca",
    "policies": "/ui/policies",
    "policy-revision": "/ui/policies/1",
    "policy-edit": "/ui/policies/edit?module=mesh.rego",
    "decisions": "/ui/decisions",
    "graph": "/ui/graph",
    "graph-denied": "/ui/graph?denied=1",
    "graph-edge": None,  # web -> api
    "evict-confirm": None,  # a confirmation page (its GET changes nothing)
    "audit": "/ui/audit",
    "identities": "/ui/identities",
}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class Seeded:
    server: Running
    api: httpx.Client
    paths: dict[str, str]


def _issue(api: httpx.Client, spiffe_id: str) -> str:
    csr = {"spiffe_id": spiffe_id, "csr": create_csr(generate_private_key(KeyType.EC_P256))}
    issued = api.post("/v1/svid/x509", json=csr)
    assert issued.status_code == 201, issued.text
    serial: str = issued.json()["serial"]
    return serial


def create_user(server: Running, username: str, role: str) -> str:
    """A UI account made with the CLI, as an operator would; returns what it printed."""
    command = ["admin", "user", "create", username, "--role", role]
    created = subprocess.run(
        [TRUSTD, *command, "--data-dir", str(server.data_dir)],
        env={**os.environ, "TRUSTD_USER_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    return created.stdout


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    work = tmp_path_factory.mktemp("e2e")
    server = start_server(work / "var", work / "server.log")
    api = httpx.Client(
        base_url=server.url,
        verify=tls(server.bundle),
        headers={"Authorization": f"Bearer {server.token}"},
    )
    try:
        assert "created alice (admin)" in create_user(server, "alice", "admin")

        nodes = [attest_join_token(api, {}, ["k8s:ns:payments"]) for _ in range(2)]
        names = [
            "ns/web/frontend",
            "ns/api/orders",
            "ns/db/postgres",
            "ns/monitoring/prometheus",
            "ns/quarantine/suspect",
        ]
        specs = [
            {
                "spiffe_id": f"{TD}/{name}",
                "parent_id": nodes[i % 2],
                "selectors": [f"k8s:sa:{name.rsplit('/', 1)[1]}", "k8s:ns:payments"],
            }
            for i, name in enumerate(names)
        ]
        specs.append(
            {
                "spiffe_id": LONG,
                "parent_id": nodes[0],
                "selectors": ["k8s:sa:" + LONG.rsplit("/", 1)[1], "k8s:ns:payments"],
                "dns_names": ["reconciliation-batch-worker.payments.svc.cluster.local"],
                "ip_addresses": ["10.20.30.40"],
            }
        )
        entries = [api.post("/v1/entries", json=spec) for spec in specs]
        assert all(e.status_code == 201 for e in entries), [e.text for e in entries]
        long_entry = entries[-1].json()["id"]
        serial = _issue(api, LONG)
        for name in names[:3]:
            _issue(api, f"{TD}/{name}")

        # Decisions: allowed (web -> api on the rule's port), denied by default, denied by
        # the quarantine rule, and the long IDs in both columns.
        requests = [
            (f"{TD}/ns/web/frontend", f"{TD}/ns/api/orders", 8443, "http", "GET", "/v1/orders"),
            (f"{TD}/ns/api/orders", f"{TD}/ns/db/postgres", 5432, "tcp", "", ""),
            (f"{TD}/ns/web/frontend", f"{TD}/ns/db/postgres", 5432, "tcp", "", ""),
            (f"{TD}/ns/quarantine/suspect", f"{TD}/ns/api/orders", 8443, "http", "GET", "/"),
            (LONG, f"{TD}/ns/db/postgres", 5432, "tcp", "", ""),
            (f"{TD}/ns/monitoring/prometheus", LONG, 9090, "http", "GET", "/metrics"),
        ]
        for source, destination, port, protocol, method, path in requests:
            body = {"source": source, "destination": destination, "port": port}
            body |= {"protocol": protocol, "method": method, "path": path}
            decided = api.post("/v1/data/trustd/mesh/decision", json={"input": body})
            assert decided.status_code == 200, decided.text
        # The decision log is written in the background: wait for it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            logged = api.get(DECISIONS, params={"path": "trustd/mesh/decision"}).json()
            if len(logged) >= len(requests):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the decision log did not record the seeded decisions")

        edge = httpx.QueryParams(
            {"source": f"{TD}/ns/web/frontend", "destination": f"{TD}/ns/api/orders"}
        )
        paths = {k: v for k, v in PAGES.items() if v is not None}
        paths |= {
            "entry": f"/ui/entries/{long_entry}",
            "certificate": f"/ui/certificates/{serial}",
            "graph-edge": f"/ui/graph/edge?{edge}",
            "evict-confirm": f"/ui/nodes/evict?{httpx.QueryParams({'spiffe_id': nodes[0]})}",
        }
        yield Seeded(server, api, paths)
    finally:
        api.close()
        server.stop()


@pytest.fixture(scope="module")
def browser(seeded: Seeded) -> Iterator[sync_api.Browser]:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def new_context(browser: sync_api.Browser, seeded: Seeded) -> sync_api.BrowserContext:
    # The server's certificate chains to this run's own CA, not a system root.
    return browser.new_context(
        ignore_https_errors=True, base_url=seeded.server.url, viewport=VIEWPORT
    )


def sign_in(page: sync_api.Page, username: str = "alice") -> None:
    page.goto("/ui/")
    assert "/ui/login" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/")


@pytest.fixture(scope="module")
def page(browser: sync_api.Browser, seeded: Seeded) -> Iterator[sync_api.Page]:
    """One signed-in page for the module."""
    context = new_context(browser, seeded)
    page = context.new_page()
    sign_in(page)
    yield page
    context.close()


def shot(page: sync_api.Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def overflow(page: sync_api.Page) -> tuple[int, int]:
    """(document width, viewport width)."""
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    return int(widths[0]), int(widths[1])


@pytest.mark.parametrize("name", list(PAGES))
def test_no_page_scrolls_sideways_at_1280(page: sync_api.Page, seeded: Seeded, name: str) -> None:
    response = page.goto(seeded.paths[name])
    assert response is not None and response.status == 200, name
    shot(page, name)
    document, viewport = overflow(page)
    assert viewport <= VIEWPORT["width"]
    assert document <= viewport, f"{name} is {document} px wide in a {viewport} px viewport"


def test_denied_filter_shows_denied_decisions(page: sync_api.Page) -> None:
    page.goto("/ui/decisions")
    page.select_option("select[name=result]", "deny")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/ui/decisions?**result=deny**")
    rows = page.locator("#decisions tbody tr.decision")
    # web -> db and the long ID -> db by default, quarantine -> api by its deny rule.
    assert rows.count() == 3
    assert page.locator("#decisions tr.decision.allowed").count() == 0
    assert page.locator("#decisions .badge.deny").count() == 3
    text = page.text_content("#decisions") or ""
    assert "denied by rule quarantine" in text
    assert "no rule allows this call" in text
    # Timestamps stay on one line.
    assert (
        page.locator("#decisions time.ts").first.evaluate("e => getComputedStyle(e).whiteSpace")
        == "nowrap"
    )
    shot(page, "decisions-denied")


def test_graph_svg_labels_edges_with_ports(page: sync_api.Page) -> None:
    page.goto("/ui/graph")
    svg = page.locator("#graph svg")
    assert svg.count() == 1
    labels = svg.locator("g.edge text").all_text_contents()
    assert "http GET,POST :8443 /v1/**" in labels, labels
    assert "tcp :5432" in labels, labels
    # Prometheus may scrape only GET /metrics on 9090, not "everything".
    assert "http GET :9090 /metrics" in labels, labels
    assert "k8s" not in " ".join(svg.locator("g.cluster text").all_text_contents())
    # Filter by identity: only the database's edges remain.
    page.fill("input[name=identity]", f"{TD}/ns/db/postgres")
    page.click("#graph-filter button[type=submit]")
    page.wait_for_url("**identity=**")
    labels = page.locator("#graph svg g.edge text").all_text_contents()
    # api -> db on 5432, and prometheus, whose rule names no destination.
    assert sorted(labels) == ["http GET :9090 /metrics", "tcp :5432"], labels
    shot(page, "graph-filtered")
    # An edge opens its rule and its decisions.
    page.goto("/ui/graph")
    page.locator("#graph svg g.edge a").first.click()
    page.wait_for_url("**/ui/graph/edge?**")
    assert page.locator("h3", has_text="allow rule").count() >= 1
    assert page.locator("#edge-decisions").count() == 1


def docs_offline(browser: sync_api.Browser, seeded: Seeded) -> tuple[sync_api.Page, list[str]]:
    """/docs in a context where every request to another host is aborted; the page and
    the requests that were blocked."""
    context = new_context(browser, seeded)
    server = urlsplit(seeded.server.url).netloc
    blocked: list[str] = []

    def only_the_server(route: sync_api.Route) -> None:
        if urlsplit(route.request.url).netloc == server:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    # Swagger UI, loaded from this server, fetches the OpenAPI document.
    with page.expect_response("**/openapi.json") as document:
        page.goto("/docs")
    assert document.value.status == 200
    return page, blocked


def test_docs_need_no_other_host(browser: sync_api.Browser, seeded: Seeded) -> None:
    page, blocked = docs_offline(browser, seeded)
    assert page.evaluate("() => typeof window.SwaggerUIBundle") == "function"
    assert blocked == []
    shot(page, "docs")
    page.context.close()


def test_docs_render_the_operations_offline(browser: sync_api.Browser, seeded: Seeded) -> None:
    page, blocked = docs_offline(browser, seeded)
    try:
        # Swagger UI parses a 1.5 MB bundle and the whole OpenAPI document first.
        page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        assert blocked == []
    finally:
        page.context.close()


def test_admin_walkthrough(page: sync_api.Page, seeded: Seeded) -> None:
    api = seeded.api
    # Create an entry with the picker's parent; it is listed and in the API.
    page.goto("/ui/entries/new")
    parents = page.locator("datalist#parents option").evaluate_all(
        "options => options.map(o => o.value)"
    )
    node = next(p for p in parents if "/trustd/agent/join_token/" in p)
    page.fill("input[name=spiffe_id]", f"{TD}/ns/web/admin-console")
    page.fill("input[name=parent_id]", node)
    page.fill("textarea[name=selectors]", "unix:uid:1000")
    page.fill("textarea[name=ip_addresses]", "not-an-address")
    page.click("text=Create")
    assert "not an IP address or prefix" in (page.text_content("#form-error") or "")
    shot(page, "entry-error")
    page.fill("textarea[name=ip_addresses]", "10.0.0.9")
    page.check("input[name=admin]")
    page.click("text=Create")
    page.wait_for_url("**/ui/entries/*")
    assert node in (page.text_content("#receivers") or "")
    listed = api.get("/v1/entries", params={"spiffe_id": f"{TD}/ns/web/admin-console"}).json()
    assert listed["total"] == 1
    assert listed["entries"][0]["ip_addresses"] == ["10.0.0.9/32"]
    assert listed["entries"][0]["admin"] is True

    # Revoke a certificate through the confirmation page; it is on the CRL.
    serial = _issue(api, f"{TD}/ns/web/frontend")
    page.goto("/ui/certificates")
    page.fill("input[name=q]", serial)
    page.click("button:has-text('Search')")
    page.wait_for_url(f"**/ui/certificates/{serial}")
    page.click("text=Revoke…")
    assert "What will happen" in page.content()
    shot(page, "revoke-confirm")
    page.select_option("select[name=reason]", "keyCompromise")
    page.click("button.danger")
    page.wait_for_url(f"**/ui/certificates/{serial}")
    assert "revoked" in (page.text_content("#cert-status") or "")
    detail = api.get(f"/v1/admin/certificates/{serial}").json()
    crl = x509.load_der_x509_crl(api.get(f"/v1/crl/{detail['issuer_kid']}").content)
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    # keyCompromise quarantines the identity too, as the confirmation page said.
    held = api.get("/v1/admin/identities/quarantined").json()
    assert [q["spiffe_id"] for q in held] == [f"{TD}/ns/web/frontend"]

    # A policy with an error is refused and the active revision stays.
    before = api.get("/v1/admin/policy/status").json()["revision"]
    page.goto("/ui/policies/edit?module=mesh.rego")
    page.fill("textarea[name=source]", "package trustd.mesh\n\nallow if {\n")
    page.click("text=Save and activate")
    assert "active revision is unchanged" in page.content()
    shot(page, "policy-error")
    assert api.get("/v1/admin/policy/status").json()["revision"] == before

    # A valid change activates and changes the decision, and the graph draws the new edge.
    request = {"source": f"{TD}/ns/web/frontend", "destination": f"{TD}/ns/db/postgres"}
    decide = api.post("/v1/data/trustd/mesh/allow", json={"input": request}).json()
    assert decide["result"] is False
    page.goto("/ui/policies/edit?module=data.json")
    data = json.loads(page.input_value("textarea[name=source]"))
    rule = {"name": "web-to-db", "ports": [5432], "protocols": ["tcp"], **request}
    data["mesh"]["allow"].append(rule)
    page.fill("textarea[name=source]", json.dumps(data, indent=2))
    page.click("text=Check and test")
    assert "Parses and checks cleanly" in page.content()
    page.click("text=Save and activate")
    page.wait_for_url("**/ui/policies/*")
    assert api.get("/v1/admin/policy/status").json()["revision"] == before + 1
    decide = api.post("/v1/data/trustd/mesh/allow", json={"input": {**request, "port": 5432}})
    assert decide.json()["result"] is True
    page.goto("/ui/graph")
    assert "allowed by rule web-to-db" in page.content()
    page.goto("/ui/audit")
    assert "certificate:revocation:created" in page.content()


def test_sign_out_ends_the_session(browser: sync_api.Browser, seeded: Seeded) -> None:
    context = new_context(browser, seeded)
    page = context.new_page()
    page.goto("/ui/")
    shot(page, "login")
    sign_in(page)
    page.click("text=Sign out")
    page.wait_for_url("**/ui/login**")
    page.goto("/ui/entries")
    assert "/ui/login" in page.url
    context.close()


def test_quarantine_and_release_from_the_identity_page(
    browser: sync_api.Browser, seeded: Seeded
) -> None:
    # Last in the module: the identity is quarantined and released again on the way.
    server, api, x = seeded.server, seeded.api, f"{TD}/ns/api/orders"
    create_user(server, "olga", "operator")
    serial = _issue(api, x)
    context = new_context(browser, seeded)
    page = context.new_page()
    sign_in(page, "olga")

    # From the certificate to its identity.
    page.goto(f"/ui/certificates/{serial}")
    page.click(f"a:has-text('{x}')")
    page.wait_for_url("**/ui/identities/view?**")
    assert serial in (page.text_content("#svids") or "")
    assert (page.text_content("#quarantine-state") or "").strip() == "none"

    # Quarantine: the form, the confirmation page, then the identity page says so.
    page.fill("#quarantine-form input[name=reason]", "stolen laptop")
    page.fill("#quarantine-form input[name=until]", "2099-01-01T00:00")
    page.click("#quarantine-form button")
    assert "What will happen" in page.content() and "drops its traffic" in page.content()
    before = api.get("/v1/admin/identities/quarantined").json()
    assert x not in [q["spiffe_id"] for q in before]
    shot(page, "quarantine-confirm")
    page.click("button.danger")
    page.wait_for_url("**/ui/identities/view?**")
    state = page.text_content("#quarantine-state") or ""
    assert "quarantined" in state and "stolen laptop" in state and "2099-01-01" in state
    shot(page, "identity")
    [held] = [q for q in api.get("/v1/admin/identities/quarantined").json() if q["spiffe_id"] == x]
    assert (held["spiffe_id"], held["reason"], held["quarantined_by"]) == (
        x,
        "stolen laptop",
        "ui:olga",
    )
    page.goto("/ui/identities")
    assert "stolen laptop" in (page.text_content("#quarantined") or "")

    # Release, confirmed.
    page.goto(f"/ui/identities/view?spiffe_id={x}")
    page.click("text=Release…")
    assert "lets it back in" in page.content()
    page.click("button.danger")
    page.wait_for_url("**/ui/identities/view?**")
    assert (page.text_content("#quarantine-state") or "").strip() == "none"
    assert api.get("/v1/admin/identities/quarantined").json() == before
    context.close()
