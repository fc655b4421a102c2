"""The identity page of the admin UI over the real app: what `trustd identity show` says,
and quarantining and releasing behind a confirmation page, cross-checked through the JSON
API; a viewer sees the page and may not act."""

from __future__ import annotations

from urllib.parse import quote

from tests.functional.test_ui_views import TD, issue, sign_in, ui
from trustd.store.quarantines import IdentityQuarantine

from .conftest import Server

__all__ = ["ui"]
X = f"{TD}/ns/web/app"


def _quarantined(server: Server) -> list[dict[str, object]]:
    response = server.client.get("/v1/admin/identities/quarantined", headers=server.auth)
    assert response.status_code == 200, response.text
    return list(response.json())


def test_identity_page_quarantine_and_release(ui: Server) -> None:
    serial = issue(ui, X)
    csrf = sign_in(ui.client, "operator")
    # From the certificate page to the identity page.
    certificate = ui.client.get(f"/ui/certificates/{serial}")
    page_url = f"/ui/identities/view?spiffe_id={quote(X, safe='')}"
    assert f"/ui/identities/view?spiffe_id={quote(X, safe='/')}" in certificate.text
    page = ui.client.get("/ui/identities/view", params={"spiffe_id": X})
    assert page.status_code == 200, page.text
    assert serial in page.text and 'id="quarantine-form"' in page.text
    searched = ui.client.get("/ui/identities", params={"q": X}, follow_redirects=False)
    assert searched.status_code == 303 and searched.headers["location"] == page_url

    # The form leads to the confirmation page, which changes nothing.
    confirm = ui.client.get(
        "/ui/identities/quarantine",
        params={"spiffe_id": X, "reason": "stolen laptop", "until": "2099-01-01T00:00"},
    )
    assert confirm.status_code == 200, confirm.text
    assert "drops its traffic" in confirm.text and "2099-01-01T00:00:00+00:00" in confirm.text
    assert _quarantined(ui) == []
    # Without the CSRF token, nothing happens either.
    form = {"spiffe_id": X, "reason": "stolen laptop", "until": "2099-01-01T00:00:00+00:00"}
    assert ui.client.post("/ui/identities/quarantine", data=form).status_code == 403
    assert _quarantined(ui) == []
    done = ui.client.post(
        "/ui/identities/quarantine", data={**form, "csrf": csrf}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == page_url
    [held] = _quarantined(ui)
    assert (held["spiffe_id"], held["reason"]) == (X, "stolen laptop")
    assert str(held["until"]).startswith("2099-01-01T00:00:00")
    assert held["quarantined_by"] == "ui:operator"

    page = ui.client.get(page_url)
    assert "stolen laptop" in page.text and "Release" in page.text
    listing = ui.client.get("/ui/identities")
    assert X in listing.text and "stolen laptop" in listing.text
    # Quarantining it again is refused, as a page, and changes nothing.
    again = ui.client.post("/ui/identities/quarantine", data={**form, "csrf": csrf})
    assert again.status_code == 409 and "already quarantined" in again.text

    assert "lets it back in" in ui.client.get(page_url.replace("view", "release")).text
    released = ui.client.post(
        "/ui/identities/release", data={"spiffe_id": X, "csrf": csrf}, follow_redirects=False
    )
    assert released.status_code == 303
    assert _quarantined(ui) == []


def test_a_viewer_sees_the_identity_and_may_not_quarantine_it(ui: Server) -> None:
    csrf = sign_in(ui.client, "viewer")
    page = ui.client.get("/ui/identities/view", params={"spiffe_id": X})
    assert page.status_code == 200 and 'id="quarantine-form"' not in page.text
    confirm = ui.client.get("/ui/identities/quarantine", params={"spiffe_id": X, "reason": "r"})
    assert confirm.status_code == 403
    refused = ui.client.post(
        "/ui/identities/quarantine", data={"spiffe_id": X, "reason": "r", "csrf": csrf}
    )
    assert refused.status_code == 403
    assert _quarantined(ui) == []
    assert IdentityQuarantine.__tablename__ == "identity_quarantines"
