"""Attested nodes and their join tokens, as every layer above the store sees them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class NodeStatus(StrEnum):
    """The states a node moves through (evicted nodes attest again, banned never)."""

    ACTIVE = "active"
    EVICTED = "evicted"
    BANNED = "banned"


class Unmanaged(StrEnum):
    """A node's enforcement scope for unmanaged destinations (addresses in no entry): what
    its workloads' packets to them get. The node's always-allowed prefixes (DNS, the node,
    trustd) pass either way, and are all a quarantined identity reaches. `allow` is the
    default: traffic to what trustd does not manage is not trustd's to judge unless the
    operator says so."""

    ALLOW = "allow"
    DENY = "deny"


# At most this many always-allowed prefixes per node (the datapath's map holds 256, the
# agent adds the trustd server's addresses).
MAX_ALWAYS_ALLOWED = 64


@dataclass(frozen=True)
class Node:
    """An attested agent and the node SVID keys its credentials may be signed with."""

    spiffe_id: str
    attestor: str
    agent_id: str
    selectors: tuple[str, ...]
    status: NodeStatus
    svid_serial: str
    svid_public_key_pem: str = field(repr=False)
    svid_not_after: datetime
    attested_at: datetime
    previous_svid_serial: str | None = None
    previous_public_key_pem: str | None = field(default=None, repr=False)
    last_seen: datetime | None = None
    applied_revision: int = 0
    # The enforcement scope its agent applies (see `Unmanaged`).
    unmanaged: Unmanaged = Unmanaged.ALLOW
    always_allowed: tuple[str, ...] = ()

    def public_key_pem_for(self, serial: str) -> str | None:
        """The public key of the node SVID with `serial`, current or previous, if any."""
        if serial == self.svid_serial:
            return self.svid_public_key_pem
        if serial == self.previous_svid_serial:
            return self.previous_public_key_pem
        return None


@dataclass(frozen=True)
class JoinToken:
    """A single-use attestation secret; only the SHA-256 of its secret part is kept."""

    id: str
    token_hash: str = field(repr=False)
    selectors: tuple[str, ...]
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
