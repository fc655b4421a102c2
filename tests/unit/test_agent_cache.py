"""The agent's SVID cache: matching, replacement, change notification."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pki.ca import Authority, create_intermediate, create_root
from pki.clock import SystemClock
from pki.keys import KeyType, generate_private_key
from pki.selectors import parse_selectors
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import X509SvidParams, issue_x509_svid
from trustd.agent.cache import SvidCache, WorkloadEntry, X509Svid

TD = TrustDomain.parse("example.org")


def _svid(entry: WorkloadEntry) -> X509Svid:
    clock = SystemClock()
    root_key = generate_private_key(KeyType.EC_P256)
    root = create_root(TD, root_key, clock, timedelta(days=1))
    key = generate_private_key(KeyType.EC_P256)
    inter = create_intermediate(
        TD, key, Authority(root, root_key, (), root), clock, timedelta(hours=2)
    )
    authority = Authority(inter, key, (), root)
    leaf_key = generate_private_key(KeyType.EC_P256)
    cert = issue_x509_svid(
        authority, X509SvidParams(entry.spiffe_id, leaf_key.public_key(), timedelta(hours=1)), clock
    )
    return X509Svid(entry.id, entry.spiffe_id, (cert, inter), leaf_key)


def _entry(entry_id: str, path: str, *selectors: str) -> WorkloadEntry:
    return WorkloadEntry(
        entry_id,
        SpiffeId.parse(f"spiffe://example.org{path}"),
        parse_selectors(selectors),
        3600,
        300,
    )


def test_matching_replacement_and_notification() -> None:
    async def scenario() -> None:
        cache = SvidCache()
        web = _entry("e1", "/web", "unix:uid:1000")
        db = _entry("e2", "/db", "unix:uid:1001", "unix:gid:50")
        await cache.set_entries([web, db])
        start = cache.generation
        waiter = asyncio.create_task(cache.wait_changed(start))
        await cache.put_svid(_svid(web))
        assert await asyncio.wait_for(waiter, 1) > start

        caller = parse_selectors(["unix:uid:1000", "unix:gid:1000"])
        assert [e.id for e in cache.entries_for(caller)] == ["e1"]
        assert [s.entry_id for s in cache.svids_for(caller)] == ["e1"]
        # db needs both of its selectors
        assert cache.entries_for(parse_selectors(["unix:uid:1001"])) == []

        # An entry whose SPIFFE ID changes loses its old SVID at once.
        await cache.set_entries([_entry("e1", "/web2", "unix:uid:1000"), db])
        assert cache.svids_for(caller) == []
        # An SVID for an entry the node no longer holds is not stored.
        await cache.put_svid(_svid(_entry("gone", "/x", "unix:uid:1")))
        assert cache.svid("gone") is None

    asyncio.run(scenario())
