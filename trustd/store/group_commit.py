"""Group commit: the inserts of concurrent requests committed in one transaction.

Issuance must commit before it answers. Committed one by one, each request pays for a
transaction of its own: on PostgreSQL a WAL flush (synchronous_commit stays on) and the
round trips around it, on SQLite a WAL append, and on both the session and pool work. Here
the requests that are ready in the same event-loop iteration queue their rows and the first
of them commits them all in one transaction. Nobody returns before the transaction holding
its own rows has committed, so a response still means "durable".
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.sql.dml import Insert
from sqlmodel import Session

from trustd.errors import StoreUnavailable
from trustd.store.audit import AUDIT_INSERT, create_audit_event
from trustd.store.db import transaction
from trustd.store.types import Insertion

__all__ = ["GroupCommit", "Insertion", "create_rows"]


def create_rows(session: Session, rows: Sequence[Insertion]) -> None:
    """Insert `rows` in `session`'s transaction, one executemany per statement: a table's
    rows go to the database together. Audit rows are chained when the session commits
    (`trustd.store.audit`)."""
    grouped: dict[Insert, list[dict[str, Any]]] = {}
    for statement, values in rows:
        if statement is AUDIT_INSERT:
            create_audit_event(session, (statement, values))
            continue
        grouped.setdefault(statement, []).append(values)
    connection = session.connection()
    for statement, many in grouped.items():
        connection.execute(statement, many)


@dataclass(frozen=True)
class _Waiter:
    rows: Sequence[Insertion]
    committed: asyncio.Future[None]


class GroupCommit:
    """Commits the rows of concurrent callers together. There is no timer: a lone request
    commits at once (one loop iteration later), a busy worker commits every request it has
    ready at once. Callers must share one event loop (a worker process runs one).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._queued: list[_Waiter] = []

    async def insert(self, rows: Sequence[Insertion]) -> None:
        """Insert `rows` in one transaction and return once it has committed.

        Raises:
            StoreUnavailable: the database could not be reached or refused the commit; none
                of `rows` is stored.
            Exception: the database refused one of `rows` (e.g. IntegrityError); none of
                them is stored.
        """
        waiter = _Waiter(tuple(rows), asyncio.get_running_loop().create_future())
        self._queued.append(waiter)
        if len(self._queued) == 1:
            try:
                # Let the other requests ready in this iteration queue their rows first.
                await asyncio.sleep(0)
            finally:
                # Even if this caller is cancelled, the ones queued behind it are waiting.
                self._commit_queued()
        await waiter.committed

    def _commit_queued(self) -> None:
        # The commit runs on the event loop, as the rest of issuance does: handing it to a
        # thread makes it wait for the GIL behind the signing of the next batch.
        batch, self._queued = self._queued, []
        for waiter, outcome in zip(batch, self._commit(batch), strict=True):
            if waiter.committed.cancelled():
                continue
            if outcome is None:
                waiter.committed.set_result(None)
            else:
                waiter.committed.set_exception(outcome)

    def _commit(self, batch: list[_Waiter]) -> list[Exception | None]:
        """Each waiter's outcome, in order: None once its rows are committed."""
        try:
            self._write([row for waiter in batch for row in waiter.rows])
        except StoreUnavailable as exc:
            # Unreachable or refusing: one attempt for all, each told on its own.
            return [_unavailable(exc) for _ in batch]
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            # A row the database refused must fail its own request only. The batch rolled
            # back whole, so each request is tried again alone.
            return [self._commit_alone(waiter) for waiter in batch]
        return [None] * len(batch)

    def _commit_alone(self, waiter: _Waiter) -> Exception | None:
        try:
            self._write(waiter.rows)
        except Exception as exc:
            return exc
        return None

    def _write(self, rows: Sequence[Insertion]) -> None:
        with transaction(self._engine) as session:
            create_rows(session, rows)


def _unavailable(cause: StoreUnavailable) -> StoreUnavailable:
    error = StoreUnavailable(cause.detail)
    error.__cause__ = cause
    return error
