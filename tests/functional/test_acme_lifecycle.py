"""The RFC 8555 §7.1.6 state machines as a client sees them: expiry, deactivation (by the
client and by an operator) and pruning, each change through the transition table and each
refusal an RFC 8555 problem that changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import func, select

from pki.clock import FakeClock
from tests.functional.acme_client import AcmeEnv, acme_env, csr_b64, problem
from trustd.store import acme as store
from trustd.store.audit import AuditEvent
from trustd.store.db import transaction


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def env(tmp_path: Path, database_url: str, clock: FakeClock) -> Iterator[AcmeEnv]:
    with acme_env(tmp_path, database_url, clock) as environment:
        environment.dns.add("svc.example.org", "A", "127.0.0.1")
        assert environment.new_account().status_code == 201
        yield environment


def _audits(env: AcmeEnv, action: str) -> int:
    with transaction(env.services.engine) as session:
        query = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
        return int(session.exec(query).one())


def test_an_expired_order_is_invalid_and_its_authorizations_expired(
    env: AcmeEnv, clock: FakeClock
) -> None:
    created = env.new_order("svc.example.org")
    assert created.status_code == 201
    order_url = created.headers["Location"]
    authz_url = created.json()["authorizations"][0]
    challenge_url = env.post(authz_url, None).json()["challenges"][0]["url"]

    clock.advance(env.settings.acme_order_lifetime + timedelta(seconds=1))
    order = env.post(order_url, None).json()
    # §7.1.6: pending -> invalid, with the reason in `error`.
    assert order["status"] == "invalid"
    assert order["error"]["type"] == "urn:ietf:params:acme:error:malformed"
    assert "expired" in order["error"]["detail"]
    assert env.post(authz_url, None).json()["status"] == "expired"
    # Final states refuse what would move them on, with the RFC 8555 types of before.
    problem(env.post(challenge_url, {}), "malformed", 400)
    assert env.post(challenge_url, None).json()["status"] == "pending"
    problem(env.post(authz_url, {"status": "deactivated"}), "malformed", 400)
    finalize = order["finalize"]
    problem(env.post(finalize, {"csr": "AAAA"}), "orderNotReady", 403)
    assert env.post(order_url, None).json()["status"] == "invalid"


def test_an_expiry_seen_first_through_the_challenge_applies_to_the_authorization(
    env: AcmeEnv, clock: FakeClock
) -> None:
    created = env.new_order("svc.example.org").json()
    authz_url = created["authorizations"][0]
    challenge_url = env.post(authz_url, None).json()["challenges"][0]["url"]
    clock.advance(env.settings.acme_order_lifetime + timedelta(seconds=1))
    # The challenge request expires the order; its authorization is no longer pending.
    document = problem(env.post(challenge_url, {}), "malformed", 400)
    assert "expired" in document["detail"]
    assert env.post(authz_url, None).json()["status"] == "expired"


def test_client_deactivation_ends_the_account_and_its_pending_authorizations(
    env: AcmeEnv,
) -> None:
    created = env.new_order("svc.example.org")
    authz_id = created.json()["authorizations"][0].rsplit("/", 1)[1]
    assert env.signer.kid is not None
    account = env.post(env.signer.kid, {"status": "deactivated"})
    assert account.status_code == 200, account.text
    assert account.json()["status"] == "deactivated"
    # §7.3.6: the server refuses the account's requests from now on ...
    problem(env.new_order("svc.example.org"), "unauthorized", 403)
    problem(env.post(env.signer.kid, None), "unauthorized", 403)
    # ... and its pending authorizations are deactivated (valid -> deactivated, §7.1.6).
    with transaction(env.services.engine) as session:
        authz = store.fetch_authorization(session, authz_id)
    assert authz is not None and authz.status == "deactivated"
    assert _audits(env, "acme:account:deactivated") == 1


def test_operator_deactivation_is_idempotent(env: AcmeEnv) -> None:
    accounts = env.client.get("/v1/admin/acme/accounts", headers=env.admin).json()
    (account,) = accounts
    url = f"/v1/admin/acme/accounts/{account['id']}/deactivate"
    first = env.client.post(url, headers=env.admin)
    assert first.status_code == 200 and first.json()["status"] == "deactivated"
    # deactivated is final (§7.1.6): a second request changes and audits nothing.
    again = env.client.post(url, headers=env.admin)
    assert again.status_code == 200 and again.json() == first.json()
    assert _audits(env, "acme:account:deactivated") == 1
    problem(env.new_order("svc.example.org"), "unauthorized", 403)
    missing = env.client.post("/v1/admin/acme/accounts/nobody/deactivate", headers=env.admin)
    assert missing.status_code == 404


def test_deactivating_an_authorization_invalidates_its_order_once(env: AcmeEnv) -> None:
    created = env.new_order("svc.example.org")
    authz_url = created.json()["authorizations"][0]
    deactivated = env.post(authz_url, {"status": "deactivated"})
    assert deactivated.status_code == 200 and deactivated.json()["status"] == "deactivated"
    assert env.post(created.headers["Location"], None).json()["status"] == "invalid"
    # deactivated is final: a second deactivation is refused and changes nothing.
    problem(env.post(authz_url, {"status": "deactivated"}), "malformed", 400)
    assert env.post(authz_url, None).json()["status"] == "deactivated"


@pytest.fixture
def short_retention(tmp_path: Path, database_url: str, clock: FakeClock) -> Iterator[AcmeEnv]:
    # Retention shorter than the admin token's lifetime, so the clock can pass it.
    with acme_env(
        tmp_path, database_url, clock, acme_retention=timedelta(minutes=10)
    ) as environment:
        environment.dns.add("svc.example.org", "A", "127.0.0.1")
        assert environment.new_account().status_code == 201
        yield environment


def test_prune_expires_stale_orders_then_deletes_them_and_keeps_issued_ones(
    short_retention: AcmeEnv, clock: FakeClock
) -> None:
    env = short_retention
    issued_url, issued, _ = env.issue("svc.example.org")
    stale = env.new_order("svc.example.org")
    assert stale.status_code == 201
    prune = "/v1/admin/acme/prune"

    clock.advance(env.settings.acme_order_lifetime + timedelta(seconds=1))
    assert env.client.post(prune, headers=env.admin).json() == {"expired": 1, "deleted": 0}
    orders = env.client.get("/v1/admin/acme/orders", headers=env.admin).json()
    assert sorted(o["status"] for o in orders) == ["invalid", "valid"]
    invalid = env.client.get("/v1/admin/acme/orders?status=invalid", headers=env.admin).json()
    assert [o["id"] for o in invalid] == [stale.headers["Location"].rsplit("/", 1)[1]]

    clock.advance(env.settings.acme_retention)
    assert env.client.post(prune, headers=env.admin).json() == {"expired": 0, "deleted": 1}
    orders = env.client.get("/v1/admin/acme/orders", headers=env.admin).json()
    assert [o["id"] for o in orders] == [issued_url.rsplit("/", 1)[1]]
    with transaction(env.services.engine) as session:
        assert store.list_authorizations(session, invalid[0]["id"]) == []
    assert _audits(env, "acme:objects:pruned") == 2

    (certificate,) = env.client.get("/v1/admin/acme/certificates", headers=env.admin).json()
    assert certificate["order_id"] == orders[0]["id"]
    assert certificate["identifiers"] == [{"type": "dns", "value": "svc.example.org"}]
    assert certificate["serial"] == issued["certificate"].rsplit("/", 1)[1]
    assert certificate["status"] == "valid"


def test_a_valid_order_cannot_be_finalized_again(env: AcmeEnv) -> None:
    _, order, key = env.issue("svc.example.org")
    # valid is final (§7.1.6): orderNotReady, and still one certificate.
    again = env.post(order["finalize"], {"csr": csr_b64(key, ["svc.example.org"])})
    problem(again, "orderNotReady", 403)
    certificates = env.client.get("/v1/admin/acme/certificates", headers=env.admin).json()
    assert len(certificates) == 1
