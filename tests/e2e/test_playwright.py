"""The admin UI in a real browser (Debian's Chromium through Playwright) against a real
`trustd serve` subprocess over TLS; each action is cross-checked through the JSON API.
Screenshots of the main pages go to tests/e2e/artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.integration.conftest import TRUSTD, Running, start_server, tls

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
PASSWORD = "e2e password that is long"
TD = "spiffe://example.org"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    running = start_server(tmp_path / "var", tmp_path / "server.log")
    yield running
    running.stop()


@pytest.fixture
def page(server: Running) -> Iterator[sync_api.Page]:
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
        # The server's certificate chains to this run's own CA, not a system root.
        context = browser.new_context(ignore_https_errors=True, base_url=server.url)
        yield context.new_page()
        context.close()
        browser.close()


def shot(page: sync_api.Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_admin_walkthrough(server: Running, page: sync_api.Page) -> None:
    api = httpx.Client(
        base_url=server.url,
        verify=tls(server.bundle),
        headers={"Authorization": f"Bearer {server.token}"},
    )
    command = ["admin", "user", "create", "alice", "--role", "admin"]
    created = subprocess.run(
        [TRUSTD, *command, "--data-dir", str(server.data_dir)],
        env={**os.environ, "TRUSTD_USER_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    assert "created alice (admin)" in created.stdout

    # Sign in.
    page.goto("/ui/")
    assert "/ui/login" in page.url
    shot(page, "login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/")
    assert "alice (admin)" in page.content()
    shot(page, "dashboard")

    # Create an entry; it is listed and in the API.
    page.goto("/ui/entries/new")
    page.fill("input[name=spiffe_id]", f"{TD}/ns/web/frontend")
    page.fill("input[name=parent_id]", f"{TD}/node/n1")
    page.fill("textarea[name=selectors]", "unix:uid:1000")
    page.click("text=Create")
    page.goto("/ui/entries")
    assert f"{TD}/ns/web/frontend" in page.content()
    shot(page, "entries")
    listed = api.get("/v1/entries", params={"spiffe_id": f"{TD}/ns/web/frontend"}).json()
    assert listed["total"] == 1

    # Revoke a certificate through the confirmation page; it is on the CRL.
    key = generate_private_key(KeyType.EC_P256)
    csr = {"spiffe_id": f"{TD}/ns/web/frontend", "csr": create_csr(key)}
    issued = api.post("/v1/svid/x509", json=csr)
    assert issued.status_code == 201, issued.text
    serial = issued.json()["serial"]
    page.goto("/ui/certificates")
    page.fill("input[name=q]", serial)
    page.click("button:has-text('Search')")
    page.wait_for_url(f"**/ui/certificates/{serial}")
    shot(page, "certificate")
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

    # A policy with an error is refused and the active revision stays.
    before = api.get("/v1/admin/policy/status").json()["revision"]
    page.goto("/ui/policies/edit?module=mesh.rego")
    page.fill("textarea[name=source]", "package trustd.mesh\n\nallow if {\n")
    page.click("text=Save and activate")
    assert "active revision is unchanged" in page.content()
    shot(page, "policy-error")
    assert api.get("/v1/admin/policy/status").json()["revision"] == before

    # A valid change activates and changes the decision.
    request = {"source": f"{TD}/ns/web/frontend", "destination": f"{TD}/ns/db/postgres"}
    decide = api.post("/v1/data/trustd/mesh/allow", json={"input": request}).json()
    assert decide["result"] is False
    page.goto("/ui/policies/edit?module=data.json")
    data = json.loads(page.input_value("textarea[name=source]"))
    data["mesh"]["allow"].append({"name": "web-to-db", **request})
    page.fill("textarea[name=source]", json.dumps(data, indent=2))
    page.click("text=Check and test")
    assert "Parses and checks cleanly" in page.content()
    page.click("text=Save and activate")
    page.wait_for_url("**/ui/policies/*")
    assert api.get("/v1/admin/policy/status").json()["revision"] == before + 1
    decide = api.post("/v1/data/trustd/mesh/allow", json={"input": request}).json()
    assert decide["result"] is True
    page.goto("/ui/policies")
    shot(page, "policies")

    # The graph and the decision log.
    db_entry = {
        "spiffe_id": f"{TD}/ns/db/postgres",
        "parent_id": f"{TD}/node/n1",
        "selectors": ["unix:uid:5432"],
    }
    assert api.post("/v1/entries", json=db_entry).status_code == 201
    page.goto("/ui/graph")
    assert "allowed by rule web-to-db" in page.content()
    shot(page, "graph")
    page.click("text=Show denied edges")
    shot(page, "graph-denied")
    page.goto("/ui/decisions?path=trustd/mesh/allow")
    page.wait_for_selector("table")
    shot(page, "decisions")
    page.goto("/ui/audit")
    assert "certificate:revocation:created" in page.content()
    shot(page, "audit")

    # Sign out: the session is gone.
    page.click("text=Sign out")
    page.wait_for_url("**/ui/login**")
    page.goto("/ui/entries")
    assert "/ui/login" in page.url
    api.close()
