"""Observed flows: what agents report their datapath and ext_authz decided, stored with
retention, queried by the API and the CLI, overlaid on the policy graph, and replayed
against a draft policy before it is activated.

Flows go one way: they are never read back into a decision. A node may only speak for its
own workloads: a flow is stored only when the workload on the reporting node's side of it
(the source of an egress flow, the destination of an ingress or ext_authz one) is one the
node hosts, by SPIFFE ID (an entry its sync serves it) or, for an address in no entry, by
address (one its agent reported, or one its entries declare). Anything else is refused and
counted, so a forged report cannot draw an edge for another node's workloads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Engine

from pki.clock import Clock
from pki.errors import TrustdError
from policy.verdicts import PROTOCOLS, L4Compiler, l4_allows
from trustd import metrics
from trustd.domain.flows import (
    Direction,
    Flow,
    FlowBatch,
    FlowBatchResult,
    FlowFilter,
    FlowReport,
    Observer,
    OverlayEdge,
    TrafficEdge,
    Usage,
    Verdict,
)
from trustd.domain.ui import Edge
from trustd.errors import InvalidRequest
from trustd.leader import FenceCheck
from trustd.services.acme.ratelimit import LocalRateLimiter, RateLimiter
from trustd.services.agents import Agents, Hosted
from trustd.services.nodes import NodePrincipal
from trustd.services.policy import PolicyService
from trustd.settings import Settings
from trustd.store.db import transaction
from trustd.store.flows import create_flows, list_flows, list_traffic_edges, prune_flows

log = structlog.get_logger("trustd.flows")

MAX_PAGE = 1000
# The pairs the graph overlays at most (the busiest ones).
MAX_TRAFFIC_EDGES = 2000
# The observed flows a draft policy is replayed against at most (newest first).
MAX_IMPACT_FLOWS = 20_000
IMPACT_WINDOW = timedelta(days=1)


class FlowBatchesThrottled(TrustdError):
    """The node sent flow batches faster than `flow_batches_per_minute`."""

    title = "Too many flow batches"


def _hosts(hosted: Hosted, flow: FlowReport) -> bool:
    """Whether the workload on the reporting node's side of `flow` is the node's: the
    source of what the datapath saw leave, the destination of what it saw arrive and of
    every ext_authz decision (the agent's proxy answers for the workloads behind it)."""
    if flow.direction is Direction.EGRESS and flow.observer is Observer.EBPF:
        identity, address = flow.source, flow.source_address
    else:
        identity, address = flow.destination, flow.destination_address
    if identity is not None:
        return identity in hosted.spiffe_ids
    return hosted.holds(address)


def _row(node: str, batch: FlowBatch, flow: FlowReport) -> dict[str, Any]:
    l7 = flow.l7
    return {
        "node": node,
        "interval_start": batch.interval_start,
        "interval_end": batch.interval_end,
        "source": flow.source,
        "destination": flow.destination,
        "source_address": flow.source_address,
        "destination_address": flow.destination_address,
        "destination_port": flow.destination_port,
        "protocol": flow.protocol,
        "verdict": flow.verdict.value,
        "reason": flow.reason.value,
        "direction": flow.direction.value,
        "observer": flow.observer.value,
        "count": flow.count,
        "first_seen": flow.first_seen,
        "last_seen": flow.last_seen,
        "l7_method": l7.method if l7 else None,
        "l7_path": l7.path if l7 else None,
        "l7_host": l7.host if l7 else None,
        "l7_status": l7.status if l7 else None,
    }


def overlay(policy: Sequence[Edge], traffic: Sequence[TrafficEdge]) -> list[OverlayEdge]:
    """The graph from traffic: each allowed policy edge as seen or unused, and every pair
    with denied attempts (an explicit deny rule's edge or the default deny) as denied."""
    by_pair = {(e.source, e.destination): e for e in policy}
    used: dict[tuple[str, str], list[TrafficEdge]] = {}
    denied: dict[tuple[str, str], list[TrafficEdge]] = {}
    for seen in traffic:
        pair = (seen.source, seen.destination)
        (used if seen.verdict is not Verdict.DENIED else denied).setdefault(pair, []).append(seen)
    out: list[OverlayEdge] = []
    for edge in policy:
        if not edge.allowed:
            continue
        pair = (edge.source, edge.destination)
        seen_here = used.get(pair, [])
        out.append(
            OverlayEdge(
                edge.source,
                edge.destination,
                Usage.SEEN if seen_here else Usage.UNUSED,
                edge,
                count=sum(t.count for t in seen_here),
                flows=sum(t.flows for t in seen_here),
                last_seen=max((t.last_seen for t in seen_here), default=None),
            )
        )
    for pair, attempts in sorted(denied.items()):
        out.append(
            OverlayEdge(
                pair[0],
                pair[1],
                Usage.DENIED,
                by_pair.get(pair),
                count=sum(t.count for t in attempts),
                flows=sum(t.flows for t in attempts),
                last_seen=max(t.last_seen for t in attempts),
                reasons=tuple(sorted({t.reason for t in attempts})),
            )
        )
    return out


class Flows:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Clock,
        agents: Agents,
        policy: PolicyService,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._agents = agents
        self._policy = policy
        # Shared through Redis where replicas share one (an agent may talk to any of
        # them); in-process without.
        self._limiter = limiter or LocalRateLimiter()

    def admit(self, principal: NodePrincipal) -> None:
        """Count one flow batch of the node against `flow_batches_per_minute` (GCRA, a
        burst of the limit); called before the batch is read, so a flood is refused for
        the cost of authenticating it.

        Raises:
            FlowBatchesThrottled: the node is past its rate.
        """
        limit = self._settings.flow_batches_per_minute
        wait = self._limiter.check(f"flows:{principal.spiffe_id}", limit, 60.0)
        if wait:
            metrics.FLOW_BATCHES_THROTTLED.inc()
            raise FlowBatchesThrottled(
                f"at most {limit} flow batches a minute", retry_after=math.ceil(wait)
            )

    def report(self, principal: NodePrincipal, batch: FlowBatch) -> FlowBatchResult:
        """Store the flows of `batch` that are about the node's own workloads; refuse and
        count the others. The node's lost events (`dropped`) are counted by node. The
        batch was `admit`ted first.

        Raises:
            PolicyEvaluationError: the attestation policy failed (nothing is stored).
        """
        node = principal.spiffe_id
        if batch.dropped:
            metrics.FLOWS_DROPPED.labels(node).inc(batch.dropped)
        if not batch.flows:
            return FlowBatchResult(accepted=0, refused=0)
        hosted = self._agents.hosted(principal)
        rows = [_row(node, batch, f) for f in batch.flows if _hosts(hosted, f)]
        refused = len(batch.flows) - len(rows)
        with transaction(self._engine) as session:
            create_flows(session, rows)
        metrics.FLOWS.labels("accepted").inc(len(rows))
        for flow in batch.flows:
            if _hosts(hosted, flow):
                metrics.FLOW_CONNECTIONS.labels(flow.verdict.value).inc(flow.count)
        if refused:
            metrics.FLOWS.labels("refused").inc(refused)
            # Counted, not audited one by one: a node that misreports does it every batch.
            log.warning("flows_refused", node=node, refused=refused, accepted=len(rows))
        return FlowBatchResult(accepted=len(rows), refused=refused)

    def query(self, where: FlowFilter) -> list[Flow]:
        """Stored flows matching `where` (see `FlowFilter` for the order and the cursor).

        Raises:
            InvalidRequest: the page size is out of range, or `since` is not before `until`.
        """
        if not 0 < where.limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be 1..{MAX_PAGE}")
        if where.since is not None and where.until is not None and where.since >= where.until:
            raise InvalidRequest("since must be before until")
        with transaction(self._engine) as session:
            return list_flows(session, where)

    def traffic(self, window: timedelta) -> list[TrafficEdge]:
        """The flows of the last `window` between known identities, summed by pair,
        verdict and reason (the busiest `MAX_TRAFFIC_EDGES`)."""
        since = self._clock.now() - window
        with transaction(self._engine) as session:
            return list_traffic_edges(session, since, MAX_TRAFFIC_EDGES)

    def impact(self, revision: int) -> list[Flow]:
        """The flows allowed in the last day (between known identities, TCP and UDP) that
        policy revision `revision` would deny at L4, compiled by the verdict compiler the
        nodes' verdicts come from; newest first, one per (source, destination, port,
        protocol).

        Raises:
            NotFound: no such revision.
            PolicyEvaluationError: the revision's mesh policy failed to evaluate.
        """
        draft = self._policy.get_revision(revision)
        since = self._clock.now() - IMPACT_WINDOW
        seen: dict[tuple[str, str, int, str], Flow] = {}
        with transaction(self._engine) as session:
            flows = list_flows(
                session, FlowFilter(verdict=Verdict.ALLOWED, since=since, limit=MAX_IMPACT_FLOWS)
            )
        for flow in flows:
            if flow.source is None or flow.destination is None or flow.protocol not in PROTOCOLS:
                continue
            key = (flow.source, flow.destination, flow.destination_port, flow.protocol)
            seen.setdefault(key, flow)
        if not seen:
            return []
        compiler = L4Compiler(draft.modules, draft.data)
        verdicts = compiler.verdicts({i for key in seen for i in key[:2]})
        return [
            flow
            for (src, dst, port, proto), flow in seen.items()
            if not l4_allows(verdicts, dst, src, port, proto)
        ]

    def prune(self, fenced: FenceCheck | None = None) -> int:
        """Delete flows past `flow_retention` and the oldest beyond `flow_max_rows`; run by
        the leader's periodic duties, *fenced* by its epoch. Returns how many went.

        Raises:
            LostLeadership: a successor leads; nothing was deleted.
        """
        before = self._clock.now() - self._settings.flow_retention
        with transaction(self._engine) as session:
            if fenced is not None:
                fenced(session)
            removed = prune_flows(session, before, self._settings.flow_max_rows)
        if removed:
            metrics.FLOWS_PRUNED.inc(removed)
            log.info("flows_pruned", removed=removed)
        return removed
