"""Errors raised by the agent. All derive from `pki.errors.TrustdError`; the Workload API maps
them to gRPC status codes in one place (`trustd.agent.workload_api`)."""

from __future__ import annotations

from pki.errors import TrustdError


class WorkloadAttestationError(TrustdError):
    """The caller of the Workload API could not be attested (it exited, or its process
    facts could not be read consistently)."""

    title = "Workload attestation failed"
