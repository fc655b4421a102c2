"""The policy store functions on a migrated database, SQLite and PostgreSQL: revisions,
activations and the decision log's pages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from trustd.bootstrap import migrate
from trustd.domain.policy import DecisionFilter
from trustd.store import policy as store
from trustd.store.db import create_db_engine, transaction

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    migrate(database_url)
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


def _revision(engine: Engine, note: str) -> int:
    with transaction(engine) as session:
        return store.create_policy_revision(
            session,
            label="v1",
            digest="d" * 64,
            modules={"a.rego": "package a"},
            data={"x": 1},
            manifest_metadata={},
            signed=False,
            note=note,
            created_by="test",
            created_at=NOW,
        ).revision


def test_revisions_and_activations(engine: Engine) -> None:
    with transaction(engine) as session:
        assert store.fetch_active_policy_revision(session) is None
        assert store.list_policy_activations(session) == []
    first, second = _revision(engine, "one"), _revision(engine, "two")
    assert second > first
    with transaction(engine) as session:
        store.create_policy_activation(session, first, "test", NOW)
        store.create_policy_activation(session, second, "test", NOW)
        store.create_policy_activation(session, first, "test", NOW)
    with transaction(engine) as session:
        assert store.fetch_active_policy_revision(session) == first
        assert store.list_policy_activations(session) == [first, second, first]
        assert store.list_policy_activations(session, 1) == [first]
        assert [r.note for r in store.list_policy_revisions(session)] == ["two", "one"]
        stored = store.fetch_policy_revision(session, first)
        assert stored is not None and stored.modules == {"a.rego": "package a"}
        assert stored.data == {"x": 1} and stored.created_at == NOW
        assert store.fetch_policy_revision(session, second + 1) is None


def _decision(
    n: int, at: datetime, path: str = "p", result_hash: str = "h", source: str | None = None
) -> dict[str, Any]:
    return {
        "decision_id": f"00000000-0000-0000-0000-{n:012d}",
        "at": at,
        "path": path,
        "input": {"n": n},
        "result": True,
        "defined": True,
        "result_hash": result_hash,
        "revision": None,
        "latency_us": 1,
        "caller": "c",
        "source": source,
        "destination": "spiffe://example.org/db" if source else None,
    }


def test_decision_pages_filters_and_pruning(engine: Engine) -> None:
    with transaction(engine) as session:
        # Five decisions in the same instant: the keyset page must order by id too.
        store.create_policy_decisions(
            session, [_decision(n, NOW, source=f"spiffe://example.org/{n % 2}") for n in range(5)]
        )
        store.create_policy_decisions(
            session, [_decision(9, NOW + SECOND, path="q", result_hash="other")]
        )
    with transaction(engine) as session:
        page = store.list_policy_decisions_since(session, None, None, 2)
        assert [d.input for d in page] == [{"n": 0}, {"n": 1}]
        rest = store.list_policy_decisions_since(
            session, None, (page[-1].at, page[-1].decision_id), 10
        )
        assert [d.input["n"] for d in rest] == [2, 3, 4, 9]
        later = store.list_policy_decisions_since(session, NOW + SECOND, None, 10)
        assert [d.path for d in later] == ["q"]
        newest = store.list_policy_decisions(session, DecisionFilter(limit=1))
        assert [d.path for d in newest] == ["q"]
        assert len(store.list_policy_decisions(session, DecisionFilter(path="p"))) == 5
        assert len(store.list_policy_decisions(session, DecisionFilter(result_hash="other"))) == 1
        assert store.list_policy_decisions(session, DecisionFilter(until=NOW)) == []
        assert store.list_policy_decisions(session, DecisionFilter(caller="nobody")) == []
        odd = store.list_policy_decisions(session, DecisionFilter(source="spiffe://example.org/1"))
        assert [d.input["n"] for d in odd] == [3, 1]
        db = DecisionFilter(destination="spiffe://example.org/db", limit=2)
        first = store.list_policy_decisions(session, db)
        assert [d.input["n"] for d in first] == [4, 3]
        cursor = (first[-1].at, first[-1].decision_id)
        second = store.list_policy_decisions(session, replace(db, before=cursor, limit=10))
        assert [d.input["n"] for d in second] == [2, 1, 0]
    with transaction(engine) as session:
        assert store.prune_policy_decisions(session, NOW, 3) == 5
    with transaction(engine) as session:
        # The cutoff instant goes whole: the kept decisions are the newest ones.
        assert store.count_policy_decisions(session) == 1
        assert store.prune_policy_decisions(session, NOW + 2 * SECOND, 100) == 1
        assert store.count_policy_decisions(session) == 0
