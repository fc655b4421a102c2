"""Hostile wire input gets a 4xx problem document and changes nothing: oversized and
mistyped integers, path-escaping policy ids, deeply nested JSON, malformed JWT audiences and
reserved SPIFFE IDs (each reproduced against the real app on both backends)."""

from __future__ import annotations

import asyncio
import io
import json
import posixpath
import tarfile
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from sqlmodel import Session, func, select
from structlog.testing import capture_logs

from tests.functional.conftest import Server, ServerFactory
from trustd.api.deps import Exemption, exempt
from trustd.api.wire import MAX_JSON_DEPTH
from trustd.store.acme import AcmeEabKey
from trustd.store.audit import AuditEvent
from trustd.store.certificates import IssuedCertificate
from trustd.store.entries import RegistrationEntry
from trustd.store.tokens import AdminToken


@pytest.fixture
def backend() -> str:
    # Wire input is refused before anything reaches storage, the same on either backend;
    # the stores themselves are tested on both elsewhere. One backend keeps make test short.
    return "sqlite"


HUGE = 2**63
PROBLEM = "application/problem+json"


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _count(server: Server, model: Any) -> int:
    with Session(server.services.engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


# -- integers: bounded, and JSON numbers only -------------------------------------------


@pytest.mark.parametrize("ttl", [HUGE, 10**30, True, "3600", 3600.5, 0, -1])
def test_svid_ttl_out_of_range_or_mistyped_is_refused(server: Server, ttl: Any) -> None:
    before = _count(server, IssuedCertificate)
    x509_svid = server.client.post(
        "/v1/svid/x509",
        json={"spiffe_id": "spiffe://example.org/w", "csr": _csr(), "ttl": ttl},
        headers=server.auth,
    )
    jwt_svid = server.client.post(
        "/v1/svid/jwt",
        json={"spiffe_id": "spiffe://example.org/w", "audience": ["a"], "ttl": ttl},
        headers=server.auth,
    )
    for response in (x509_svid, jwt_svid):
        assert _problem(response, 422)["type"] == "urn:trustd:problem:invalid-request"
    assert _count(server, IssuedCertificate) == before


@pytest.mark.parametrize("ttl", [HUGE, True, "3600"])
def test_token_and_eab_ttl_out_of_range_or_mistyped_is_refused(server: Server, ttl: Any) -> None:
    before = _count(server, AdminToken)
    token = server.client.post(
        "/v1/admin/tokens", json={"name": "t", "ttl": ttl}, headers=server.auth
    )
    eab = server.client.post(
        "/v1/admin/acme/eab-keys", json={"label": "k", "ttl": ttl}, headers=server.auth
    )
    _problem(token, 422)
    _problem(eab, 422)
    assert _count(server, AdminToken) == before
    assert _count(server, AcmeEabKey) == 0


def test_flags_are_json_booleans(server: Server) -> None:
    response = server.client.post(
        "/v1/admin/policy/bundles",
        json={"modules": {}, "activate": "yes"},
        headers=server.auth,
    )
    _problem(response, 422)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/admin/policy/bundles/{HUGE}"),
        ("GET", f"/v1/admin/policy/bundles/{HUGE}/export"),
        ("POST", f"/v1/admin/policy/bundles/{HUGE}/activate"),
        ("GET", f"/v1/admin/policy/diff?from=1&to={HUGE}"),
        ("GET", f"/v1/admin/policy/diff?from={HUGE}&to=1"),
        ("GET", f"/v1/entries?offset={HUGE}"),
        ("GET", f"/v1/admin/revocations?since={HUGE}"),
    ],
)
def test_huge_revisions_and_offsets_are_refused(server: Server, method: str, path: str) -> None:
    active = server.client.get("/v1/admin/policy/status", headers=server.auth).json()
    _problem(server.client.request(method, path, headers=server.auth), 422)
    assert server.client.get("/v1/admin/policy/status", headers=server.auth).json() == active


# -- an unexpected error is answered once and logged once -------------------------------


def test_an_unhandled_error_is_logged_once_and_not_raised_to_the_server(server: Server) -> None:
    app = server.client.app
    assert isinstance(app, FastAPI)

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/test-boom", boom, dependencies=[exempt(Exemption.PUBLIC)])
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/test-boom",
        "raw_path": b"/v1/test-boom",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }
    with capture_logs() as logs:
        # Nothing reaches the server (which would log it again as "Exception in ASGI
        # application").
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    errors = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert [e["event"] for e in errors] == ["unhandled_error"]
    assert messages[0]["status"] == 500
    body = json.loads(messages[1]["body"])
    assert body["status"] == 500 and "a bug" not in messages[1]["body"].decode()


