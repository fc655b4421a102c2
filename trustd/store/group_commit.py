"""Group commit: the inserts of concurrent requests committed in one transaction.

Issuance must commit before it answers. Committed one by one, each request pays for a
transaction of its own: on PostgreSQL a WAL flush (synchronous_commit stays on) and the
round trips around it, on SQLite a WAL append, and on both the session and pool work. Here
the requests queue their rows and one thread commits whatever is queued in one transaction;
rows that arrive while a commit is in flight go in the next one. Nobody returns before the
transaction holding its own rows has committed, so a response still means "durable".

The commit runs on a thread of its own, never on the event loop: while the database fails
over, connecting (up to `connect_timeout`) or waiting on a commit would otherwise stop every
other request of the worker (decisions, health checks, TLS handshakes), not only issuance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    commits at once (one loop iteration later), and under load every request that queued
    while the previous commit was in flight shares the next one. Callers must share one
    event loop (a worker process runs one).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._queued: list[_Waiter] = []
        self._flushing: asyncio.Task[None] | None = None
        # One thread: one commit in flight at a time is what groups the others behind it.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="trustd-group-commit")

    async def insert(self, rows: Sequence[Insertion]) -> None:
        """Insert `rows` in one transaction and return once it has committed.

        Raises:
            StoreUnavailable: the database could not be reached or refused the commit; none
                of `rows` is stored.
            Exception: the database refused one of `rows` (e.g. IntegrityError); none of
                them is stored.
        """
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tuple(rows), loop.create_future())
        self._queued.append(waiter)
        if self._flushing is None:
            # A task of its own: a caller cancelled while it waits (its client went away)
            # neither stops the commit nor strands the callers queued with it.
            self._flushing = loop.create_task(self._flush())
        await waiter.committed

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Waiter] = []
        try:
            # Let the other requests ready in this iteration queue their rows first.
            await asyncio.sleep(0)
            while self._queued:
                batch, self._queued = self._queued, []
                outcomes = await loop.run_in_executor(self._thread, self._commit, batch)
                for waiter, outcome in zip(batch, outcomes, strict=True):
                    if waiter.committed.done():
                        continue
                    if outcome is None:
                        waiter.committed.set_result(None)
                    else:
                        waiter.committed.set_exception(outcome)
                batch = []
        finally:
            self._flushing = None
            # Only when the loop is shutting down: whether the batch in flight committed is
            # unknown, so nobody is told it did.
            for waiter in (*batch, *self._queued):
                if not waiter.committed.done():
                    waiter.committed.set_exception(
                        StoreUnavailable("the database is unavailable; retry later")
                    )
            self._queued = []

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
