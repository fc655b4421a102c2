"""Anti-replay nonces (RFC 8555 §6.5): issued with every response, accepted once.

With Redis every replica shares them (SET NX with an expiry to issue, GETDEL to redeem, so a
nonce is redeemed at most once across all replicas); without Redis they live in this process.
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

    def redeem(self, nonce: str) -> bool:
        """Whether *nonce* was issued, is unexpired and was not redeemed before; it is
        spent either way.

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

    def redeem(self, nonce: str) -> bool:
        with self._lock:
            expiry = self._nonces.pop(nonce, None)
        return expiry is not None and expiry > time.monotonic()


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

    def redeem(self, nonce: str) -> bool:
        if len(nonce) > 64:
            return False
        try:
            # GETDEL is atomic: of two replicas redeeming one nonce, exactly one sees it.
            return self._client.getdel(self._prefix + nonce) is not None
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the nonce store is unavailable: {exc}") from None
