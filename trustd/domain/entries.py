"""Registration entries: selectors under a parent mapped to a SPIFFE ID."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pki.keys import KeyType


@dataclass(frozen=True)
class Entry:
    """A stored registration entry."""

    id: str
    spiffe_id: str
    parent_id: str
    selectors: tuple[str, ...]
    x509_ttl: int
    jwt_ttl: int
    dns_names: tuple[str, ...]
    admin: bool
    downstream: bool
    hint: str
    ip_addresses: tuple[str, ...]
    revision: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    # The foreign trust domains whose bundles the entry's workloads receive.
    federates_with: tuple[str, ...] = ()
    # The key type its X509-SVIDs are issued for; None: the trust domain's default.
    key_type: KeyType | None = None

    @property
    def selectors_key(self) -> str:
        """The selectors sorted and joined: what makes two entries the same entry."""
        return "|".join(sorted(self.selectors))


@dataclass(frozen=True)
class EntryAddress:
    """An address a node's agent found held by a workload with the entry's SPIFFE ID."""

    node_id: str
    spiffe_id: str
    address: str
    reported_at: datetime
