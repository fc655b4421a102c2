"""The attestors' replay guard and join-token ledger on a real database (SQLite and
PostgreSQL): a claim holds once, rolls back with a refused attestation, and of two
concurrent attestations with the same evidence exactly one wins."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from tests.functional.conftest import Server, ServerFactory
from trustd.attestation.base import EvidenceReplayed
from trustd.services.nodes import SessionReplayGuard, attestation_context
from trustd.store.attestation import prune_replay_claims
from trustd.store.db import transaction

EXPIRES = datetime(2099, 1, 1, tzinfo=UTC)


def _claim(engine: Engine, digest: str) -> None:
    with transaction(engine) as session:
        SessionReplayGuard(session).claim(digest, "k8s_psat", EXPIRES)


def test_evidence_is_claimed_once(server: Server) -> None:
    engine = server.services.engine
    _claim(engine, "a" * 64)
    with pytest.raises(EvidenceReplayed):
        _claim(engine, "a" * 64)
    # Other evidence is not affected.
    _claim(engine, "b" * 64)


def test_a_claim_in_the_same_attestation_is_refused_too(server: Server) -> None:
    with transaction(server.services.engine) as session:
        guard = SessionReplayGuard(session)
        guard.claim("c" * 64, "x509pop", EXPIRES)
        with pytest.raises(EvidenceReplayed):
            guard.claim("c" * 64, "x509pop", EXPIRES)


class Refused(Exception):
    """A check after the claim failed: the attestation as a whole is refused."""


def _claim_then_refuse(engine: Engine, digest: str) -> None:
    with transaction(engine) as session:
        SessionReplayGuard(session).claim(digest, "x509pop", EXPIRES)
        raise Refused


def test_a_refused_attestation_claims_nothing(server: Server) -> None:
    engine = server.services.engine
    with pytest.raises(Refused):
        _claim_then_refuse(engine, "d" * 64)
    # The claim rolled back with the attestation: the evidence may be presented again.
    _claim(engine, "d" * 64)


def test_expired_claims_are_pruned(server: Server) -> None:
    engine = server.services.engine
    # Not yet expired by the server's clock, so the leader's own pruning (the next test)
    # cannot take it first; expired by the time the prune is asked about.
    soon = server.services.clock.now() + timedelta(days=1)
    with transaction(engine) as session:
        guard = SessionReplayGuard(session)
        guard.claim("e" * 64, "x509pop", soon)
        guard.claim("f" * 64, "x509pop", EXPIRES)
    with transaction(engine) as session:
        assert prune_replay_claims(session, soon + timedelta(days=1)) == 1
    _claim(engine, "e" * 64)
    with pytest.raises(EvidenceReplayed):
        _claim(engine, "f" * 64)


def test_the_leader_prunes_expired_claims_on_its_own(server_factory: ServerFactory) -> None:
    # The rotation ticker's duties run on the leader every tick: no operator action needed.
    server = server_factory(rotation_interval=timedelta(seconds=0.2))
    engine = server.services.engine
    past = server.services.clock.now() - timedelta(minutes=1)
    with transaction(engine) as session:
        guard = SessionReplayGuard(session)
        guard.claim("7" * 64, "x509pop", past)
        guard.claim("8" * 64, "x509pop", EXPIRES)
    deadline = time.monotonic() + 10
    while True:
        try:
            _claim(engine, "7" * 64)  # free again once pruned
            break
        except EvidenceReplayed:
            assert time.monotonic() < deadline, "the expired claim was never pruned"
            time.sleep(0.1)
    with pytest.raises(EvidenceReplayed):
        _claim(engine, "8" * 64)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_of_two_concurrent_claims_exactly_one_wins(server: Server) -> None:
    engine = server.services.engine
    outcome: list[BaseException | None] = []
    with transaction(engine) as session:
        SessionReplayGuard(session).claim("9" * 64, "k8s_psat", EXPIRES)

        def second() -> None:
            try:
                _claim(engine, "9" * 64)
            except BaseException as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        racer = threading.Thread(target=second)
        racer.start()
        # The second insert waits on the first's uncommitted row rather than passing it.
        racer.join(timeout=1)
        assert racer.is_alive()
    racer.join(timeout=10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], EvidenceReplayed)


def test_a_join_token_is_consumed_only_with_its_attestation(server: Server) -> None:
    created = server.client.post(
        "/v1/join-tokens", json={"selectors": ["region:eu"]}, headers=server.auth
    ).json()
    engine = server.services.engine
    used_at = datetime.now(UTC)

    def consume_then_refuse() -> None:
        with transaction(engine) as session:
            ledger = attestation_context(session).join_tokens
            token = ledger.lock(created["id"])
            assert token is not None and token.used_at is None
            assert token.selectors == ("region:eu",)
            ledger.consume(token.id, used_at)
            raise Refused

    with pytest.raises(Refused):
        consume_then_refuse()
    with transaction(engine) as session:
        ledger = attestation_context(session).join_tokens
        token = ledger.lock(created["id"])
        assert token is not None and token.used_at is None
        ledger.consume(token.id, used_at)
    with transaction(engine) as session:
        token = attestation_context(session).join_tokens.lock(created["id"])
        assert token is not None and token.used_at is not None
        assert abs(token.used_at - used_at) < timedelta(seconds=1)
        assert attestation_context(session).join_tokens.lock("unknown") is None
