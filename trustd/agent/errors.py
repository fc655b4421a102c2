"""Errors raised by the agent. All derive from `pki.errors.TrustdError`; the Workload API maps
them to gRPC status codes in one place (`trustd.agent.workload_api`)."""

from __future__ import annotations

from pki.errors import TrustdError


class WorkloadAttestationError(TrustdError):
    """The caller of the Workload API could not be attested (it exited, or its process
    facts could not be read consistently)."""

    title = "Workload attestation failed"


class Unimplemented(TrustdError):
    """The Workload API does not offer this profile here (WIT-SVIDs where the trust domain's
    bundle has no `wit-svid` key, WIT-SVID §6.2)."""

    title = "Not implemented"


class EnforcementError(TrustdError):
    """An enforcement backend could not start or apply a revision (a missing kernel
    feature, a refused program, a full map). The last applied state stays in force."""

    title = "Enforcement failed"


class InvalidVerdicts(TrustdError):
    """A verdict update cannot be applied (malformed, a revision gap, an unknown identity):
    the agent keeps its last good state and asks for the full state."""

    title = "Invalid verdict update"


class TpmError(TrustdError):
    """The node's TPM could not be reached or refused a command."""

    title = "TPM error"
