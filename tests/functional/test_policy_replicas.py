"""Two replicas on one PostgreSQL database and one Redis: an activation on one is applied
by the other without a restart; the decision log never blocks a decision."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.conftest import PostgresDatabase
from tests.functional.conftest import make_settings
from trustd.app import create_app
from trustd.bootstrap import initialise, migrate
from trustd.services.container import Services, build_services

REDIS_URL = "redis://127.0.0.1:6379/0"
MODULE = "package rr\nimport rego.v1\nvalue := data.r.value\n"


@pytest.fixture
def replicas(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> Iterator[tuple[TestClient, TestClient, dict[str, str], Services]]:
    migrate(postgres_db.url)
    built = []
    (tmp_path / "data").mkdir()
    for _ in ("a", "b"):
        # One data directory: both replicas need the same key-encryption key.
        settings = make_settings(
            tmp_path,
            postgres_db.url,
            redis_url=REDIS_URL,
            # Long enough that only the Redis notification can explain a prompt reload.
            policy_reload_interval=600,
        )
        built.append(build_services(settings))
    token = initialise(built[0]).bootstrap_token
    assert token is not None
    with (
        TestClient(create_app(built[0].settings, built[0])) as a,
        TestClient(create_app(built[1].settings, built[1])) as b,
    ):
        yield a, b, {"Authorization": f"Bearer {token}"}, built[1]
    for services in built:
        services.engine.dispose()


def test_activation_reaches_the_other_replica(
    replicas: tuple[TestClient, TestClient, dict[str, str], Services],
) -> None:
    a, b, auth, _ = replicas
    created = a.post(
        "/v1/admin/policy/bundles",
        json={"modules": {"rr.rego": MODULE}, "data": {"r": {"value": 42}}},
        headers=auth,
    ).json()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = b.get("/v1/admin/policy/status", headers=auth).json()
        if status["revision"] == created["revision"]:
            break
        time.sleep(0.05)
    assert b.post("/v1/data/rr/value", json={}, headers=auth).json()["result"] == 42
    # And back again, through a rollback on the other replica.
    b.post("/v1/admin/policy/rollback", headers=auth)
    # The package is gone again: OPA answers its path as an undefined document (no result).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "result" not in a.post("/v1/data/rr/value", json={}, headers=auth).json():
            break
        time.sleep(0.05)
    gone = a.post("/v1/data/rr/value", json={}, headers=auth)
    assert gone.status_code == 200 and "result" not in gone.json()


def test_a_data_write_reaches_the_other_replica(
    replicas: tuple[TestClient, TestClient, dict[str, str], Services],
) -> None:
    a, b, auth, services = replicas
    assert a.put("/v1/policies/rr.rego", content=MODULE, headers=auth).status_code == 200
    written = a.put("/v1/data/r/value", json=7, headers=auth)
    assert written.status_code == 204, written.text
    # Only the Redis notification can make b load it this soon (its reload interval is
    # ten minutes).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if b.post("/v1/data/rr/value", json={}, headers=auth).json().get("result") == 7:
            break
        time.sleep(0.05)
    assert b.post("/v1/data/rr/value", json={}, headers=auth).json()["result"] == 7
    # A patch on b amends the revision a wrote, and reaches a in turn.
    patched = b.patch(
        "/v1/data/r", json=[{"op": "replace", "path": "/value", "value": 8}], headers=auth
    )
    assert patched.status_code == 204, patched.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if a.get("/v1/data/rr/value", headers=auth).json().get("result") == 8:
            break
        time.sleep(0.05)
    assert a.get("/v1/data/r", headers=auth).json()["result"] == {"value": 8}
    assert services.policy.data()["r"] == {"value": 8}


def test_decisions_do_not_wait_for_a_stuck_log(
    replicas: tuple[TestClient, TestClient, dict[str, str], Services],
    postgres_db: PostgresDatabase,
) -> None:
    _, b, auth, services = replicas
    body = {"input": {"source": "spiffe://example.org/x", "destination": "y"}}
    b.post("/v1/data/trustd/mesh/allow", json=body, headers=auth)
    services.policy.decision_log.flush()
    # Another session holds the decision table: the log writer blocks behind its lock.
    dsn = postgres_db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as blocker:
        blocker.execute("LOCK TABLE policy_decisions IN ACCESS EXCLUSIVE MODE")
        queue_size = services.settings.decision_log_queue
        for i in range(queue_size + 600):
            services.policy.decide("trustd/mesh/allow", json.dumps({"n": i}), "test")
        assert services.policy.decision_log.dropped > 0
        blocker.rollback()
    # Every decision was answered while the writer was stuck; the log then recovers.
    services.policy.decision_log.flush()
    dropped = services.policy.decision_log.dropped
    b.post("/v1/data/trustd/mesh/allow", json=body, headers=auth)
    services.policy.decision_log.flush()
    assert services.policy.decision_log.dropped == dropped


def test_a_replica_that_missed_a_write_does_not_undo_it(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> None:
    # b shares the database but hears nothing: no Redis, a ten-minute reload interval.
    migrate(postgres_db.url)
    (tmp_path / "data").mkdir()
    built = [
        build_services(
            make_settings(tmp_path, postgres_db.url, redis_url=url, policy_reload_interval=600)
        )
        for url in (REDIS_URL, None)
    ]
    token = initialise(built[0]).bootstrap_token
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with (
            TestClient(create_app(built[0].settings, built[0])) as a,
            TestClient(create_app(built[1].settings, built[1])) as b,
        ):
            assert a.put("/v1/data/shared/a", json=1, headers=auth).status_code == 204
            assert "shared" not in built[1].policy.data()
            assert b.put("/v1/data/shared/b", json=2, headers=auth).status_code == 204
            # b amended the revision a made, not the one it had loaded.
            assert b.get("/v1/data/shared", headers=auth).json()["result"] == {"a": 1, "b": 2}
            # b announces on its own bus only: a finds the revision on its next check.
            assert built[0].policy.reload_if_changed() is True
            assert a.get("/v1/data/shared", headers=auth).json()["result"] == {"a": 1, "b": 2}
    finally:
        for services in built:
            services.engine.dispose()
