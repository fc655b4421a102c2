"""Anti-replay nonces (RFC 8555 §6.5): issued with every response, accepted once.

With Redis every replica shares them (SET NX with an expiry to issue, GETDEL to redeem, so a
nonce is redeemed at most once across all replicas); without Redis they live in this process.
A request spends its nonce and gets the next one (for its response's Replay-Nonce) in one
exchange: one round trip to Redis, one lock in this process.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Protocol

import redis

from trustd.errors import StoreUnavailable

NONCE_TTL_SECONDS = 600
_KEY = "trustd:acme:nonce:"


def _new_nonce() -> str:
    # RFC 8555 §6.5.1: base64url, unpredictable; 128 bits.
    return secrets.token_urlsafe(16)


class NonceStore(Protocol):
    def issue(self) -> str:
        """A fresh nonce.

        Raises:
            StoreUnavailable: the shared store cannot be reached.
        """
        ...

    def exchange(self, nonce: str) -> tuple[bool, str]:
        """Redeem *nonce* and issue a fresh one, together: whether *nonce* was issued, is
        unexpired and was not redeemed before (it is spent either way), and the fresh nonce
        (issued either way: RFC 8555 §6.5 sends one with a badNonce error too).

        Raises:
            StoreUnavailable: the shared store cannot be reached.
        """
        ...


class LocalNonces:
    """Nonces in this process: bounded, oldest evicted first."""

    def __init__(self, ttl: float = NONCE_TTL_SECONDS, limit: int = 100_000) -> None:
        self._ttl = ttl
        self._limit = limit
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self) -> str:
        nonce = _new_nonce()
        with self._lock:
            self._nonces[nonce] = time.monotonic() + self._ttl
            while len(self._nonces) > self._limit:
                self._nonces.popitem(last=False)
        return nonce

    def exchange(self, nonce: str) -> tuple[bool, str]:
        fresh = _new_nonce()
        now = time.monotonic()
        with self._lock:
            expiry = self._nonces.pop(nonce, None)
            self._nonces[fresh] = now + self._ttl
            while len(self._nonces) > self._limit:
                self._nonces.popitem(last=False)
        return expiry is not None and expiry > now, fresh


class RedisNonces:
    """Nonces shared by every replica through Redis."""

    def __init__(self, client: redis.Redis, scope: str, ttl: int = NONCE_TTL_SECONDS) -> None:
        self._client = client
        self._ttl = ttl
        # A nonce issued by one deployment is not redeemable at another sharing the Redis.
        self._prefix = f"{_KEY}{scope}:"

    def issue(self) -> str:
        nonce = _new_nonce()
        try:
            self._client.set(self._prefix + nonce, b"1", nx=True, ex=self._ttl)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the nonce store is unavailable: {exc}") from None
        return nonce

    def exchange(self, nonce: str) -> tuple[bool, str]:
        fresh = _new_nonce()
        # One round trip: GETDEL and SET pipelined (no MULTI needed: each is atomic alone,
        # and GETDEL lets exactly one of two replicas redeem a nonce). A nonce longer than
        # any issued is not looked up.
        pipeline = self._client.pipeline(transaction=False)
        if len(nonce) <= 64:
            pipeline.getdel(self._prefix + nonce)
        pipeline.set(self._prefix + fresh, b"1", nx=True, ex=self._ttl)
        try:
            replies = pipeline.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the nonce store is unavailable: {exc}") from None
        return len(replies) == 2 and replies[0] is not None, fresh
