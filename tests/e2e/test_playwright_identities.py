"""The identity page in a real browser (Debian's Chromium through Playwright) against a real
`trustd serve` subprocess: from a certificate to its identity, quarantine and release
through the confirmation page, each cross-checked through the JSON API."""

from __future__ import annotations

import os
import subprocess

import httpx

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.e2e.test_playwright import PASSWORD, TD, page, pytestmark, server, shot, sync_api
from tests.integration.conftest import TRUSTD, Running, tls

__all__ = ["page", "pytestmark", "server"]
X = f"{TD}/ns/web/frontend"


def test_quarantine_and_release_from_the_identity_page(
    server: Running, page: sync_api.Page
) -> None:
    with httpx.Client(
        base_url=server.url,
        verify=tls(server.bundle),
        headers={"Authorization": f"Bearer {server.token}"},
    ) as api:
        walk(server, page, api)


def walk(server: Running, page: sync_api.Page, api: httpx.Client) -> None:
    command = ["admin", "user", "create", "olga", "--role", "operator"]
    created = subprocess.run(
        [TRUSTD, *command, "--data-dir", str(server.data_dir)],
        env={**os.environ, "TRUSTD_USER_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    issued = api.post(
        "/v1/svid/x509",
        json={"spiffe_id": X, "csr": create_csr(generate_private_key(KeyType.EC_P256))},
    )
    assert issued.status_code == 201, issued.text
    serial = issued.json()["serial"]

    page.goto("/ui/login")
    page.fill("input[name=username]", "olga")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/")

    # From the certificate to its identity.
    page.goto(f"/ui/certificates/{serial}")
    page.click(f"a:has-text('{X}')")
    page.wait_for_url("**/ui/identities/view?**")
    assert serial in (page.text_content("#svids") or "")
    assert (page.text_content("#quarantine-state") or "").strip() == "none"

    # Quarantine: the form, the confirmation page, then the identity page says so.
    page.fill("#quarantine-form input[name=reason]", "stolen laptop")
    page.fill("#quarantine-form input[name=until]", "2099-01-01T00:00")
    page.click("#quarantine-form button")
    assert "What will happen" in page.content() and "drops its traffic" in page.content()
    assert api.get("/v1/admin/identities/quarantined").json() == []
    shot(page, "quarantine-confirm")
    page.click("button.danger")
    page.wait_for_url("**/ui/identities/view?**")
    state = page.text_content("#quarantine-state") or ""
    assert "quarantined" in state and "stolen laptop" in state and "2099-01-01" in state
    shot(page, "identity")
    [held] = api.get("/v1/admin/identities/quarantined").json()
    assert (held["spiffe_id"], held["reason"], held["quarantined_by"]) == (
        X,
        "stolen laptop",
        "ui:olga",
    )
    page.goto("/ui/identities")
    assert "stolen laptop" in (page.text_content("#quarantined") or "")

    # Release, confirmed.
    page.goto(f"/ui/identities/view?spiffe_id={X}")
    page.click("text=Release…")
    assert "lets it back in" in page.content()
    page.click("button.danger")
    page.wait_for_url("**/ui/identities/view?**")
    assert (page.text_content("#quarantine-state") or "").strip() == "none"
    assert api.get("/v1/admin/identities/quarantined").json() == []
