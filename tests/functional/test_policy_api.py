"""The OPA-compatible API and the policy admin API on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlmodel import select

from policy.bundle import Bundle
from tests.functional.conftest import Server
from trustd.app import create_app
from trustd.services.container import build_services
from trustd.services.policy import prune_decisions
from trustd.store.audit import AuditEvent
from trustd.store.db import transaction

ALLOW = "/v1/data/trustd/mesh/allow"
WEB = "spiffe://example.org/ns/web/frontend"
API = "spiffe://example.org/ns/api/orders"


def call(src: str = WEB, dst: str = API, **extra: Any) -> dict[str, Any]:
    return {
        "source": src,
        "destination": dst,
        "port": 8443,
        "protocol": "http",
        "method": "GET",
        "path": "/v1/orders",
        **extra,
    }


def test_decision_answers_like_opa(server: Server) -> None:
    response = server.client.post(ALLOW, json={"input": call()}, headers=server.auth)
    assert response.status_code == 200
    body = response.json()
    assert body["result"] is True
    assert len(body["decision_id"]) == 36
    denied = server.client.post(ALLOW, json={"input": call(WEB, WEB)}, headers=server.auth)
    assert denied.json()["result"] is False
    decision = server.client.post(
        "/v1/data/trustd/mesh/decision?metrics=true&provenance",
        json={"input": call(path="/v1/admin/x")},
        headers=server.auth,
    ).json()
    assert decision["result"] == {
        "allowed": False,
        "reasons": ["denied by rule no-admin-paths-from-web"],
    }
    assert decision["metrics"]["timer_server_handler_ns"] > 0
    assert decision["provenance"]["bundles"]["trustd"]["revision"] == "1"


def test_get_with_input_parameter(server: Server) -> None:
    response = server.client.get(ALLOW, params={"input": json.dumps(call())}, headers=server.auth)
    assert response.json()["result"] is True


def test_undefined_document_has_no_result(server: Server) -> None:
    body = server.client.post(
        "/v1/data/trustd/admin/reason", json={"input": {}}, headers=server.auth
    ).json()
    assert "result" not in body and "decision_id" in body


def test_bad_requests_are_problems(server: Server) -> None:
    # OPA: nothing at a path is an undefined document, 200 without `result`.
    unknown = server.client.post("/v1/data/no/such/rule", json={}, headers=server.auth)
    assert unknown.status_code == 200 and unknown.json() == {}
    not_json = server.client.post(
        ALLOW, content=b"{not json", headers={**server.auth, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    assert not_json.headers["content-type"] == "application/problem+json"
    assert not_json.json()["code"] == "invalid_parameter"
    assert "not JSON" in not_json.json()["detail"]
    assert server.client.post(ALLOW, json={"input": call()}).status_code == 401
    wrong = server.client.post(
        ALLOW, json={"input": call()}, headers={"Authorization": "Bearer trustd.x.y"}
    )
    assert wrong.status_code == 401


def test_batch(server: Server) -> None:
    inputs = {"ok": call(), "no": call(WEB, WEB), "bad-id": call("web", API)}
    response = server.client.post(
        "/v1/batch/data/trustd/mesh/allow", json={"inputs": inputs}, headers=server.auth
    )
    assert response.status_code == 200
    results = {k: v["result"] for k, v in response.json()["responses"].items()}
    assert results == {"ok": True, "no": False, "bad-id": False}
    unknown = server.client.post(
        "/v1/batch/data/nope", json={"inputs": {"a": {}}}, headers=server.auth
    )
    assert unknown.status_code == 404


def test_put_policy_compile_error_keeps_active_revision(server: Server) -> None:
    before = server.client.get("/v1/admin/policy/status", headers=server.auth).json()
    broken = "package extra\nimport rego.v1\nallow if {\n"
    response = server.client.put("/v1/policies/extra.rego", content=broken, headers=server.auth)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("extra.rego:4:1")
    assert response.json()["code"] == "invalid_parameter"
    after = server.client.get("/v1/admin/policy/status", headers=server.auth).json()
    assert after["revision"] == before["revision"]
    assert len(server.client.get("/v1/admin/policy/bundles", headers=server.auth).json()) == 1


def test_put_get_delete_policy(server: Server) -> None:
    source = 'package extra\nimport rego.v1\ngreeting := sprintf("hi %s", [input.name])\n'
    assert (
        server.client.put("/v1/policies/extra.rego", content=source, headers=server.auth).json()
        == {}
    )
    listed = server.client.get("/v1/policies", headers=server.auth).json()["result"]
    assert "extra.rego" in [p["id"] for p in listed]
    got = server.client.get("/v1/policies/extra.rego", headers=server.auth).json()
    assert got["result"]["raw"] == source
    answer = server.client.post(
        "/v1/data/extra/greeting", json={"input": {"name": "ops"}}, headers=server.auth
    ).json()
    assert answer["result"] == "hi ops"
    assert server.client.delete("/v1/policies/extra.rego", headers=server.auth).json() == {}
    gone = server.client.post("/v1/data/extra/greeting", json={}, headers=server.auth)
    # OPA: the removed rule's document is undefined (200 without `result`).
    assert gone.status_code == 200 and "result" not in gone.json()
    with transaction(server.services.engine) as session:
        actions = [e.action for e in session.exec(select(AuditEvent))]
    assert actions.count("policy:revision:activated") == 3


def test_revisions_activate_rollback_diff(server: Server) -> None:
    modules = {"m.rego": "package m\nimport rego.v1\nanswer := data.m.value\n"}
    first = server.client.post(
        "/v1/admin/policy/bundles",
        json={"modules": modules, "data": {"m": {"value": 1}}, "note": "one"},
        headers=server.auth,
    ).json()
    second = server.client.post(
        "/v1/admin/policy/bundles",
        json={"modules": modules, "data": {"m": {"value": 2}}, "activate": False},
        headers=server.auth,
    ).json()
    assert first["active"] and not second["active"]

    def answer() -> Any:
        return server.client.post("/v1/data/m/answer", json={}, headers=server.auth).json()

    assert answer()["result"] == 1
    server.client.post(
        f"/v1/admin/policy/bundles/{second['revision']}/activate", headers=server.auth
    )
    assert answer()["result"] == 2
    rolled = server.client.post("/v1/admin/policy/rollback", headers=server.auth).json()
    assert rolled["revision"] == first["revision"]
    assert answer()["result"] == 1
    changes = server.client.get(
        "/v1/admin/policy/diff",
        params={"from": first["revision"], "to": second["revision"]},
        headers=server.auth,
    ).json()
    assert changes["data"]["changed"] == ["m"]
    missing = server.client.post("/v1/admin/policy/bundles/999/activate", headers=server.auth)
    assert missing.status_code == 404


def test_viewer_reads_but_cannot_change_policies(server: Server) -> None:
    created = server.client.post(
        "/v1/admin/tokens", json={"name": "v", "role": "viewer"}, headers=server.auth
    ).json()
    viewer = {"Authorization": f"Bearer {created['token']}"}
    assert server.client.get("/v1/admin/policy/bundles", headers=viewer).status_code == 200
    refused = server.client.put("/v1/policies/x.rego", content="package x\n", headers=viewer)
    assert refused.status_code == 403
    assert server.client.post("/v1/admin/policy/rollback", headers=viewer).status_code == 403


def test_decision_log_masks_and_queries(server: Server) -> None:
    mask = (
        "package system.log\nimport rego.v1\n"
        'mask contains "/input/token"\n'
        'mask contains {"op": "upsert", "path": "/input/user", "value": "***"} '
        "if input.input.user\n"
    )
    assert server.client.put("/v1/policies/mask.rego", content=mask, headers=server.auth).is_success
    server.client.post(
        ALLOW, json={"input": {**call(), "token": "s3cret", "user": "bob"}}, headers=server.auth
    )
    server.client.post(ALLOW, json={"input": call(WEB, WEB)}, headers=server.auth)
    server.client.post("/v1/data/trustd/admin/reason", json={}, headers=server.auth)
    server.services.policy.decision_log.flush()

    def decisions(**params: Any) -> list[dict[str, Any]]:
        response = server.client.get(
            "/v1/admin/policy/decisions", params=params, headers=server.auth
        )
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()
        return rows

    allowed = decisions(path="trustd/mesh/allow", result="true")
    assert len(allowed) == 1
    assert "token" not in allowed[0]["input"]
    assert allowed[0]["input"]["user"] == "***"
    assert allowed[0]["caller"].startswith("token:")
    assert [d["result"] for d in decisions(result="false")] == [False]
    undefined = decisions(undefined=True)
    assert len(undefined) == 1 and "result" not in undefined[0]
    assert decisions(caller="nobody") == []
    export = server.client.get("/v1/admin/policy/decisions/export", headers=server.auth)
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert len(lines) == 3
    assert "s3cret" not in export.text


@pytest.mark.parametrize(
    "path", ["/v1/admin/policy/decisions", "/v1/admin/policy/decisions/export"]
)
def test_a_decision_log_time_without_a_zone_is_refused(server: Server, path: str) -> None:
    # A naive time cannot be compared with the log's UTC times: a 422 saying so, not a 500.
    response = server.client.get(path, params={"since": "2026-01-01T00:00:00"}, headers=server.auth)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    ok = server.client.get(path, params={"since": "2026-01-01T00:00:00Z"}, headers=server.auth)
    assert ok.status_code == 200, ok.text


def test_decision_log_finds_denials_whatever_the_result_shape(server: Server) -> None:
    # trustd.mesh.decision answers {"allowed": false, "reasons": [...]}, not a bare false.
    server.client.post(
        "/v1/data/trustd/mesh/decision", json={"input": call(WEB, WEB)}, headers=server.auth
    )
    server.client.post("/v1/data/trustd/mesh/decision", json={"input": call()}, headers=server.auth)
    server.services.policy.decision_log.flush()
    rows = server.client.get(
        "/v1/admin/policy/decisions", params={"result": "false"}, headers=server.auth
    ).json()
    assert [r["result"]["allowed"] for r in rows] == [False]
    assert [r["verdict"] for r in rows] == ["deny"]
    allowed = server.client.get(
        "/v1/admin/policy/decisions", params={"result": "true"}, headers=server.auth
    ).json()
    assert [r["result"]["allowed"] for r in allowed] == [True]
    assert [r["verdict"] for r in allowed] == ["allow"]


def test_cache_is_keyed_by_revision(server: Server) -> None:
    policy = server.services.policy
    first = policy.decide("trustd/mesh/allow", json.dumps(call(), sort_keys=True), "t")
    again = policy.decide("trustd/mesh/allow", json.dumps(call(), sort_keys=True), "t")
    assert not first.cached and again.cached
    assert first.decision_id != again.decision_id
    denied_everything = {"modules": policy.modules(), "data": {"mesh": {}}}
    server.client.post("/v1/admin/policy/bundles", json=denied_everything, headers=server.auth)
    after = policy.decide("trustd/mesh/allow", json.dumps(call(), sort_keys=True), "t")
    assert not after.cached and after.result.value is False


def test_health(server: Server) -> None:
    assert server.client.get("/health").json() == {}


def test_signed_bundle_import_and_export(server: Server, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ops.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "sign.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = server.settings.model_copy(
        update={
            "policy_bundle_keys": {"ops": tmp_path / "ops.pem"},
            "policy_bundle_signing_key": tmp_path / "sign.pem",
            "policy_bundle_signing_keyid": "ops",
        }
    )
    services = build_services(settings)
    with TestClient(create_app(settings, services)) as client:
        bundle = Bundle({"s.rego": "package s\nimport rego.v1\nok := true\n"}, {}, "v7")
        gz = {**server.auth, "Content-Type": "application/gzip"}
        unsigned = client.post(
            "/v1/admin/policy/bundles/import", content=bundle.to_targz(), headers=gz
        )
        assert unsigned.status_code == 400
        assert unsigned.json()["title"] == "Bundle signature rejected"
        forged = bundle.to_targz(ec.generate_private_key(ec.SECP256R1()), keyid="ops")
        assert (
            client.post("/v1/admin/policy/bundles/import", content=forged, headers=gz).status_code
            == 400
        )
        before = client.get("/v1/admin/policy/status", headers=server.auth).json()["revision"]
        assert before == 1
        signed = client.post(
            "/v1/admin/policy/bundles/import",
            content=bundle.to_targz(key, keyid="ops"),
            headers=gz,
        )
        assert signed.status_code == 201, signed.text
        row = signed.json()
        assert row["signed"] and row["active"] and row["label"] == "v7"
        assert client.post("/v1/data/s/ok", json={}, headers=server.auth).json()["result"]
        exported = client.get(
            f"/v1/admin/policy/bundles/{row['revision']}/export", headers=server.auth
        )
        again = Bundle.from_targz(exported.content, {"ops": key.public_key()})
        assert again.modules == bundle.modules and again.revision == "v7"
    services.engine.dispose()


def test_retention_prunes_by_age_and_count(server: Server) -> None:
    policy = server.services.policy
    for port in range(5):
        policy.decide("trustd/mesh/allow", json.dumps(call(port=port), sort_keys=True), "t")
    policy.decision_log.flush()
    engine = server.services.engine
    now = server.services.clock.now()
    assert prune_decisions(engine, now - timedelta(days=1), 3) == 2
    assert len(policy.query_decisions()) == 3
    assert prune_decisions(engine, now + timedelta(seconds=1), 100) == 3
    assert policy.query_decisions() == []


def test_strict_builtin_errors(server: Server) -> None:
    source = "package strict\nimport rego.v1\nnumber := to_number(input.text)\n"
    assert server.client.put("/v1/policies/strict.rego", content=source, headers=server.auth)
    body = {"input": {"text": "not a number"}}
    # OPA's default: a failing builtin leaves its expression undefined.
    lenient = server.client.post("/v1/data/strict/number", json=body, headers=server.auth)
    assert lenient.status_code == 200 and "result" not in lenient.json()
    strict = server.client.post(
        "/v1/data/strict/number?strict-builtin-errors=true", json=body, headers=server.auth
    )
    assert strict.status_code == 500
    assert strict.json()["code"] == "eval_builtin_error"
    fine = server.client.post(
        "/v1/data/strict/number?strict-builtin-errors=true",
        json={"input": {"text": "42"}},
        headers=server.auth,
    )
    assert fine.json()["result"] == 42


def test_ad_hoc_query(server: Server) -> None:
    source = 'package adhoc\nimport rego.v1\ngreeting := sprintf("hi %s", [input.name])\n'
    assert server.client.put("/v1/policies/adhoc.rego", content=source, headers=server.auth)
    answer = server.client.post(
        "/v1/query",
        json={"query": "x := data.adhoc.greeting", "input": {"name": "ops"}},
        headers=server.auth,
    )
    assert answer.status_code == 200 and answer.json() == {"result": [{"x": "hi ops"}]}
    # OPA's Query API omits the result of a query that does not hold.
    assert (
        server.client.post("/v1/query", json={"query": "1 == 2"}, headers=server.auth).json() == {}
    )
    missing = server.client.post("/v1/query", json={"input": {}}, headers=server.auth)
    assert missing.status_code == 400
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_ad_hoc_query_that_does_not_parse_is_refused_as_opa_refuses_it(server: Server) -> None:
    # OPA's server.go (v1QueryPost): 400, `invalid_parameter`, "error(s) occurred while
    # parsing query", the parse error in `errors[]`.
    for query in ("x := ", 'x := "a', "true\n2 +", "", "  \n "):
        broken = server.client.post("/v1/query", json={"query": query}, headers=server.auth)
        assert broken.status_code == 400, query
        body = broken.json()
        assert body["code"] == "invalid_parameter"
        assert body["message"].startswith("error(s) occurred while parsing query: <query>:")
        assert "result" not in body
        [problem] = body["errors"]
        assert problem["code"] == "rego_parse_error" and problem["message"]
        assert problem["location"]["file"] == "<query>"
        # The place is in the query's own lines.
        assert 1 <= problem["location"]["row"] <= query.count("\n") + 1
    # The same from the GET form, `?q=`.
    for q in ("x := ", ""):
        got = server.client.get("/v1/query", params={"q": q}, headers=server.auth)
        assert got.status_code == 400 and got.json()["errors"][0]["code"] == "rego_parse_error"
    # A query that parses but does not compile: OPA's compile message, the engine's code.
    unknown = server.client.post("/v1/query", json={"query": "x := nope(1)"}, headers=server.auth)
    assert unknown.status_code == 400
    assert unknown.json()["message"].startswith("error(s) occurred while compiling query")
    assert unknown.json()["errors"][0]["code"].startswith("rego_")
    # An evaluation that fails is still OPA's 500 with its code.
    failed = server.client.post("/v1/query", json={"query": "x := 1 / 0"}, headers=server.auth)
    assert failed.status_code == 500 and failed.json()["code"] == "eval_builtin_error"
    # And a good GET query answers like the POST one.
    fine = server.client.get("/v1/query", params={"q": "x := 1 + 1"}, headers=server.auth)
    assert fine.status_code == 200 and fine.json() == {"result": [{"x": 2}]}
    # The Query API needs the policy API's credentials.
    assert server.client.get("/v1/query", params={"q": "true"}).status_code == 401


MAIN = """package system
import rego.v1

