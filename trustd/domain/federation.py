"""Federation relationships: another trust domain whose bundle trustd fetches from its
bundle endpoint (SPIFFE Federation §6), with the last good bundle and the status of the
last fetches. Values only; no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pki.bundle import TrustBundle
from pki.federation import BundleEndpointProfile

# Audit tags (`subject:object:action`).
CREATED = "federation:relationship:created"
DELETED = "federation:relationship:deleted"
BUNDLE_UPDATED = "federation:bundle:updated"
BUNDLE_REFUSED = "federation:bundle:refused"
MAX_ERROR = 1024


@dataclass(frozen=True)
class FederationStatus:
    """How the last fetches went: the last success, the last error (kept until a success
    clears it), consecutive failures and when the next fetch is due."""

    last_success_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    failures: int = 0
    next_refresh_at: datetime | None = None


@dataclass(frozen=True)
class Federation:
    """One relationship: the foreign trust domain, how to reach its bundle endpoint, and its
    bundle as last accepted (None: neither bootstrapped nor fetched yet)."""

    trust_domain: str
    bundle_endpoint_url: str
    profile: BundleEndpointProfile
    endpoint_spiffe_id: str | None
    bundle: TrustBundle | None
    # The sync revision at which the bundle last changed (agents hold it from there).
    revision: int
    created_by: str
    created_at: datetime
    status: FederationStatus
