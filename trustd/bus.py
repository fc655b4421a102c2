"""Change notifications between the parts of one process and between replicas.

A change (a new revision for a node, a policy bundle activated, a revocation) is published on
a channel; every process holding long-polls or caches for that channel wakes. With Redis, a
publish on one replica reaches every replica (pub/sub); without Redis the same interface works
inside one process. Notifications carry hints only: the database stays the source of truth, so
a lost message costs latency (the waiter's timeout), never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import defaultdict
from typing import Protocol

import redis
import structlog

from trustd.redis_clients import RedisTarget

log = structlog.get_logger("trustd.bus")


def channel_prefix(scope: str) -> str:
    """Where a deployment's channels live in Redis: one Redis may serve several deployments
    (and test runs), which must not wake each other's waiters or reload each other's caches."""
    return f"trustd:{scope}:" if scope else "trustd:"


def _glob_escape(text: str) -> str:
    # PSUBSCRIBE takes a glob pattern; a scope holding a database path may contain any of
    # its special characters.
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class Bus(Protocol):
    def publish(self, channel: str, message: str = "") -> None:
        """Announce a change; callable from any thread. Never raises: a notification that
        cannot be delivered is logged and the waiters fall back to their timeouts."""
        ...

    async def wait(self, channel: str) -> str:
        """The next message on `channel`; bound it with `asyncio.timeout`."""
        ...

    async def start(self) -> None:
        """Bind to the running event loop (and connect to Redis)."""
        ...

    async def stop(self) -> None: ...


class LocalBus:
    """In-process delivery: waiters are futures on the event loop the bus was started on."""

    def __init__(self) -> None:
        self._waiters: defaultdict[str, set[asyncio.Future[str]]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        with self._lock:
            waiters = [f for futures in self._waiters.values() for f in futures]
            self._waiters.clear()
        for future in waiters:
            future.cancel()

    def publish(self, channel: str, message: str = "") -> None:
        self.deliver(channel, message)

    def deliver(self, channel: str, message: str) -> None:
        """Wake this process's waiters on `channel` (thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            waiters = self._waiters.pop(channel, set())
        for future in waiters:
            loop.call_soon_threadsafe(_resolve, future, message)

    def deliver_all(self, message: str) -> None:
        """Wake this process's waiters on every channel (thread-safe)."""
        with self._lock:
            channels = list(self._waiters)
        for channel in channels:
            self.deliver(channel, message)

    async def wait(self, channel: str) -> str:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        with self._lock:
            self._waiters[channel].add(future)
        try:
            return await future
        finally:
            with self._lock:
                self._waiters[channel].discard(future)
                if not self._waiters[channel]:
                    del self._waiters[channel]


def _resolve(future: asyncio.Future[str], message: str) -> None:
    if not future.done():
        future.set_result(message)


class RedisBus:
    """Redis pub/sub between replicas; delivery inside each process through a `LocalBus`."""

    def __init__(self, target: RedisTarget, scope: str = "") -> None:
        self._target = target
        self._prefix = channel_prefix(scope)
        self._local = LocalBus()
        # Publishing happens from request threads; a small blocking client is simplest there.
        self._publisher = target.client()
        self._listener: asyncio.Task[None] | None = None
        # Set once the first subscription attempt has succeeded or failed.
        self._first_attempt = asyncio.Event()
        # Channels whose last publish failed (Redis down or failing over), sent again once
        # the subscription is back.
        self._unsent: set[str] = set()
        self._unsent_lock = threading.Lock()

    async def start(self) -> None:
        await self._local.start()
        self._listener = asyncio.create_task(self._listen(), name="trustd-bus-listener")
        # Messages published before the subscription is active would be lost: wait for it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), 5)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._local.stop()
        self._publisher.close()

    def publish(self, channel: str, message: str = "") -> None:
        try:
            self._publisher.publish(self._prefix + channel, message)
        except redis.RedisError as exc:
            log.warning("bus_publish_failed", channel=channel, error=str(exc))
            with self._unsent_lock:
                self._unsent.add(channel)
            # This replica's own waiters still hear of the change.
            self._local.deliver(channel, message)

    async def wait(self, channel: str) -> str:
        return await self._local.wait(channel)

    async def _listen(self) -> None:
        lost = False
        while True:
            # No read timeout: a quiet channel is not a dead one.
            client = self._target.async_client(timeout=None)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.psubscribe(_glob_escape(self._prefix) + "*")
                    self._first_attempt.set()
                    if lost:
                        # Pub/sub delivers at most once: whatever was published while this
                        # subscription was down is gone. Every waiter reads the database
                        # again (notifications are hints), and what this replica could not
                        # publish meanwhile is published now, for the other replicas.
                        lost = False
                        with self._unsent_lock:
                            unsent, self._unsent = self._unsent, set()
                        try:
                            for channel in sorted(unsent):
                                await client.publish(self._prefix + channel, "")
                        except BaseException:
                            with self._unsent_lock:
                                self._unsent |= unsent
                            raise
                        self._local.deliver_all("")
                        log.info("bus_listener_resubscribed", republished=sorted(unsent))
                    async for item in pubsub.listen():
                        if item.get("type") != "pmessage":
                            continue
                        channel = item["channel"].decode()[len(self._prefix) :]
                        self._local.deliver(channel, item["data"].decode())
            except (redis.RedisError, OSError) as exc:
                self._first_attempt.set()
                lost = True
                log.warning("bus_listener_reconnecting", error=str(exc))
                await asyncio.sleep(1)
            finally:
                await client.aclose()


def create_bus(target: RedisTarget | None, scope: str) -> Bus:
    """The Redis bus scoped to one deployment (`store.db.deployment_scope`), else the
    in-process one."""
    return RedisBus(target, scope) if target is not None else LocalBus()
