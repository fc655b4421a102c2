"""Builders for the Workload API tests: a trust domain with real keys, SVIDs for cache
entries, in-process JWT-SVID and WIT-SVID sources that really sign, and an event loop on a thread
for the agent side of tests whose clients are other processes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from cryptography import x509

from pki.bundle import TrustBundle
from pki.clock import Clock, FakeClock
from pki.jwt_svid import JwtSvid, mint_jwt_svid
from pki.keys import KeyType, PrivateKey, generate_private_key, key_id
from pki.selectors import parse_selectors
from pki.spiffe_id import SpiffeId
from pki.wit_svid import mint_wit_svid
from tests.unit.pki_helpers import TestCA
from trustd.agent.cache import HeldWitSvid, WorkloadEntry, X509Svid

T = TypeVar("T")


class MintingJwtSource:
    """A real JwtSvidSource: signs with a real key in process, as the server would."""

    def __init__(
        self, key: PrivateKey, kid: str, clock: Clock, ttl: timedelta = timedelta(minutes=5)
    ) -> None:
        self.key = key
        self.kid = kid
        self.clock = clock
        self.ttl = ttl

    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: Sequence[str]) -> JwtSvid:
        return mint_jwt_svid(self.key, self.kid, spiffe_id, audience, self.ttl, self.clock)


class MintingWitSource:
    """A real WitSvidSource: makes the workload key and signs its WIT-SVID in process, as
    the agent and the server would; counts what it minted."""

    def __init__(
        self, key: PrivateKey, kid: str, clock: Clock, ttl: timedelta = timedelta(hours=1)
    ) -> None:
        self.key = key
        self.kid = kid
        self.clock = clock
        self.ttl = ttl
        self.minted = 0

    async def fetch_wit_svid(self, spiffe_id: SpiffeId) -> HeldWitSvid:
        workload = generate_private_key(KeyType.EC_P256)
        svid = mint_wit_svid(
            self.key, self.kid, spiffe_id, workload.public_key(), self.ttl, self.clock
        )
        self.minted += 1
        return HeldWitSvid(svid, workload, self.clock.now() + self.ttl / 2)


class Domain:
    """A trust domain: a CA (root + intermediate) and a JWT signing key."""

    def __init__(self, clock: FakeClock, name: str = "example.org") -> None:
        self.clock = clock
        self.ca = TestCA(name, clock=clock)
        self.jwt_key = generate_private_key(KeyType.EC_P256)
        self.kid = key_id(self.jwt_key.public_key())
        # The WIT-SVID key: a key of its own, so a kid of its own (WIT-SVID §6.1).
        self.wit_key = generate_private_key(KeyType.EC_P256)
        self.wit_kid = key_id(self.wit_key.public_key())

    def bundle(self, sequence: int = 1, *, wit: bool = False) -> TrustBundle:
        return TrustBundle(
            trust_domain=self.ca.trust_domain,
            x509_authorities=(self.ca.root,),
            jwt_authorities={self.kid: self.jwt_key.public_key()},
            sequence=sequence,
            refresh_hint=300,
            wit_authorities={self.wit_kid: self.wit_key.public_key()} if wit else {},
        )

    def wit_source(self) -> MintingWitSource:
        return MintingWitSource(self.wit_key, self.wit_kid, self.clock)

    def svid(self, entry: WorkloadEntry, ttl: timedelta = timedelta(hours=1)) -> X509Svid:
        key = generate_private_key(KeyType.EC_P256)
        cert = self.ca.issue(entry.spiffe_id.path, key=key, ttl=ttl)
        return X509Svid(entry.id, entry.spiffe_id, (cert, *self.ca.intermediates), key, entry.hint)

    def jwt_source(self) -> MintingJwtSource:
        return MintingJwtSource(self.jwt_key, self.kid, self.clock)

    def entry(self, entry_id: str, path: str, *selectors: str, hint: str = "") -> WorkloadEntry:
        return WorkloadEntry(
            entry_id,
            self.ca.spiffe_id(path),
            parse_selectors(selectors),
            x509_ttl=3600,
            jwt_ttl=300,
            hint=hint,
        )


def load_der_certificates(data: bytes) -> list[x509.Certificate]:
    """Split concatenated DER certificates (the Workload API's chain and bundle fields)."""
    certs = []
    while data:
        # X.690 §8.1.3: a SEQUENCE header is 0x30, then a short or long-form length.
        assert data[0] == 0x30, "not a DER SEQUENCE"
        if data[1] < 0x80:
            size, header = data[1], 2
        else:
            count = data[1] & 0x7F
            size, header = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
        certs.append(x509.load_der_x509_certificate(data[: header + size]))
        data = data[header + size :]
    return certs


class LoopThread:
    """An event loop on its own thread: the agent's loop, while the test drives clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