main := {"hello": input.name} if input.name
"""


def test_default_decision_answers_the_bare_value(server: Server) -> None:
    # OPA REST API "Execute a Simple Query": `POST /` evaluates data.system.main with the
    # body as the input and answers its bare value; 404 undefined_document when undefined.
    undefined = server.client.post("/", json={"name": "ops"}, headers=server.auth)
    assert undefined.status_code == 404
    assert undefined.headers["content-type"].startswith("application/problem+json")
    assert undefined.json()["code"] == "undefined_document"
    assert undefined.json()["message"] == "document undefined: data.system.main"
    assert server.client.put("/v1/policies/main.rego", content=MAIN, headers=server.auth)
    answer = server.client.post("/", json={"name": "ops"}, headers=server.auth)
    assert answer.status_code == 200 and answer.json() == {"hello": "ops"}
    # No body: the input is undefined, and so is the rule.
    assert server.client.post("/", headers=server.auth).status_code == 404
    assert server.client.post("/", json={}, headers=server.auth).status_code == 404
    not_json = server.client.post(
        "/", content=b"{not json", headers={**server.auth, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    # Who may ask is the policy API's setting, as for /v1/data.
    assert server.client.post("/", json={"name": "ops"}).status_code == 401


def test_default_decision_path_is_a_setting(server_factory: Any) -> None:
    server = server_factory(policy_default_decision="/trustd/mesh/allow")
    allowed = server.client.post("/", json=call(), headers=server.auth)
    assert allowed.status_code == 200 and allowed.json() is True
    assert server.client.post("/", json=call(WEB, WEB), headers=server.auth).json() is False
