"""Leader election for singleton loops (the rotation ticker, CRL refresh).

Exactly one replica may tick: with Redis, a lease (`SET NX PX`, renewed by its holder only);
without Redis on PostgreSQL, a session advisory lock on a connection held open; on SQLite
(one host), an exclusive file lock. Election alone is not enough: a leader can stall (a
long pause, a partition) past its lease while a successor takes over. So each new leader
also claims a fencing epoch in the database, and every write the loop makes first checks,
in the same transaction, that its epoch is still the newest (Kleppmann, "How to do
distributed locking"); a stale leader's writes roll back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

import redis
import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

from pki.clock import Clock
from pki.errors import TrustdError
from trustd.redis_clients import RedisTarget, redis_target
from trustd.settings import Settings
from trustd.store.db import deployment_scope, transaction
from trustd.store.leader import (
    fetch_fence_epoch,
    ping_connection,
    try_advisory_lock,
    update_fence_epoch,
)

log = structlog.get_logger("trustd.leader")

# Compare-and-renew / compare-and-delete: only the holder's token may touch the lease.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LostLeadership(TrustdError):
    title = "Leadership lost"


# The check a leader's periodic duty makes first in each transaction that writes: it locks
# the fence row and raises LostLeadership once a successor holds a newer epoch, so a stalled
# leader's duty rolls back instead of racing its successor's (a quarantine expired and
# audited twice, a federated bundle written by two fetches).
FenceCheck = Callable[[Session], None]


class Fence:
    """Fencing epochs of one singleton loop, stored in the database."""

    def __init__(self, engine: Engine, clock: Clock, name: str, holder: str) -> None:
        self._engine = engine
        self._clock = clock
        self.name = name
        self.holder = holder

    def claim(self) -> int:
        """Take the next epoch; every earlier holder is fenced out from now on.

        Raises:
            StoreUnavailable: the database is down.
        """
        for _ in range(2):
            try:
                with transaction(self._engine) as session:
                    return update_fence_epoch(session, self.name, self.holder, self._clock.now())
            except IntegrityError:
                continue  # another replica created the row first; claim on top of it
        raise LostLeadership(f"could not claim a fencing epoch for {self.name}")

    def checker(self, epoch: int) -> FenceCheck:
        """The check of *epoch* for the leader's duties (see FenceCheck)."""

        def check(session: Session) -> None:
            self.check(session, epoch)

        return check

    def check(self, session: Session, epoch: int) -> None:
        """Lock the fence row in *session* and check that *epoch* is still the newest.

        Raises:
            LostLeadership: a newer leader has claimed the loop.
        """
        if fetch_fence_epoch(session, self.name) != epoch:
            raise LostLeadership(
                f"{self.holder} lost the {self.name} lease (epoch {epoch} is not the newest)"
            )


class Leader(Protocol):
    fence: Fence

    def acquire(self) -> int | None:
        """Become or stay the leader: the fencing epoch while leading, else None.

        Never raises: an unreachable lock service means "not the leader".
        """
        ...

    def release(self) -> None: ...


class RedisLeader:
    """A lease in Redis, renewed on every `acquire` while held."""

    def __init__(self, target: RedisTarget, fence: Fence, lease_ms: int, scope: str) -> None:
        self.fence = fence
        self._target = target
        self._client: redis.Redis | None = None
        self._key = f"trustd:leader:{scope}:{fence.name}"
        self._token = secrets.token_hex(16)
        self._lease_ms = lease_ms
        self._epoch: int | None = None

    def acquire(self) -> int | None:
        if self._client is None:
            self._client = self._target.client()
        try:
            if self._epoch is not None:
                if self._client.eval(_RENEW, 1, self._key, self._token, self._lease_ms):
                    return self._epoch
                log.warning("leader_lease_lost", loop=self.fence.name)
                self._epoch = None
            if self._client.set(self._key, self._token, nx=True, px=self._lease_ms):
                self._epoch = self.fence.claim()
                log.info("leader_elected", loop=self.fence.name, epoch=self._epoch)
            return self._epoch
        except (redis.RedisError, TrustdError) as exc:
            log.warning("leader_election_failed", loop=self.fence.name, error=str(exc))
            self._epoch = None
            return None

    def release(self) -> None:
        if self._client is not None:
            with contextlib.suppress(redis.RedisError):
                if self._epoch is not None:
                    self._client.eval(_RELEASE, 1, self._key, self._token)
            self._client.close()
        self._client = None
        self._epoch = None


class PostgresLeader:
    """A session-level advisory lock on a dedicated connection: it is released when the
    connection ends, so a dead leader's lock goes with it."""

    def __init__(self, engine: Engine, fence: Fence) -> None:
        self.fence = fence
        self._engine = engine
        self._key = zlib.crc32(f"trustd:{fence.name}".encode())
        self._connection: Connection | None = None
        self._epoch: int | None = None

    def acquire(self) -> int | None:
        try:
            if self._connection is not None:
                ping_connection(self._connection)
                return self._epoch
            connection = self._engine.connect()
            if not try_advisory_lock(connection, self._key):
                connection.close()
                return None
            self._connection = connection
            self._epoch = self.fence.claim()
            log.info("leader_elected", loop=self.fence.name, epoch=self._epoch)
            return self._epoch
        except (DBAPIError, TrustdError) as exc:
            log.warning("leader_election_failed", loop=self.fence.name, error=str(exc))
            self.release()
            return None

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(DBAPIError):
                self._connection.close()
        self._connection = None
        self._epoch = None


class FileLeader:
    """An exclusive `flock` in the data directory: replicas on one host sharing SQLite."""

    def __init__(self, path: Path, fence: Fence) -> None:
        self.fence = fence
        self._path = path
        self._file: IO[bytes] | None = None
        self._epoch: int | None = None

    def acquire(self) -> int | None:
        if self._file is not None:
            return self._epoch
        handle = self._path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        try:
            self._epoch = self.fence.claim()
        except TrustdError as exc:
            log.warning("leader_election_failed", loop=self.fence.name, error=str(exc))
            handle.close()
            return None
        self._file = handle
        return self._epoch

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
        self._file = None
        self._epoch = None


def create_leader(settings: Settings, engine: Engine, clock: Clock, name: str) -> Leader:
    """Redis lease when Redis is configured, else a PostgreSQL advisory lock, else a file
    lock (SQLite is one host)."""
    fence = Fence(engine, clock, name, f"{socket.gethostname()}:{os.getpid()}:{id(engine):x}")
    target = redis_target(settings)
    if target is not None:
        lease = max(3 * settings.rotation_interval.total_seconds(), 5.0)
        # One Redis may serve several deployments: the lease is per trust domain and database.
        scope = deployment_scope(settings.trust_domain, engine)
        return RedisLeader(target, fence, int(lease * 1000), scope)
    if engine.dialect.name == "postgresql":
        return PostgresLeader(engine, fence)
    return FileLeader(settings.data_dir / f"{name}.lock", fence)