# -- policy ids are safe relative paths ---------------------------------------------------


@pytest.mark.parametrize(
    "module_id",
    [
        "..%2F..%2Fetc%2Fpwn",
        "../../etc/pwn",
        "a/../../b.rego",
        "%2Fetc%2Fpasswd",
        ".manifest",
        "data.json",
        "a//b.rego",
        "a%00b.rego",
        "x" * 257,
    ],
)
def test_a_path_escaping_policy_id_is_refused_everywhere(server: Server, module_id: str) -> None:
    status = server.client.get("/v1/admin/policy/status", headers=server.auth).json()
    put = server.client.put(
        f"/v1/policies/{module_id}", content=b"package pwn\n", headers=server.auth
    )
    if "/../" in f"/{module_id}":
        # The HTTP client resolves literal `..` segments before sending (RFC 3986 §5.2.4);
        # the encoded form above is what reaches the server.
        assert put.status_code == 404, put.text
    else:
        assert put.status_code == 400, put.text
        assert put.json()["code"] == "invalid_parameter"
    created = server.client.post(
        "/v1/admin/policy/bundles",
        json={"modules": {module_id.replace("%2F", "/"): "package pwn\n"}},
        headers=server.auth,
    )
    assert _problem(created, 400)["type"] == "urn:trustd:problem:invalid-module-id"
    assert server.client.get("/v1/admin/policy/status", headers=server.auth).json() == status
    exported = server.client.get(
        f"/v1/admin/policy/bundles/{status['revision']}/export", headers=server.auth
    )
    with tarfile.open(fileobj=io.BytesIO(exported.content), mode="r:gz") as tar:
        names = tar.getnames()
    assert all(posixpath.normpath(n) == n and ".." not in n for n in names)
    assert not any("pwn" in n for n in names)


def test_an_imported_bundle_with_an_unsafe_module_name_stores_nothing(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(policy_bundle_require_signature=False)
    status = server.client.get("/v1/admin/policy/status", headers=server.auth).json()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        content = b"package pwn\n"
        info = tarfile.TarInfo("/.hidden/x.rego")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    response = server.client.post(
        "/v1/admin/policy/bundles/import?activate=true",
        content=buffer.getvalue(),
        headers={**server.auth, "Content-Type": "application/gzip"},
    )
    assert _problem(response, 400)["type"] == "urn:trustd:problem:invalid-module-id"
    assert server.client.get("/v1/admin/policy/status", headers=server.auth).json() == status


# -- JSON nesting is bounded before any handler parses it ---------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/data/mesh/allow", b'{"input": ' + DEEP + b"}"),
        ("POST", "/v1/data", DEEP),
        ("POST", "/v1/query", b'{"query": "x = input", "input": ' + DEEP + b"}"),
        ("POST", "/v1/batch/data/mesh/allow", b'{"inputs": {"a": ' + DEEP + b"}}"),
        ("PUT", "/v1/data/x", DEEP),
        ("PATCH", "/v1/data/x", DEEP),
    ],
)
def test_deep_json_on_the_opa_api_is_an_opa_error(
    server: Server, method: str, path: str, body: bytes
) -> None:
    revision = server.client.get("/v1/admin/policy/status", headers=server.auth).json()
    response = server.client.request(
        method, path, content=body, headers={**server.auth, "Content-Type": "application/json"}
    )
    problem = _problem(response, 400)
    assert problem["code"] == "invalid_parameter"
    assert "deeper than" in problem["message"]
    assert server.client.get("/v1/admin/policy/status", headers=server.auth).json() == revision


def test_deep_json_in_a_query_parameter_is_refused(server: Server) -> None:
    response = server.client.get(
        "/v1/data/mesh/allow", params={"input": "[" * 2_000}, headers=server.auth
    )
    assert _problem(response, 400)["code"] == "invalid_parameter"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_deep_json_elsewhere_is_a_problem_document(
    server: Server, content_type: str | None
) -> None:
    before = _count(server, IssuedCertificate)
    headers = dict(server.auth)
    if content_type:
        headers["Content-Type"] = content_type
    body = b'{"spiffe_id": "spiffe://example.org/w", "csr": "", "dns_names": ' + DEEP + b"}"
    response = server.client.post("/v1/svid/x509", content=body, headers=headers)
    problem = _problem(response, 400)
    assert problem["type"] == "urn:trustd:problem:invalid-request"
    assert "code" not in problem
    assert _count(server, IssuedCertificate) == before


