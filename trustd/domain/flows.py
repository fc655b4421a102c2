"""The flow wire model: what an agent reports of the connections its datapath judged, one
typed model used by the agent that aggregates them and the server that stores them.

A flow is an aggregate, not a packet: the agent folds every event its datapath reports (the
tc program's ring buffer, trustd/agent/bpf/enforce.c, and its own ext_authz decisions) into
one row per (source, destination, port, protocol, verdict, reason, observer) and interval,
with a count. That keeps the cost bounded under a flood: a SYN flood from one workload is
one row with a large count, and the events the ring buffer had no room for are reported as
`dropped`, never waited for (Hubble reports lost events the same way).

Identities are SPIFFE IDs where the datapath's identity number maps to one (the agent holds
the map from its verdict state), and null for an address in no entry (identity 0 in the
datapath: "unknown"). The server accepts a flow only when the workload on the reporting
node's side of it (the source for egress, the destination for ingress and ext_authz) is one
the node hosts, so a node cannot make an edge appear for another node's workloads.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    model_validator,
)

from trustd.domain.ui import Edge

# The most flows one batch may carry, and the most batches' worth the agent keeps queued
# while the server is away; past that the oldest aggregates are dropped and counted.
MAX_FLOWS_PER_BATCH = 1000
# The most JSON bytes of flows one batch carries: half the server's default request limit
# (TRUSTD_MAX_REQUEST_BYTES, 1 MiB), since 1,000 flows with long SPIFFE IDs and L7 paths
# would exceed it and be refused whole (413).
MAX_BATCH_BYTES = 512 * 1024


class Verdict(enum.StrEnum):
    """What happened to the connection."""

    ALLOWED = "allowed"
    DENIED = "denied"
    # Audit mode: the policy would have denied it, the datapath let it through.
    AUDIT = "audit"


class Reason(enum.StrEnum):
    """Why the datapath or the proxy decided as it did (enforce.c's counter slots)."""

    POLICY = "policy"  # a policy verdict (allow or deny) decided it
    REVOKED = "revoked"  # the source identity is quarantined (trustd.services.quarantines)
    STALE = "stale"  # deny-all: the agent's state is older than its staleness limit
    UNMANAGED = "unmanaged"  # the destination is in no entry; the node's scope decided
    AUDIT_WOULD_DENY = "audit-would-deny"  # audit mode let through what policy denies


class Direction(enum.StrEnum):
    """Which side of the flow the reporting node observed it from."""

    EGRESS = "egress"  # leaving a workload of this node: the source is the node's
    INGRESS = "ingress"  # arriving at a workload of this node: the destination is the node's


class Observer(enum.StrEnum):
    """Which enforcement point reported the flow."""

    EBPF = "ebpf"  # the tc program, L3/L4
    EXT_AUTHZ = "ext_authz"  # the agent's ext_authz / auth_request decision, L7


# IANA protocol numbers the datapath judges, by name.
Protocol = Annotated[str, Field(pattern=r"^(tcp|udp|icmp)$")]


# A batch names the same few workload addresses a thousand times over; parsing each anew
# was half the cost of validating a full batch. Refusals raise, and are never cached.
@functools.lru_cache(maxsize=4096)
def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


Address = Annotated[str, AfterValidator(_address)]
SpiffeIdText = Annotated[StrictStr, Field(min_length=10, max_length=2048, pattern=r"^spiffe://")]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class L7Attributes(_Wire):
    """What an ext_authz decision saw of the request (never headers' values, never bodies)."""

    method: Annotated[str, Field(max_length=16)]
    path: Annotated[str, Field(max_length=1024)]
    host: Annotated[str, Field(max_length=255)] = ""
    status: Annotated[StrictInt, Field(ge=100, le=599)]


class FlowReport(_Wire):
    """One aggregated flow: every event of one key in one interval."""

    source: SpiffeIdText | None
    destination: SpiffeIdText | None
    source_address: Address
    destination_address: Address
    destination_port: Annotated[StrictInt, Field(ge=0, lt=65536)]
    protocol: Protocol
    verdict: Verdict
    reason: Reason
    direction: Direction
    observer: Observer = Observer.EBPF
    count: Annotated[StrictInt, Field(gt=0, lt=2**63)]
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    l7: L7Attributes | None = None

    @model_validator(mode="after")
    def _ordered(self) -> FlowReport:
        if self.first_seen > self.last_seen:
            raise ValueError("first_seen is after last_seen")
        return self


class FlowBatch(_Wire):
    """`POST /v1/agents/flows`: what one agent saw in one interval."""

    flows: Annotated[list[FlowReport], Field(max_length=MAX_FLOWS_PER_BATCH)]
    # Events lost before aggregation (ring buffer full) or aggregates dropped from the
    # agent's bounded queue since the previous batch.
    dropped: Annotated[StrictInt, Field(ge=0, lt=2**63)] = 0
    interval_start: AwareDatetime
    interval_end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> FlowBatch:
        if self.interval_start > self.interval_end:
            raise ValueError("interval_start is after interval_end")
        return self


class FlowBatchResult(_Wire):
    """The server's answer: how many flows were stored and how many refused (a flow about
    workloads the node does not host)."""

    accepted: int
    refused: int


# -- what the server stores and answers -----------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """One stored flow report, with the node that reported it and its row id (the keyset
    paging cursor: ids only grow, so `after` an id is everything stored since)."""

    id: int
    node: str
    interval_start: datetime
    interval_end: datetime
    source: str | None
    destination: str | None
    source_address: str
    destination_address: str
    destination_port: int
    protocol: str
    verdict: Verdict
    reason: Reason
    direction: Direction
    observer: Observer
    count: int
    first_seen: datetime
    last_seen: datetime
    l7_method: str | None = None
    l7_path: str | None = None
    l7_host: str | None = None
    l7_status: int | None = None


@dataclass(frozen=True)
class FlowFilter:
    """Which flows a query wants. `source` and `destination` match a SPIFFE ID exactly, or
    every ID under a path prefix ending in `/` (`spiffe://example.org/ns/web/`)."""

    source: str | None = None
    destination: str | None = None
    verdict: Verdict | None = None
    reason: Reason | None = None
    node: str | None = None
    # last_seen within [since, until).
    since: datetime | None = None
    until: datetime | None = None
    # Keyset paging: flows with a larger id, oldest first; None: the newest first.
    after: int | None = None
    limit: int = 100


@dataclass(frozen=True)
class TrafficEdge:
    """The flows between two identities over a window, by verdict and reason (the graph's
    overlay)."""

    source: str
    destination: str
    verdict: Verdict
    reason: Reason
    count: int
    flows: int
    last_seen: datetime


class Usage(enum.StrEnum):
    """What the traffic overlay says of an edge."""

    SEEN = "seen"  # allowed by the policy and used in the window
    UNUSED = "unused"  # allowed by the policy, not used in the window: least-privilege candidate
    DENIED = "denied"  # attempts the datapath or the proxy denied in the window


@dataclass(frozen=True)
class OverlayEdge:
    """One edge of the graph from traffic: the policy's edge (None: the pair is denied by
    default) with what was observed on it."""

    source: str
    destination: str
    usage: Usage
    policy: Edge | None
    count: int = 0
    flows: int = 0
    last_seen: datetime | None = None
    # Why the denied attempts were denied (`Reason` values), when usage is DENIED.
    reasons: tuple[str, ...] = ()

    @property
    def decided_by(self) -> str:
        """The policy rules that decide the edge, as the page names them."""
        if self.policy is not None and self.policy.rules:
            kind = "allow" if self.policy.allowed else "deny"
            return ", ".join(f"{kind} rule {rule.name}" for rule in self.policy.rules)
        if self.policy is not None and self.policy.allowed:
            return "allowed"
        return "default deny (no allow rule)" if self.policy is None else "denied"
