"""Where Redis is, and the one place trustd builds clients for it.

Redis is reached either directly (`TRUSTD_REDIS_URL`) or through Redis Sentinel
(`TRUSTD_REDIS_SENTINELS`, `TRUSTD_REDIS_SERVICE`): the sentinels name the current master of
the service, and a client built here asks them again after a connection error or when the
master it talked to has become a replica (a failover), so the bus, the leader lease and the
ACME nonces and rate limits follow a promotion without a restart. With Sentinel, a
`TRUSTD_REDIS_URL` if given only supplies the database number and credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel

from trustd.settings import Settings

# A request thread waits at most this long on Redis before treating it as down.
SOCKET_TIMEOUT = 2.0
# Sentinels answer "who is the master" from memory: a slow one is a dead one.
SENTINEL_TIMEOUT = 0.5


@dataclass(frozen=True)
class RedisTarget:
    """A Redis deployment: a URL, or a Sentinel service (with the URL's options)."""

    url: str | None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = "trustd"

    def client(self, timeout: float | None = SOCKET_TIMEOUT) -> redis.Redis:
        """A blocking client for request threads and loops. *timeout* None blocks on reads
        (a pub/sub listener); connecting is always bounded."""
        options = {**self._options(), "socket_timeout": timeout}
        if self.sentinels:
            # redis-py's sentinel modules carry no annotations.
            sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
                list(self.sentinels), **self._sentinel_options()
            )
            return cast(redis.Redis, sentinel.master_for(self.service, **options))  # type: ignore[no-untyped-call]
        assert self.url is not None
        return redis.Redis.from_url(self.url, **options)

    def async_client(self, timeout: float | None = SOCKET_TIMEOUT) -> aredis.Redis:
        """An asyncio client (the bus's pub/sub listener)."""
        options = {**self._options(), "socket_timeout": timeout}
        if self.sentinels:
            asentinels = asentinel.Sentinel(  # type: ignore[no-untyped-call]
                list(self.sentinels), **self._sentinel_options()
            )
            return cast(aredis.Redis, asentinels.master_for(self.service, **options))
        assert self.url is not None
        return aredis.Redis.from_url(self.url, **options)

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"socket_connect_timeout": SOCKET_TIMEOUT}
        if self.sentinels and self.url:
            parsed = redis.connection.parse_url(self.url)  # type: ignore[no-untyped-call]
            options.update({k: v for k, v in parsed.items() if k in ("db", "username", "password")})
        return options

    def _sentinel_options(self) -> dict[str, Any]:
        return {
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
        }

    def __str__(self) -> str:
        # Shown in logs: never the URL, which may hold a password.
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {hosts} service {self.service}"
        return "redis url"


def redis_target(settings: Settings) -> RedisTarget | None:
    """The configured Redis, or None when trustd runs without it."""
    sentinels = settings.redis_sentinel_addresses
    if sentinels:
        return RedisTarget(settings.redis_url, sentinels, settings.redis_service)
    if settings.redis_url:
        return RedisTarget(settings.redis_url)
    return None