def test_nesting_within_the_bound_is_evaluated(server: Server) -> None:
    # The body, `input` and `a` are three levels: the deepest document accepted.
    depth = MAX_JSON_DEPTH - 2
    nested = "[" * depth + "]" * depth
    response = server.client.post(
        "/v1/data/mesh/allow",
        content=f'{{"input": {{"a": {nested}, "s": "{"[" * 1000}"}}}}'.encode(),
        headers=server.auth,
    )
    assert response.status_code == 200, response.text
    assert "decision_id" in response.json()


def test_one_level_past_the_bound_is_refused(server: Server) -> None:
    depth = MAX_JSON_DEPTH - 1
    nested = "[" * depth + "]" * depth
    response = server.client.post(
        "/v1/data/mesh/allow", content=f'{{"input": {{"a": {nested}}}}}', headers=server.auth
    )
    assert _problem(response, 400)["code"] == "invalid_parameter"


# -- JWT audiences and reserved identities ------------------------------------------------


@pytest.mark.parametrize(
    "audience",
    [
        ["a", "a"],
        ["a\x00b"],
        ["a\nb"],
        ["\x1b[31mred"],
        ["pay\u202eexe.lmth"],
        ["a\u2066b"],
        ["   "],
        ["\t"],
        [""],
        ["x" * 2049],
    ],
)
def test_a_malformed_jwt_audience_is_refused(server: Server, audience: list[str]) -> None:
    before = _count(server, AuditEvent)
    response = server.client.post(
        "/v1/svid/jwt",
        json={"spiffe_id": "spiffe://example.org/w", "audience": audience},
        headers=server.auth,
    )
    assert _problem(response, 400)["type"] == "urn:trustd:problem:invalid-jwt"
    assert _count(server, AuditEvent) == before


def test_distinct_printable_audiences_are_minted(server: Server) -> None:
    response = server.client.post(
        "/v1/svid/jwt",
        json={"spiffe_id": "spiffe://example.org/w", "audience": ["a b", "ünïcode", "https://x"]},
        headers=server.auth,
    )
    assert response.status_code == 201, response.text
    assert response.json()["audience"] == ["a b", "ünïcode", "https://x"]


RESERVED = [
    "spiffe://example.org/trustd/server",
    "spiffe://example.org/trustd/agent",
    "spiffe://example.org/trustd/agent/join_token/abc",
]


@pytest.mark.parametrize("spiffe_id", RESERVED)
def test_reserved_identities_are_not_issued_or_registered(server: Server, spiffe_id: str) -> None:
    certificates, entries = _count(server, IssuedCertificate), _count(server, RegistrationEntry)
    x509_svid = server.client.post(
        "/v1/svid/x509", json={"spiffe_id": spiffe_id, "csr": _csr()}, headers=server.auth
    )
    jwt_svid = server.client.post(
        "/v1/svid/jwt", json={"spiffe_id": spiffe_id, "audience": ["a"]}, headers=server.auth
    )
    entry = server.client.post(
        "/v1/entries",
        json={
            "spiffe_id": spiffe_id,
            "parent_id": "spiffe://example.org/trustd/agent/join_token/n",
            "selectors": ["unix:uid:0"],
        },
        headers=server.auth,
    )
    for response in (x509_svid, jwt_svid, entry):
        assert _problem(response, 400)["type"] == "urn:trustd:problem:reserved-spiffe-id"
    assert _count(server, IssuedCertificate) == certificates
    assert _count(server, RegistrationEntry) == entries


def test_an_entry_cannot_be_renamed_to_a_reserved_identity(server: Server) -> None:
    created = server.client.post(
        "/v1/entries",
        json={
            "spiffe_id": "spiffe://example.org/w",
            "parent_id": "spiffe://example.org/trustd/agent/join_token/n",
            "selectors": ["unix:uid:0"],
        },
        headers=server.auth,
    )
    assert created.status_code == 201, created.text
    entry = created.json()
    response = server.client.patch(
        f"/v1/entries/{entry['id']}",
        json={"spiffe_id": RESERVED[0]},
        headers=server.auth,
    )
    assert _problem(response, 400)["type"] == "urn:trustd:problem:reserved-spiffe-id"
    again = server.client.get(f"/v1/entries/{entry['id']}", headers=server.auth).json()
    assert again["spiffe_id"] == "spiffe://example.org/w"
