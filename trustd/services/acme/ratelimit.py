"""Rate limits by the generic cell rate algorithm (GCRA): `limit` events per `period` with a
burst of `limit`. Shared through Redis (one atomic script per check), in-process without.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol

import redis

from trustd.errors import StoreUnavailable

_KEY = "trustd:acme:rate:"

# KEYS[1]: the key; ARGV: emission interval (ms), burst tolerance (ms). Time comes from the
# Redis server so that replicas with skewed clocks share one view. Returns the milliseconds
# to wait, 0 when the event is allowed (and then recorded).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return allow_at - now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now))
return 0
"""


class RateLimiter(Protocol):
    def check(self, key: str, limit: int, period: float) -> float:
        """Record one event for *key* if allowed; return 0, or the seconds to wait.

        Raises:
            StoreUnavailable: the shared store cannot be reached.
        """
        ...


class LocalRateLimiter:
    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, key: str, limit: int, period: float) -> float:
        interval = period / limit
        tolerance = period - interval
        now = time.monotonic()
        with self._lock:
            tat = max(self._tat.get(key, now), now)
            if now < tat - tolerance:
                return tat - tolerance - now
            self._tat[key] = tat + interval
            # Forget keys whose bucket has drained, so the table stays small.
            if len(self._tat) > 100_000:
                self._tat = {k: v for k, v in self._tat.items() if v > now}
        return 0.0


class RedisRateLimiter:
    def __init__(self, client: redis.Redis, scope: str) -> None:
        self._script = client.register_script(_GCRA)
        # Limits belong to one deployment even when several share the Redis.
        self._prefix = f"{_KEY}{scope}:"

    def check(self, key: str, limit: int, period: float) -> float:
        interval_ms = period * 1000 / limit
        try:
            wait_ms = self._script(
                keys=[self._prefix + key], args=[interval_ms, period * 1000 - interval_ms]
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the rate-limit store is unavailable: {exc}") from None
        return math.ceil(float(wait_ms)) / 1000
