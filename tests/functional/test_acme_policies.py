"""What the server enforces beyond the protocol itself: a required External Account
Binding (RFC 8555 §7.3.4), order rate limits (§6.6: 429 rateLimited with Retry-After) and
one live replacement per certificate (RFC 9773 §5: alreadyReplaced)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from acme import messages
from sqlmodel import func, select

from pki.acme.profile import ari_cert_id
from tests.acme_support import Signer
from tests.functional.acme_client import AcmeEnv, acme_env, problem
from trustd.store.acme import AcmeAccount, AcmeOrder
from trustd.store.db import transaction


def _count(env: AcmeEnv, model: type[AcmeAccount] | type[AcmeOrder]) -> int:
    with transaction(env.services.engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


# --------------------------------------------------------------------------- EAB required


@pytest.fixture
def eab_env(tmp_path: Path, database_url: str) -> Iterator[AcmeEnv]:
    with acme_env(tmp_path, database_url, acme_eab_required=True) as environment:
        yield environment


def _binding(env: AcmeEnv, signer: Signer, kid: str, hmac_key: str) -> dict[str, Any]:
    # The `acme` client library builds the binding: HS256 over the account key (§7.3.4).
    binding: dict[str, Any] = messages.ExternalAccountBinding.from_data(
        account_public_key=signer.key.public_key(),
        kid=kid,
        hmac_key=hmac_key,
        directory={"newAccount": env.url("/acme/new-account")},
    )
    return binding


def _eab_key(env: AcmeEnv) -> dict[str, Any]:
    created = env.client.post("/v1/admin/acme/eab-keys", json={"label": "ci"}, headers=env.admin)
    assert created.status_code == 201, created.text
    key: dict[str, Any] = created.json()
    return key


def test_eab_required_refuses_an_account_without_a_binding(eab_env: AcmeEnv) -> None:
    directory = eab_env.client.get("/acme/directory").json()
    assert directory["meta"]["externalAccountRequired"] is True
    problem(eab_env.new_account(), "externalAccountRequired", 400)
    assert _count(eab_env, AcmeAccount) == 0


def test_eab_required_accepts_a_binding_made_with_the_issued_key(eab_env: AcmeEnv) -> None:
    key = _eab_key(eab_env)
    wrong = Signer()
    forged = _binding(eab_env, wrong, key["id"], "x" * 43)
    problem(eab_env.new_account(wrong, externalAccountBinding=forged), "unauthorized", 403)
    assert _count(eab_env, AcmeAccount) == 0

    bound = _binding(eab_env, eab_env.signer, key["id"], key["hmac_key"])
    created = eab_env.new_account(externalAccountBinding=bound)
    assert created.status_code == 201, created.text
    accounts = eab_env.client.get("/v1/admin/acme/accounts", headers=eab_env.admin).json()
    assert [a["eab_key_id"] for a in accounts] == [key["id"]]


def test_eab_required_refuses_a_revoked_key(eab_env: AcmeEnv) -> None:
    key = _eab_key(eab_env)
    revoked = eab_env.client.delete(f"/v1/admin/acme/eab-keys/{key['id']}", headers=eab_env.admin)
    assert revoked.status_code == 204
    bound = _binding(eab_env, eab_env.signer, key["id"], key["hmac_key"])
    problem(eab_env.new_account(externalAccountBinding=bound), "unauthorized", 403)
    assert _count(eab_env, AcmeAccount) == 0


# --------------------------------------------------------------------------- rate limits


@pytest.fixture(params=["in-process", "redis"])
def limits(request: pytest.FixtureRequest) -> dict[str, Any]:
    # Limits both ways: in this process, and shared through Redis (GCRA script).
    return {"redis_url": "redis://127.0.0.1:6379/0" if request.param == "redis" else None}


def test_orders_past_the_account_limit_are_rate_limited(
    tmp_path: Path, database_url: str, limits: dict[str, Any]
) -> None:
    with acme_env(tmp_path, database_url, acme_orders_per_hour=2, **limits) as env:
        assert env.new_account().status_code == 201
        for name in ("a.example.org", "b.example.org"):
            assert env.new_order(name).status_code == 201
        refused = env.new_order("c.example.org")
        problem(refused, "rateLimited", 429)
        # RFC 8555 §6.6: when to retry; GCRA frees the next order one interval (30 min) on.
        assert 0 < int(refused.headers["Retry-After"]) <= 1800
        assert _count(env, AcmeOrder) == 2
        # The limit is the account's: another account still orders.
        other = Signer()
        assert env.new_account(other).status_code == 201
        assert env.new_order("c.example.org", signer=other).status_code == 201


def test_orders_past_the_identifier_limit_are_rate_limited(
    tmp_path: Path, database_url: str, limits: dict[str, Any]
) -> None:
    with acme_env(tmp_path, database_url, acme_identifier_orders_per_hour=1, **limits) as env:
        assert env.new_account().status_code == 201
        assert env.new_order("busy.example.org").status_code == 201
        refused = env.new_order("busy.example.org")
        assert "busy.example.org" in problem(refused, "rateLimited", 429)["detail"]
        assert int(refused.headers["Retry-After"]) > 0
        assert env.new_order("quiet.example.org").status_code == 201
        assert _count(env, AcmeOrder) == 2


# --------------------------------------------------------------------------- ARI replaces


def test_a_certificate_is_replaced_by_one_live_order_at_a_time(
    tmp_path: Path, database_url: str
) -> None:
    with acme_env(tmp_path, database_url) as env:
        env.dns.add("svc.example.org", "A", "127.0.0.1")
        assert env.new_account().status_code == 201
        _, order, _ = env.issue("svc.example.org")
        cert_id = ari_cert_id(env.certificate(order))

        replacing = env.new_order("svc.example.org", replaces=cert_id)
        assert replacing.status_code == 201, replacing.text
        assert replacing.json()["replaces"] == cert_id
        problem(env.new_order("svc.example.org", replaces=cert_id), "alreadyReplaced", 409)
        assert _count(env, AcmeOrder) == 2

        # Once the replacing order is invalid (its authorization deactivated, §7.5.2), the
        # certificate may be replaced again.
        authz = replacing.json()["authorizations"][0]
        assert env.post(authz, {"status": "deactivated"}).json()["status"] == "deactivated"
        assert env.post(replacing.headers["Location"], None).json()["status"] == "invalid"
        assert env.new_order("svc.example.org", replaces=cert_id).status_code == 201
