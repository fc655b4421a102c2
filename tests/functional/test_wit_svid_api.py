"""WIT-SVIDs (experimental, TRUSTD_WIT_SVID) through HTTP, on SQLite and PostgreSQL: the
admin and agent endpoints, the bundle's wit-svid keys and their rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, func, select

from pki.bundle import USE_JWT_SVID, USE_WIT_SVID, TrustBundle
from pki.clock import FakeClock, SystemClock
from pki.errors import InvalidWit
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import TrustDomain
from pki.wit_svid import validate_wit_svid, workload_jwk
from tests.functional.conftest import Server, ServerFactory, make_settings
from tests.functional.test_nodes_entries import attest, entry, join_token, node_headers
from trustd.bootstrap import initialise, migrate
from trustd.services.container import build_services
from trustd.store.audit import AuditEvent
from trustd.store.ca_keys import CaKey

TD = TrustDomain.parse("example.org")
WEB = "spiffe://example.org/web"


def _issued(server: Server) -> list[AuditEvent]:
    with Session(server.services.engine) as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.action == "svid:wit:issued")))


def _bundle(server: Server) -> tuple[TrustBundle, list[dict[str, Any]]]:
    document = server.client.get("/v1/bundle").json()
    return TrustBundle.from_jwks(document, TD), document["keys"]


def _problem(response: Any, status: int, type_suffix: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"urn:trustd:problem:{type_suffix}"
    return str(body["detail"])


def test_off_by_default_nothing_is_minted_or_published(server: Server) -> None:
    jwk = workload_jwk(generate_private_key(KeyType.EC_P256).public_key())
    refused = server.client.post(
        "/v1/svid/wit", json={"spiffe_id": WEB, "jwk": jwk}, headers=server.auth
    )
    assert "TRUSTD_WIT_SVID" in _problem(refused, 404, "feature-disabled")
    node, _ = attest(server, join_token(server)["token"])
    web = entry(server, WEB, str(node.spiffe_id), "unix:uid:1000").json()
    agent = server.client.post(
        "/v1/agents/wit",
        json={"entry_id": web["id"], "jwk": jwk},
        headers=node_headers(server, node),
    )
    _problem(agent, 404, "feature-disabled")
    _, keys = _bundle(server)
    assert USE_WIT_SVID not in {k["use"] for k in keys}
    with Session(server.services.engine) as session:
        kinds = session.exec(select(CaKey.kind)).all()
    assert "wit" not in kinds
    # Nor can one be prepared by hand.
    prepared = server.client.post("/v1/admin/ca/prepare", json={"kind": "wit"}, headers=server.auth)
    _problem(prepared, 409, "conflict")
    assert _issued(server) == []


def test_admin_mints_a_wit_svid_bound_to_the_given_key(server_factory: ServerFactory) -> None:
    server = server_factory(wit_svid=True)
    bundle, keys = _bundle(server)
    # WIT-SVID §6.1: its own key, with its own kid, never one of a jwt-svid key.
    wit_kids = {k["kid"] for k in keys if k["use"] == USE_WIT_SVID}
    jwt_kids = {k["kid"] for k in keys if k["use"] == USE_JWT_SVID}
    assert len(wit_kids) == 1 and jwt_kids and not wit_kids & jwt_kids

    workload = generate_private_key(KeyType.EC_P256)
    response = server.client.post(
        "/v1/svid/wit",
        json={"spiffe_id": WEB, "jwk": workload_jwk(workload.public_key()), "ttl": 600},
        headers=server.auth,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kid"] in wit_kids
    clock = SystemClock()
    svid = validate_wit_svid(
        body["token"], bundle.wit_authorities, clock, TD, presented_key=workload.public_key()
    )
    assert str(svid.spiffe_id) == WEB and svid.jti == body["jti"]
    # A token bound to one key is refused with another.
    other = generate_private_key(KeyType.EC_P256).public_key()
    with pytest.raises(InvalidWit, match="another key"):
        validate_wit_svid(body["token"], bundle.wit_authorities, clock, TD, presented_key=other)
    # The JWT-SVID keys do not validate it (WIT-SVID §6.2).
    with pytest.raises(InvalidWit, match="not a known"):
        validate_wit_svid(body["token"], bundle.jwt_authorities, clock, TD)

    (audit,) = _issued(server)
    assert audit.target == WEB
    assert audit.details["jti"] == body["jti"] and audit.details["kid"] == body["kid"]
    assert body["token"] not in str(audit.details)


def test_refused_requests_record_nothing(server_factory: ServerFactory) -> None:
    server = server_factory(wit_svid=True)
    good = workload_jwk(generate_private_key(KeyType.EC_P256).public_key())
    for body, status in [
        ({"spiffe_id": WEB, "jwk": {**good, "alg": "HS256"}}, 400),
        ({"spiffe_id": WEB, "jwk": {**good, "d": "AAAA"}}, 400),
        (
            {"spiffe_id": WEB, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "x", "alg": "EdDSA"}},
            400,
        ),
        ({"spiffe_id": WEB, "jwk": {k: v for k, v in good.items() if k != "alg"}}, 400),
        ({"spiffe_id": "spiffe://elsewhere.org/web", "jwk": good}, 400),
        ({"spiffe_id": "spiffe://example.org/trustd/server", "jwk": good}, 400),
        ({"spiffe_id": WEB, "jwk": good, "ttl": 10**6}, 400),
        ({"spiffe_id": WEB}, 422),
    ]:
        response = server.client.post("/v1/svid/wit", json=body, headers=server.auth)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert _issued(server) == []
    unauthenticated = server.client.post("/v1/svid/wit", json={"spiffe_id": WEB, "jwk": good})
    assert unauthenticated.status_code == 401
    assert _issued(server) == []


def test_an_agent_gets_wit_svids_for_its_own_entries_only(server_factory: ServerFactory) -> None:
    server = server_factory(wit_svid=True)
    node_a, _ = attest(server, join_token(server)["token"])
    node_b, _ = attest(server, join_token(server)["token"])
    web = entry(server, WEB, str(node_a.spiffe_id), "unix:uid:1000").json()
    db = entry(server, "spiffe://example.org/db", str(node_b.spiffe_id), "unix:uid:1").json()
    headers = node_headers(server, node_a)
    workload = generate_private_key(KeyType.EC_P256)
    jwk = workload_jwk(workload.public_key())

    minted = server.client.post(
        "/v1/agents/wit", json={"entry_id": web["id"], "jwk": jwk}, headers=headers
    )
    assert minted.status_code == 200, minted.text
    bundle, _ = _bundle(server)
    svid = validate_wit_svid(
        minted.json()["token"],
        bundle.wit_authorities,
        SystemClock(),
        TD,
        presented_key=workload.public_key(),
    )
    assert str(svid.spiffe_id) == WEB
    (audit,) = _issued(server)
    assert audit.actor == str(node_a.spiffe_id)
    assert audit.details["entry_id"] == web["id"]

    foreign = server.client.post(
        "/v1/agents/wit", json={"entry_id": db["id"], "jwk": jwk}, headers=headers
    )
    _problem(foreign, 403, "permission-denied")
    assert len(_issued(server)) == 1


def test_the_wit_key_rotates_on_its_own(server_factory: ServerFactory) -> None:
    server = server_factory(wit_svid=True)
    _, keys = _bundle(server)
    jwt_before = {k["kid"] for k in keys if k["use"] == USE_JWT_SVID}
    (old_kid,) = {k["kid"] for k in keys if k["use"] == USE_WIT_SVID}

    prepared = server.client.post("/v1/admin/ca/prepare", json={"kind": "wit"}, headers=server.auth)
    assert prepared.status_code == 200, prepared.text
    new_kid = prepared.json()["kid"]
    _, keys = _bundle(server)
    # Prepared keys are published before they sign (pki.rotation).
    assert {k["kid"] for k in keys if k["use"] == USE_WIT_SVID} == {old_kid, new_kid}
    assert {k["kid"] for k in keys if k["use"] == USE_JWT_SVID} == jwt_before

    activated = server.client.post(
        "/v1/admin/ca/activate", json={"kind": "wit"}, headers=server.auth
    )
    assert activated.status_code == 200, activated.text
    jwk = workload_jwk(generate_private_key(KeyType.EC_P256).public_key())
    minted = server.client.post(
        "/v1/svid/wit", json={"spiffe_id": WEB, "jwk": jwk}, headers=server.auth
    ).json()
    assert minted["kid"] == new_kid
    with Session(server.services.engine) as session:
        statuses = dict(
            session.exec(select(CaKey.kid, CaKey.status).where(CaKey.kind == "wit")).all()
        )
        assert session.exec(select(func.count()).select_from(CaKey)).one() == 5
    assert statuses == {old_kid: "old", new_kid: "active"}


def test_the_ticker_rotates_the_wit_key_without_a_gap(tmp_path: Path, database_url: str) -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    settings = make_settings(
        tmp_path,
        database_url,
        wit_svid=True,
        jwt_key_ttl=timedelta(hours=1),
        wit_svid_ttl=timedelta(minutes=10),
        wit_svid_max_ttl=timedelta(minutes=10),
        bundle_refresh_hint=timedelta(minutes=10),
        bundle_reload_interval=timedelta(minutes=5),
    )
    settings.data_dir.mkdir(parents=True)
    migrate(database_url)
    services = build_services(settings, clock)
    initialise(services)
    services.ca.load()
    workload = generate_private_key(KeyType.EC_P256)
    tokens: list[str] = []
    for step in range(36):  # three key lifetimes in five-minute steps
        clock.advance(timedelta(minutes=5))
        services.rotation.tick()
        tokens.append(
            services.issuer.mint_wit_svid("test", f"{WEB}/{step}", workload.public_key()).token
        )
        bundle = TrustBundle.from_jwks(services.ca.state.bundle.to_json().encode(), TD)
        # WIT-SVID §6.1: at every step, no kid names both a JWT-SVID and a WIT-SVID key.
        assert not set(bundle.wit_authorities) & set(bundle.jwt_authorities)
        # The last two cover every unexpired WIT-SVID (10 minutes, 5-minute steps).
        for token in tokens[-2:]:
            validate_wit_svid(
                token, bundle.wit_authorities, clock, TD, presented_key=workload.public_key()
            )
    with Session(services.engine) as session:
        wit_rows = session.exec(select(CaKey).where(CaKey.kind == "wit")).all()
        activated = session.exec(
            select(AuditEvent.target).where(AuditEvent.action == "ca:authority:active")
        ).all()
    activations = len(set(activated) & {r.kid for r in wit_rows})
    assert activations >= 2
    assert "retired" in {r.status for r in wit_rows}
    services.engine.dispose()


def test_wit_svids_turned_on_later_get_their_key_and_off_again_leave_the_bundle(
    tmp_path: Path, database_url: str
) -> None:
    off = make_settings(tmp_path, database_url)
    off.data_dir.mkdir(parents=True)
    migrate(database_url)
    first = build_services(off)
    initialise(first)
    assert first.ca.load().bundle.wit_authorities == {}
    first.engine.dispose()

    on = build_services(make_settings(tmp_path, database_url, wit_svid=True))
    assert on.ca.initialise() is True  # the WIT-SVID key, alone
    state = on.ca.load()
    assert state.wit_signer is not None
    assert set(state.bundle.wit_authorities) == {state.wit_signer.kid}
    assert state.wit_signer.kid not in state.bundle.jwt_authorities
    on.engine.dispose()

    again = build_services(off)
    state = again.ca.load()
    # Off: the key is kept (turning the feature on again reuses it) but not published.
    assert state.wit_signer is None and state.bundle.wit_authorities == {}
    again.engine.dispose()
