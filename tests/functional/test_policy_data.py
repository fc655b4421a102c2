"""OPA's Data API for data documents (PUT, PATCH, DELETE /v1/data) on SQLite and
PostgreSQL: OPA's answers and error codes, a failed write that changes nothing, every
write a revision (audited, rolled back, exported in bundles)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from typing import Any

from sqlmodel import col, select

from tests.functional.conftest import Server, ServerFactory
from trustd.store.audit import AuditEvent
from trustd.store.db import transaction

MODULE = """package app
import rego.v1

default allowed := false

allowed if input.user in data.app.admins
"""


def get(server: Server, path: str) -> Any:
    response = server.client.get(f"/v1/data/{path}", headers=server.auth)
    assert response.status_code == 200, response.text
    return response.json().get("result", "<undefined>")


def revision(server: Server) -> int:
    status = server.client.get("/v1/admin/policy/status", headers=server.auth).json()
    return int(status["revision"])


def opa_error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    return str(body["message"])


def test_put_get_patch_delete_as_opa(server: Server) -> None:
    client, auth = server.client, server.auth
    assert client.put("/v1/policies/app.rego", content=MODULE, headers=auth).status_code == 200
    # PUT creates the objects above the path; base and virtual documents share one tree.
    created = client.put("/v1/data/app/admins", json=["alice"], headers=auth)
    assert created.status_code == 204 and created.content == b""
    assert get(server, "app") == {"admins": ["alice"], "allowed": False}
    decided = client.post("/v1/data/app/allowed", json={"input": {"user": "alice"}}, headers=auth)
    assert decided.json()["result"] is True
    # If-None-Match: * keeps an existing document (304) and creates a missing one.
    kept = client.put("/v1/data/app/admins", json=[], headers={**auth, "If-None-Match": "*"})
    assert kept.status_code == 304
    assert get(server, "app/admins") == ["alice"]
    fresh = client.put("/v1/data/app/owner", json="carol", headers={**auth, "If-None-Match": "*"})
    assert fresh.status_code == 204 and get(server, "app/owner") == "carol"
    # PATCH: RFC 6902 add (with `-` appending), replace, remove, in order.
    patched = client.patch(
        "/v1/data/app",
        json=[
            {"op": "add", "path": "/admins/-", "value": "bob"},
            {"op": "replace", "path": "/owner", "value": "dave"},
            {"op": "add", "path": "/limits", "value": {"rps": 5}},
            {"op": "remove", "path": "/limits/rps"},
        ],
        headers={**auth, "Content-Type": "application/json-patch+json"},
    )
    assert patched.status_code == 204, patched.text
    assert get(server, "app") == {
        "admins": ["alice", "bob"],
        "allowed": False,
        "limits": {},
        "owner": "dave",
    }
    bob = client.post("/v1/data/app/allowed", json={"input": {"user": "bob"}}, headers=auth)
    assert bob.json()["result"] is True
    # ?metrics answers 200 with OPA's metrics instead of 204.
    measured = client.put("/v1/data/app/limits?metrics=true", json={"rps": 1}, headers=auth)
    assert measured.status_code == 200
    assert measured.json()["metrics"]["timer_server_handler_ns"] > 0
    # DELETE: 204, then 404 resource_not_found.
    assert client.delete("/v1/data/app/owner", headers=auth).status_code == 204
    assert get(server, "app/owner") == "<undefined>"
    again = client.delete("/v1/data/app/owner", headers=auth)
    assert "/app/owner" in opa_error(again, 404, "resource_not_found")


def test_opa_error_codes(server: Server) -> None:
    client, auth = server.client, server.auth
    assert client.put("/v1/data/t", json={"n": 1, "list": [1]}, headers=auth).status_code == 204
    missing = client.patch(
        "/v1/data/t", json=[{"op": "replace", "path": "/nope", "value": 1}], headers=auth
    )
    opa_error(missing, 404, "resource_not_found")
    no_parent = client.patch(
        "/v1/data/t", json=[{"op": "add", "path": "/a/b", "value": 1}], headers=auth
    )
    opa_error(no_parent, 404, "resource_not_found")
    moved = client.patch("/v1/data/t", json=[{"op": "move", "path": "/n"}], headers=auth)
    assert "move" in opa_error(moved, 400, "invalid_parameter")
    # A non-object in the way: OPA's write conflict (404 resource_conflict).
    blocked = client.put("/v1/data/t/n/deeper", json=1, headers=auth)
    opa_error(blocked, 404, "resource_conflict")
    opa_error(client.put("/v1/data", json=[1], headers=auth), 400, "invalid_parameter")
    opa_error(client.delete("/v1/data", headers=auth), 400, "invalid_parameter")
    bad_json = client.put("/v1/data/t", content=b'{"n": ', headers=auth)
    opa_error(bad_json, 400, "invalid_parameter")
    nan = client.put("/v1/data/t/x", content=b'{"n": NaN}', headers=auth)
    opa_error(nan, 400, "invalid_parameter")
    not_a_list = client.patch("/v1/data/t", json={"op": "add"}, headers=auth)
    opa_error(not_a_list, 400, "invalid_parameter")
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    opa_error(client.put("/v1/data/t/deep", json=deep, headers=auth), 400, "invalid_parameter")
    # Data where a rule lives conflicts with the policy (OPA's path-conflict check).
    conflict = client.put("/v1/data/trustd/mesh/allow", json=True, headers=auth)
    assert "conflicting rule for data path trustd/mesh/allow" in opa_error(
        conflict, 400, "invalid_parameter"
    )
    # And a module whose rule lands on data is refused the same way.
    clash = client.put("/v1/policies/t.rego", content="package t\nn := 2\n", headers=auth)
    assert clash.status_code == 400
    assert clash.json()["errors"][0]["code"] == "rego_compile_error"
    # Writes need an admin token.
    assert client.put("/v1/data/t/x", json=1).status_code == 401


def test_a_failed_write_changes_nothing(server: Server) -> None:
    client, auth = server.client, server.auth
    assert client.put("/v1/data/kept", json={"a": [1, 2]}, headers=auth).status_code == 204
    before = revision(server)
    with transaction(server.services.engine) as session:
        audited = len(session.exec(select(AuditEvent)).all())
    refused = [
        # The first operation is valid; the second fails, so neither applies.
        client.patch(
            "/v1/data/kept",
            json=[
                {"op": "add", "path": "/b", "value": 1},
                {"op": "remove", "path": "/a/7"},
            ],
            headers=auth,
        ),
        client.put("/v1/data/kept", content=b"[1,", headers=auth),
        client.put("/v1/data/trustd/mesh/allow", json=[], headers=auth),
        client.delete("/v1/data/kept/gone", headers=auth),
        client.patch("/v1/data/kept", json=[{"op": "test", "path": "/a"}], headers=auth),
    ]
    assert all(r.status_code in (400, 404) for r in refused), [r.text for r in refused]
    assert get(server, "kept") == {"a": [1, 2]}
    assert revision(server) == before
    with transaction(server.services.engine) as session:
        assert len(session.exec(select(AuditEvent)).all()) == audited


def test_each_write_is_an_audited_revision_that_rolls_back(server_factory: ServerFactory) -> None:
    # Unsigned bundles accepted: the export below is imported back.
    server = server_factory(policy_bundle_require_signature=False)
    client, auth = server.client, server.auth
    before = revision(server)
    assert client.put("/v1/data/team/leads", json=["ann"], headers=auth).status_code == 204
    after = revision(server)
    assert after == before + 1
    with transaction(server.services.engine) as session:
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(2)).all()
    assert {e.action for e in events} == {"policy:revision:created", "policy:revision:activated"}
    assert all(e.target == str(after) for e in events)
    created = next(e for e in events if e.action == "policy:revision:created")
    assert created.details["note"] == "data put /team/leads"
    # The revision carries the data: a rollback takes the write back.
    assert client.post("/v1/admin/policy/rollback", headers=auth).status_code == 200
    assert get(server, "team") == "<undefined>"
    assert client.put("/v1/data/team/leads", json=["bea"], headers=auth).status_code == 204
    newest = revision(server)
    # Exported bundles carry data.json; an imported bundle's data is loaded.
    blob = client.get(f"/v1/admin/policy/bundles/{newest}/export", headers=auth).content
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        member = tar.extractfile("/data.json")
        assert member is not None
        assert json.loads(member.read())["team"] == {"leads": ["bea"]}
    assert client.delete("/v1/data/team", headers=auth).status_code == 204
    assert get(server, "team") == "<undefined>"
    imported = client.post(
        "/v1/admin/policy/bundles/import",
        content=blob,
        headers={**auth, "Content-Type": "application/gzip"},
    )
    assert imported.status_code == 201, imported.text
    assert get(server, "team/leads") == ["bea"]


def test_viewer_cannot_write_data(server: Server) -> None:
    created = server.client.post(
        "/v1/admin/tokens", json={"name": "v", "role": "viewer"}, headers=server.auth
    ).json()
    viewer = {"Authorization": f"Bearer {created['token']}"}
    assert server.client.put("/v1/data/v", json=1, headers=viewer).status_code == 403
    assert server.client.patch("/v1/data", json=[], headers=viewer).status_code == 403
    assert server.client.delete("/v1/data/mesh", headers=viewer).status_code == 403
    assert "allow" in get(server, "mesh")


def test_405_names_every_method_the_data_api_serves(server: Server) -> None:
    # RFC 9110 §15.5.6: Allow lists the target's methods, not only the first route's.
    refused = server.client.request("OPTIONS", "/v1/data/x", headers=server.auth)
    assert refused.status_code == 405
    assert refused.headers["allow"] == "DELETE, GET, PATCH, POST, PUT"
