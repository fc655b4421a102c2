"""The agent's in-memory view: entries for this node, the SVIDs minted for them, the bundle.

The sync loop writes; the Workload API reads and waits for changes. Everything runs on the
agent's one event loop, so no locks are needed; readers get immutable snapshots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cryptography import x509

from pki.bundle import TrustBundle
from pki.jwt_svid import JwtSvid
from pki.keys import KeyType, PrivateKey
from pki.selectors import Selector, matches
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.wit_svid import WitSvid


@dataclass(frozen=True)
class WorkloadEntry:
    """A registration entry this node may serve, as the server sent it."""

    id: str
    spiffe_id: SpiffeId
    selectors: frozenset[Selector]
    x509_ttl: int
    jwt_ttl: int
    dns_names: tuple[str, ...] = ()
    hint: str = ""
    revision: int = 0
    # The foreign trust domains whose bundles this entry's workloads receive.
    federates_with: tuple[TrustDomain, ...] = ()
    # The key type its workload keys are made of (the entry's, or the trust domain's ML-DSA
    # default); None: the agent's own `key_type`.
    key_type: KeyType | None = None


@dataclass(frozen=True)
class X509Svid:
    """An X509-SVID held for an entry: the chain (leaf first) and the key made on this node."""

    entry_id: str
    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey
    hint: str = ""
    # When the agent received it. The CA backdates not_before for clock skew, so for short
    # lifetimes the renewal schedule must start from here, not from not_before.
    received_at: datetime | None = None

    @property
    def not_after(self) -> datetime:
        return self.chain[0].not_valid_after_utc

    @property
    def effective_start(self) -> datetime:
        start = self.chain[0].not_valid_before_utc
        return max(start, self.received_at) if self.received_at else start


@dataclass(frozen=True)
class QuarantineNotice:
    """A quarantined identity as trustd sent it: no SVID is served or minted for it until
    `until` (None: until trustd says it is released), judged by this agent's own clock."""

    spiffe_id: SpiffeId
    reason: str
    until: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until

    @property
    def refusal(self) -> str:
        """What the Workload API answers a caller of this identity."""
        until = f" until {self.until.isoformat()}" if self.until else ""
        return f"{self.spiffe_id} is quarantined{until}: {self.reason}"


class JwtSvidSource(Protocol):
    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: Sequence[str]) -> JwtSvid:
        """A JWT-SVID for `spiffe_id` with `audience`, minted by the server (or cached).

        Raises:
            TrustdError: the server refused or cannot be reached and nothing is cached.
        """
        ...


@dataclass(frozen=True)
class HeldWitSvid:
    """A WIT-SVID and the workload key it is bound to (made on this node, never sent)."""

    svid: WitSvid
    private_key: PrivateKey = field(repr=False)
    # When the agent fetches the next one: half the token's life, as for every SVID.
    refresh_at: datetime


class WitSvidSource(Protocol):
    async def fetch_wit_svid(self, spiffe_id: SpiffeId) -> HeldWitSvid:
        """A WIT-SVID for `spiffe_id` bound to a key made for it, minted by the server (or
        cached until half its life).

        Raises:
            TrustdError: the server refused or cannot be reached and nothing is cached.
        """
        ...


