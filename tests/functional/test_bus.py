"""Change notifications in one process and across processes through a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from trustd.bus import Bus, LocalBus, RedisBus
from trustd.redis_clients import RedisTarget

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["local", "redis"])
def bus_factory(request: pytest.FixtureRequest) -> type[Bus] | object:
    if request.param == "local":
        return LocalBus
    return lambda: RedisBus(RedisTarget(REDIS_URL))


def test_waiter_wakes_on_publish_from_another_thread(bus_factory: object) -> None:
    async def scenario() -> None:
        bus: Bus = bus_factory()  # type: ignore[operator]
        await bus.start()
        channel = f"node:{uuid.uuid4().hex}"
        waiter = asyncio.create_task(asyncio.wait_for(bus.wait(channel), 5))
        await asyncio.sleep(0.05)
        threading.Thread(target=bus.publish, args=(channel, "rev-7")).start()
        assert await waiter == "rev-7"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bus.wait(channel), 0.05)
        await bus.stop()

    asyncio.run(scenario())


def test_publish_on_one_replica_wakes_the_other() -> None:
    async def scenario() -> None:
        a, b = RedisBus(RedisTarget(REDIS_URL)), RedisBus(RedisTarget(REDIS_URL))
        await a.start()
        await b.start()
        channel = f"bundle:{uuid.uuid4().hex}"
        waiter = asyncio.create_task(asyncio.wait_for(b.wait(channel), 5))
        await asyncio.sleep(0.05)
        a.publish(channel, "changed")
        assert await waiter == "changed"
        await a.stop()
        await b.stop()

    asyncio.run(scenario())


def test_unreachable_redis_still_wakes_local_waiters() -> None:
    async def scenario() -> None:
        bus = RedisBus(RedisTarget("redis://127.0.0.1:1/0"))
        await bus.start()
        waiter = asyncio.create_task(asyncio.wait_for(bus.wait("x"), 5))
        await asyncio.sleep(0.05)
        bus.publish("x", "local")
        assert await waiter == "local"
        await bus.stop()

    asyncio.run(scenario())


def test_deployments_sharing_one_redis_do_not_hear_each_other() -> None:
    # Two deployments on one Redis (scopes differ, as trust domain or database differ): a
    # change in one must not wake the other's waiters, while its own replicas still hear it.
    # The scope holds glob characters on purpose: PSUBSCRIBE must treat them literally.
    async def scenario() -> None:
        tag = uuid.uuid4().hex
        here = f"a.example:/tmp/[{tag}]*.db"
        a, a2 = RedisBus(RedisTarget(REDIS_URL), here), RedisBus(RedisTarget(REDIS_URL), here)
        other = RedisBus(RedisTarget(REDIS_URL), f"a.example:/tmp/x{tag}x.db")
        for bus in (a, a2, other):
            await bus.start()
        channel = f"policy:{tag}"
        mine = asyncio.create_task(asyncio.wait_for(a2.wait(channel), 5))
        theirs = asyncio.create_task(asyncio.wait_for(other.wait(channel), 0.5))
        await asyncio.sleep(0.05)
        # Both waiters are registered before the publish, so a miss means "not delivered".
        assert not mine.done() and not theirs.done()
        a.publish(channel, "rev-3")
        assert await mine == "rev-3"
        with pytest.raises(TimeoutError):
            await theirs
        for bus in (a, a2, other):
            await bus.stop()

    asyncio.run(scenario())


class PrivateRedis:
    """A redis-server of the test's own, to stop and start again."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", self.port))
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_a_subscription_regained_wakes_the_waiters_of_a_lost_change(
    private_redis: PrivateRedis,
) -> None:
    # Pub/sub delivers at most once: a revocation published while Redis was down (or
    # failing over) reaches no other replica. Once the subscription is back every waiter
    # reads again, and the replica that could not publish publishes then.
    async def scenario() -> None:
        a = RedisBus(RedisTarget(private_redis.url))
        b = RedisBus(RedisTarget(private_redis.url))
        await a.start()
        await b.start()
        channel = f"revocation:{uuid.uuid4().hex}"
        private_redis.kill()
        a.publish(channel, "lost")
        private_redis.start()
        # b's waiter, parked after the change that b never heard of, wakes once the
        # subscriptions are back (b's own resubscription, or a's publish sent again).
        parked = asyncio.create_task(asyncio.wait_for(b.wait(channel), 10))
        assert await parked == ""
        await a.stop()
        await b.stop()

    asyncio.run(scenario())
