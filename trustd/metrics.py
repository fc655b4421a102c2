"""Prometheus metrics. One registry per process; `trustd serve --workers N` aggregates the
workers through prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The text format (0.0.4) has no `_created` samples: prometheus_client would export each as a
# gauge of its own (`trustd_svids_issued_created`), a second series per counter and label set
# that no rule or dashboard reads.
disable_created_metrics()  # type: ignore[no-untyped-call]


def render() -> bytes:
    """The exposition text of every metric, summed over the workers when there are several
    (the one rendering both the main listener and the metrics listener serve)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


SVIDS_ISSUED = Counter(
    "trustd_svids_issued_total", "SVIDs and certificates issued, by kind.", ["kind"]
)
ISSUANCE_FAILURES = Counter(
    "trustd_issuance_failures_total", "Issuance requests refused or failed, by kind.", ["kind"]
)
ISSUANCE_SECONDS = Histogram(
    "trustd_issuance_duration_seconds",
    "Time to issue and durably record one credential, by kind.",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
CA_EXPIRY = Gauge(
    "trustd_ca_expiry_timestamp_seconds",
    "When each active CA certificate or key expires (Unix time).",
    ["kind", "kid"],
    multiprocess_mode="max",
)
HTTP_REQUESTS = Histogram(
    "trustd_http_request_duration_seconds",
    "HTTP request latency by route and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
ADDRESS_REPORTS = Counter(
    "trustd_address_reports_total",
    "Workload address reports from agents, by outcome (changed, unchanged, refused).",
    ["outcome"],
)
FLOWS = Counter(
    "trustd_flows_total",
    "Flow reports from agents, by outcome (accepted; refused: about a workload the node "
    "does not host).",
    ["outcome"],
)
FLOW_CONNECTIONS = Counter(
    "trustd_flow_connections_total",
    "Connections seen in the flows agents reported and trustd stored, by verdict (allowed, "
    "denied, audit).",
    ["verdict"],
)
FLOW_BATCHES_THROTTLED = Counter(
    "trustd_flow_batches_throttled_total",
    "Flow batches refused unread because their node sent more than it may a minute.",
)
FLOWS_DROPPED = Counter(
    "trustd_flows_dropped_total",
    "Flow events agents lost before reporting them (ring buffer or queue full), by node.",
    ["node"],
)
FLOWS_PRUNED = Counter("trustd_flows_pruned_total", "Stored flows pruned by age or count.")
IPCACHE_CONFLICTS = Gauge(
    "trustd_ipcache_conflicts",
    "Reported workload addresses in conflict, by kind: declared (inside another identity's "
    "declared prefix: held back) or ambiguous (reported for two identities: denied).",
    ["kind"],
    multiprocess_mode="mostrecent",
)
# What the agents applied, as the server sees it (refreshed when /metrics is read; the
# rules in deploy/prometheus alert on them).
VERDICT_HEAD = Gauge(
    "trustd_verdict_revision",
    "The newest verdict revision compiled for the agents.",
    multiprocess_mode="mostrecent",
)
AGENTS_BEHIND = Gauge(
    "trustd_agents_behind",
    "Enforcing agents whose applied verdict revision is older than the newest.",
    multiprocess_mode="mostrecent",
)
AGENTS_BEHIND_APPLIED = Gauge(
    "trustd_agents_behind_oldest_applied_timestamp_seconds",
    "When the agent furthest behind last applied verdicts (Unix time; now when none is "
    "behind): its enforcement is as old as that.",
    multiprocess_mode="mostrecent",
)
# The agent's enforcement (one agent per node, one process).
VERDICT_REVISION = Gauge(
    "trustd_agent_verdict_revision", "The verdict revision the agent applied.", ["backend"]
)
AGENT_FLOW_EVENTS = Counter(
    "trustd_agent_flow_events_total",
    "Connection verdicts the agent aggregated into flows, by observer (ebpf, ext_authz).",
    ["observer"],
)
AGENT_FLOWS_DROPPED = Counter(
    "trustd_agent_flow_events_dropped_total",
    "Flow events lost, by where: ring_buffer (full), aggregator (too many distinct flows "
    "in one interval), queue (the server away for too long), refused (a batch refused), "
    "unnamed (an event the agent cannot put in a flow).",
    ["where"],
)
AGENT_FLOW_BATCHES = Counter(
    "trustd_agent_flow_batches_total",
    "Flow batches the agent sent, by outcome (sent, failed, refused).",
    ["outcome"],
)
AGENT_ADDRESS_REPORTS = Counter(
    "trustd_agent_address_reports_total",
    "Workload address reports the agent sent, by outcome (sent, failed).",
    ["outcome"],
)
VERDICT_ERRORS = Counter(
    "trustd_agent_verdict_errors_total",
    "Verdict updates refused or failed to apply, by reason (the last good state stays).",
    ["reason"],
)
FEDERATION_REFRESHES = Counter(
    "trustd_federation_refreshes_total",
    "Fetches of federated bundles, by trust domain and outcome (updated, unchanged, failed).",
    ["trust_domain", "outcome"],
)
