"""The admin UI's policy diff page: the unified diff of the modules and of the data, the
same one the JSON API and the CLI show (computed once, in `policy.bundle.diff`)."""

from __future__ import annotations

import html
import re

from trustd.roles import Role
from trustd.services.auth import Principal

from .conftest import ServerFactory
from .test_ui_views import PASSWORD, sign_in

MODULES = {"m.rego": "package m\nimport rego.v1\n\nanswer := data.m.value\n"}


def test_the_diff_page_shows_modules_and_data_as_unified_diffs(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(ui_cookie_secure=False)
    admin = Principal("test:setup", Role.ADMIN)
    server.services.ui.create_user(admin, "viewer", PASSWORD, Role.VIEWER, totp=False)
    revisions = []
    for modules, value in (
        (MODULES, {"value": 1, "names": ["a"]}),
        ({"m.rego": MODULES["m.rego"] + "# reviewed\n", "n.rego": "package n\n"}, {"value": 2}),
    ):
        created = server.client.post(
            "/v1/admin/policy/bundles",
            json={"modules": modules, "data": {"m": value}, "activate": False},
            headers=server.auth,
        )
        assert created.status_code == 201, created.text
        revisions.append(created.json()["revision"])
    old, new = revisions
    api = server.client.get(
        "/v1/admin/policy/diff", params={"from": old, "to": new}, headers=server.auth
    ).json()

    sign_in(server.client, "viewer")
    page = server.client.get("/ui/policies/diff", params={"old": old, "new": new})
    assert page.status_code == 200
    spans = [
        (cls, html.unescape(text))
        for cls, text in re.findall(r'<span class="([a-z]*)">([^<]*)</span>', page.text)
    ]
    # Every line of the API's patch is on the page, marked as git marks it.
    assert [text for _, text in spans] == api["patch"].splitlines()
    assert ("head", "--- /dev/null") in spans and ("head", "+++ b/n.rego") in spans
    assert ("add", "+# reviewed") in spans
    assert ("del", '-      "a"') in spans and ("del", '-    "value": 1') in spans
    assert ("add", '+    "value": 2') in spans
    assert any(cls == "hunk" and text.startswith("@@ ") for cls, text in spans)
    for path in ("m.rego", "n.rego", "data.json"):
        assert f">{path}</a>" in page.text

    same = server.client.get("/ui/policies/diff", params={"old": new, "new": new})
    assert "have the same modules and data" in same.text