class SvidCache:
    def __init__(self) -> None:
        self._entries: dict[str, WorkloadEntry] = {}
        self._svids: dict[str, X509Svid] = {}
        self._bundle: TrustBundle | None = None
        self._federated: dict[TrustDomain, TrustBundle] = {}
        self._quarantines: dict[SpiffeId, QuarantineNotice] = {}
        self._generation = 0
        self._changed = asyncio.Condition()

    # -- readers -------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Increases on every change a Workload API client could see."""
        return self._generation

    @property
    def bundle(self) -> TrustBundle | None:
        return self._bundle

    @property
    def federated(self) -> dict[TrustDomain, TrustBundle]:
        """Every foreign bundle held: the server sends those of the trust domains some entry
        of this node federates with, no others."""
        return self._federated

    def federated_for(self, entries: Iterable[WorkloadEntry]) -> dict[TrustDomain, TrustBundle]:
        """The bundles of the foreign trust domains *entries* federate with (those held)."""
        found: dict[TrustDomain, TrustBundle] = {}
        for entry in entries:
            for domain in entry.federates_with:
                bundle = self._federated.get(domain)
                if bundle is not None:
                    found[domain] = bundle
        return dict(sorted(found.items(), key=lambda item: item[0].name))

    def entries(self) -> list[WorkloadEntry]:
        return list(self._entries.values())

    def entries_for(self, selectors: frozenset[Selector]) -> list[WorkloadEntry]:
        """Entries whose selectors are all among the caller's, in a stable order."""
        found = [e for e in self._entries.values() if matches(e.selectors, selectors)]
        return sorted(found, key=lambda e: (str(e.spiffe_id), e.id))

    def svids_for(self, selectors: frozenset[Selector]) -> list[X509Svid]:
        """The current X509-SVIDs of the entries that match `selectors` (entries whose SVID is
        not minted yet are left out)."""
        return [self._svids[e.id] for e in self.entries_for(selectors) if e.id in self._svids]

    def quarantine_of(self, spiffe_id: SpiffeId, now: datetime) -> QuarantineNotice | None:
        """The quarantine of `spiffe_id` in force at `now` (None: none)."""
        found = self._quarantines.get(spiffe_id)
        return found if found is not None and found.active(now) else None

    @property
    def quarantines(self) -> list[QuarantineNotice]:
        return list(self._quarantines.values())

    @property
    def held(self) -> int:
        """How many SVIDs the cache holds."""
        return len(self._svids)

    def svid(self, entry_id: str) -> X509Svid | None:
        return self._svids.get(entry_id)

    async def wait_changed(self, after: int) -> int:
        """Wait until the generation is past `after`; bound it with `asyncio.timeout`."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._generation > after)
            return self._generation

    # -- writers (the sync loop) ---------------------------------------------------------

    async def set_bundle(self, bundle: TrustBundle) -> None:
        if self._bundle is None or bundle.sequence != self._bundle.sequence:
            self._bundle = bundle
            await self._bump()

    async def set_federated(self, bundles: Iterable[TrustBundle]) -> None:
        """Replace the federated bundles (each change is seen by the Workload API's
        streams, which send them again)."""
        new = {b.trust_domain: b for b in bundles}
        if {d: b.to_jwks() for d, b in new.items()} == {
            d: b.to_jwks() for d, b in self._federated.items()
        }:
            return
        self._federated = new
        await self._bump()

    async def set_entries(self, entries: Iterable[WorkloadEntry]) -> None:
        """Replace the entry set; SVIDs of entries that are gone are dropped at once."""
        new = {e.id: e for e in entries}
        if new == self._entries:
            return
        self._entries = new
        for entry_id in list(self._svids):
            entry = new.get(entry_id)
            if entry is None or entry.spiffe_id != self._svids[entry_id].spiffe_id:
                del self._svids[entry_id]
        await self._bump()

    async def set_quarantines(self, notices: Iterable[QuarantineNotice]) -> list[SpiffeId]:
        """Replace the quarantines; SVIDs of a quarantined identity are dropped at once.
        Returns the identities released (no longer listed)."""
        new = {n.spiffe_id: n for n in notices}
        if new == self._quarantines:
            return []
        released = [s for s in self._quarantines if s not in new]
        self._quarantines = new
        for entry_id, svid in list(self._svids.items()):
            if svid.spiffe_id in new:
                del self._svids[entry_id]
        await self._bump()
        return released

    async def lift_expired(self, now: datetime) -> list[QuarantineNotice]:
        """Forget the quarantines whose `until` passed by this agent's clock (trustd may be
        out of reach to say so); returns them."""
        expired = [n for n in self._quarantines.values() if not n.active(now)]
        if expired:
            for notice in expired:
                del self._quarantines[notice.spiffe_id]
            await self._bump()
        return expired

    async def put_svid(self, svid: X509Svid) -> None:
        if svid.entry_id not in self._entries:
            return
        if svid.spiffe_id in self._quarantines:
            # Minted before the quarantine arrived: not to be served.
            return
        self._svids[svid.entry_id] = svid
        await self._bump()

    async def drop_svids(self, entry_ids: Iterable[str]) -> None:
        """Stop serving these SVIDs (revoked, or signed by a tainted key)."""
        dropped = [i for i in entry_ids if self._svids.pop(i, None) is not None]
        if dropped:
            await self._bump()

    async def _bump(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()
