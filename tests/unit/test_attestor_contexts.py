"""Attestors need no database: they consume single-use evidence through the replay guard
and join-token ledger they are handed. Here those are in-memory implementations, so the
attestors' own checks are tested alone (the database-backed ones are tested in
tests/functional/test_replay_guard.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from trustd.attestation.base import AttestationContext, AttestationFailed, EvidenceReplayed
from trustd.attestation.join_token import JoinTokenAttestor, hash_secret
from trustd.domain.nodes import JoinToken

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class MemoryReplayGuard:
    def __init__(self) -> None:
        self.claims: dict[str, tuple[str, datetime]] = {}

    def claim(self, digest: str, attestor: str, expires_at: datetime) -> None:
        if digest in self.claims:
            raise EvidenceReplayed("the evidence was already used to attest")
        self.claims[digest] = (attestor, expires_at)


class MemoryJoinTokens:
    def __init__(self, *tokens: JoinToken) -> None:
        self.tokens = {t.id: t for t in tokens}

    def lock(self, token_id: str) -> JoinToken | None:
        return self.tokens.get(token_id)

    def consume(self, token_id: str, used_at: datetime) -> None:
        self.tokens[token_id] = replace(self.tokens[token_id], used_at=used_at)


def _token(expires_at: datetime = NOW + timedelta(hours=1)) -> JoinToken:
    return JoinToken(
        id="t1",
        token_hash=hash_secret("s3cret"),
        selectors=("region:eu",),
        created_by="token:admin",
        created_at=NOW - timedelta(minutes=1),
        expires_at=expires_at,
    )


def _context(ledger: MemoryJoinTokens) -> AttestationContext:
    return AttestationContext(MemoryReplayGuard(), ledger)


def test_a_join_token_attests_once() -> None:
    ledger = MemoryJoinTokens(_token())
    result = JoinTokenAttestor().attest({"token": "t1.s3cret"}, NOW, _context(ledger))
    assert result.agent_id == "t1"
    assert {str(s) for s in result.selectors} == {"join_token:id:t1", "region:eu"}
    assert ledger.tokens["t1"].used_at == NOW
    with pytest.raises(AttestationFailed, match="already used"):
        JoinTokenAttestor().attest({"token": "t1.s3cret"}, NOW, _context(ledger))


@pytest.mark.parametrize(
    ("presented", "token", "reason"),
    [
        ("t1.wrong", _token(), "not valid"),
        ("t2.s3cret", _token(), "not valid"),
        ("t1.s3cret", _token(expires_at=NOW), "expired"),
        ("no-separator", _token(), "<id>.<secret>"),
    ],
)
def test_a_refused_join_token_is_not_consumed(
    presented: str, token: JoinToken, reason: str
) -> None:
    ledger = MemoryJoinTokens(token)
    with pytest.raises(AttestationFailed, match=reason):
        JoinTokenAttestor().attest({"token": presented}, NOW, _context(ledger))
    assert ledger.tokens["t1"].used_at is None
