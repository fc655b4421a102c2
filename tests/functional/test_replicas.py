"""Two replicas sharing PostgreSQL and Redis: exactly one rotates, both serve the same
bundle, and a change made on one is served by the other within moments."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from pki.clock import FakeClock
from tests.conftest import PostgresDatabase
from tests.functional.conftest import make_settings
from trustd.app import create_app
from trustd.bootstrap import initialise, migrate
from trustd.services.auth import Principal, Role
from trustd.services.container import Services, build_services
from trustd.store.audit import AuditEvent
from trustd.store.ca_keys import CaKey
from trustd.store.leader import LeaderFence

REDIS_URL = "redis://127.0.0.1:6379/0"
pytestmark = pytest.mark.postgres


def _eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


@pytest.fixture
def replicas(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> Iterator[tuple[FakeClock, list[Services], list[TestClient], str]]:
    clock = FakeClock(datetime.now(UTC))
    settings = [
        make_settings(
            tmp_path / name,
            postgres_db.url,
            redis_url=REDIS_URL,
            # Replicas share the key-encryption key, as they share the database.
            key_passphrase="replica shared passphrase 0123456789",
            rotation_interval=timedelta(milliseconds=100),
            bundle_reload_interval=timedelta(seconds=30),
        )
        for name in ("a", "b")
    ]
    for s in settings:
        s.data_dir.mkdir(parents=True)
    migrate(postgres_db.url)
    services = [build_services(s, clock) for s in settings]
    initialise(services[0])
    # The fake clock runs for weeks: a token of the longest lifetime outlives the bootstrap
    # one (every admin token expires).
    longest = settings[0].admin_token_max_ttl
    token = (
        services[0].tokens.create(Principal("test", Role.ADMIN), "test", Role.ADMIN, longest)
    ).secret
    with ExitStack() as stack:
        clients = [
            stack.enter_context(TestClient(create_app(s, svc)))
            for s, svc in zip(settings, services, strict=True)
        ]
        yield clock, services, clients, token
    for svc in services:
        svc.engine.dispose()


def test_one_replica_rotates_and_both_serve_the_same_bundle(
    replicas: tuple[FakeClock, list[Services], list[TestClient], str],
) -> None:
    clock, services, clients, token = replicas

    def bundles() -> list[dict[str, Any]]:
        return [c.get("/v1/bundle").json() for c in clients]

    start = bundles()
    assert start[0] == start[1]
    # Past half the intermediate's and the JWT key's life (30 days): both tickers see the
    # next keys due; only the leader may prepare them.
    clock.advance(timedelta(days=16))
    converged = _eventually(
        lambda: (
            (b := bundles())[0] == b[1]
            and len([k for k in b[0]["keys"] if k["use"] == "jwt-svid"]) == 2
        )
    )
    assert converged, bundles()
    time.sleep(0.5)  # several more ticks on both replicas: nothing may be prepared twice
    with Session(services[0].engine) as session:
        prepared = session.exec(select(CaKey).where(CaKey.status == "prepared")).all()
        audits = session.exec(
            select(AuditEvent).where(AuditEvent.action == "ca:authority:prepared")
        ).all()
        fence = session.get(LeaderFence, "ca-rotation")
    assert sorted(r.kind for r in prepared) == ["jwt", "x509-intermediate"]
    assert len(audits) == 2
    led = sorted(s.rotation.ticks_led for s in services)
    assert led[0] == 0 and led[1] > 0, led
    assert fence is not None and fence.epoch == 1

    # A manual change on one replica is served by the other (bus wake, then reload).
    auth = {"Authorization": f"Bearer {token}"}
    follower = next(i for i, s in enumerate(services) if s.rotation.ticks_led == 0)
    response = clients[1 - follower].post(
        "/v1/admin/ca/activate", json={"kind": "jwt"}, headers=auth
    )
    assert response.status_code == 200, response.text
    sequence = response.json()["bundle_sequence"]
    assert _eventually(lambda: bundles()[follower]["spiffe_sequence"] == sequence, 5.0)
    assert services[follower].ca.state.jwt_signer.kid == response.json()["kid"]
    b = bundles()
    assert b[0] == b[1]
