"""Service-level errors. Every error derives from `pki.errors.TrustdError`; the API edge maps
each class to an HTTP status and an RFC 9457 problem type in one place (`trustd.api.problems`).
"""

from __future__ import annotations

from pki.errors import TrustdError


class NotFound(TrustdError):
    title = "Not found"


class Conflict(TrustdError):
    title = "Conflict"


class Unauthenticated(TrustdError):
    title = "Authentication required"


class NodeInactive(Unauthenticated):
    """The node was evicted or banned: its credentials are void until it attests again
    (an agent gives up rather than retrying a refusal that will not change)."""

    title = "Node no longer active"


class PermissionDenied(TrustdError):
    title = "Permission denied"


class InvalidRequest(TrustdError):
    title = "Invalid request"


class ReservedSpiffeId(InvalidRequest):
    """The SPIFFE ID is one trustd keeps for itself (its server, its agents)."""

    title = "Reserved SPIFFE ID"


class FeatureDisabled(TrustdError):
    """The request needs a feature this server has switched off (an experimental one such
    as WIT-SVIDs); the detail names the setting."""

    title = "Feature not enabled"


class PayloadTooLarge(TrustdError):
    title = "Request too large"


class BundleEndpointError(TrustdError):
    """A federated trust domain's bundle endpoint could not be fetched or answered with a
    bundle trustd refuses; the last good bundle stays."""

    title = "Bundle endpoint refused"


class StoreUnavailable(TrustdError):
    title = "Storage unavailable"


class NotReady(TrustdError):
    title = "Not ready"


class DatabaseUnusable(TrustdError):
    """The database exists but cannot be read as trustd's (corrupt file, not a database)."""

    title = "Database unusable"
