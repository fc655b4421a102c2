"""The agent's flows: the connection verdicts its enforcement points report (the tc
program's ring buffer, the ext_authz decisions) aggregated per key and interval, and shipped
to trustd as `FlowBatch`es (`POST /v1/agents/flows`, trustd.domain.flows).

Cost stays bounded whatever the traffic: the ring buffer is read on the event loop in
bounded slices (a flood the agent cannot keep up with fills it, and the kernel counts what
it had no room for; the datapath never waits), one interval holds at most `MAX_OPEN` distinct
flows (more are counted, not kept), and while trustd is away at most `MAX_QUEUED` flows wait,
the oldest dropped first. Everything lost is counted and reported in the next batch's
`dropped`, in events.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import itertools
import struct
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import ValidationError

from pki.clock import Clock
from trustd import metrics
from trustd.agent.client import NodeIdentity, ServerClient, ServerError
from trustd.agent.enforcement import libbpf
from trustd.agent.enforcement.ebpf import (
    EVENT_DIRECTIONS,
    EVENT_PROTOCOLS,
    EVENT_REASONS,
    EVENT_VERDICTS,
    BpfEnforcer,
    FlowEvent,
)
from trustd.agent.enforcement.state import VerdictTable
from trustd.domain.flows import (
    MAX_BATCH_BYTES,
    MAX_FLOWS_PER_BATCH,
    Direction,
    FlowBatch,
    FlowReport,
    L7Attributes,
    Observer,
    Reason,
    Verdict,
)

log = structlog.get_logger("trustd.agent.flows")
# Distinct flows one interval holds; events of further keys are counted as dropped.
MAX_OPEN = 4 * MAX_FLOWS_PER_BATCH
# Flows kept while trustd is away (minutes of a busy node's traffic); the oldest go first.
MAX_QUEUED = 10 * MAX_FLOWS_PER_BATCH
# The ring buffer is read this often (enforce.c wakes the agent earlier only for a burst),
# at most READ_BUDGET events at a time; after a full slice the reader pauses READ_PAUSE, so
# a flood costs the agent at most READ_BUDGET / READ_PAUSE (40,000) events a second.
READ_TICK = 0.1
READ_BUDGET = 2048
READ_PAUSE = 0.05
MAX_BACKOFF = 30.0
# How often a loss is logged at most (the metrics count every one).
DROP_LOG_EVERY = 10.0
# `struct flow_event` (bpf/enforce.c), in the host's byte order: ktime, saddr, daddr, src,
# dst, sport, dport, family, proto, verdict, reason, direction, padding.
_EVENT = struct.Struct("=Q16s16sIIHHBBBBB7x")
assert _EVENT.size == ctypes.sizeof(FlowEvent)
_UNSPECIFIED = "0.0.0.0"  # noqa: S104 - an address not known, not a bind address


class FlowAggregator:
    """Events folded per key for one interval: count, first and last seen (monotonic ns).
    At most `cap` keys; an event of a key beyond them is counted in `dropped`."""

    def __init__(self, cap: int = MAX_OPEN) -> None:
        self._cap = cap
        self._open: dict[Hashable, list[int]] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, key: Hashable, at_ns: int, count: int = 1) -> bool:
        """Fold `count` events of `key` seen at `at_ns`; False if it had no room."""
        found = self._open.get(key)
        if found is None:
            if len(self._open) >= self._cap:
                self.dropped += count
                return False
            self._open[key] = [count, at_ns, at_ns]
            return True
        found[0] += count
        if at_ns < found[1]:
            found[1] = at_ns
        elif at_ns > found[2]:
            found[2] = at_ns
        return True

    def drain(self) -> tuple[list[tuple[Hashable, int, int, int]], int]:
        """The interval's (key, count, first ns, last ns) and its dropped events; the next
        interval starts empty."""
        folded = [(key, c, first, last) for key, (c, first, last) in self._open.items()]
        dropped, self._open, self.dropped = self.dropped, {}, 0
        return folded, dropped


class FlowQueue:
    """Flows waiting for trustd, oldest first, at most `cap`; the events of flows dropped to
    make room (and any lost before) go out as the next batch's `dropped`."""

    def __init__(self, cap: int = MAX_QUEUED) -> None:
        self._cap = cap
        self._flows: deque[FlowReport] = deque()
        self.dropped = 0
        self.dropped_here = 0  # of `dropped`: the queue's own, for the metrics

    def __len__(self) -> int:
        return len(self._flows)

    def push(self, flows: list[FlowReport], dropped: int = 0) -> None:
        self.dropped += dropped
        self._flows.extend(flows)
        while len(self._flows) > self._cap:
            lost = self._flows.popleft().count
            self.dropped += lost
            self.dropped_here += lost

    def batch(self, since: datetime, now: datetime) -> FlowBatch | None:
        """The next batch (the oldest flows, at most MAX_FLOWS_PER_BATCH and MAX_BATCH_BYTES
        of them), or None when there is nothing to say. It stays queued until `shipped`."""
        if not self._flows and not self.dropped:
            return None
        flows: list[FlowReport] = []
        size = 0
        for flow in itertools.islice(self._flows, MAX_FLOWS_PER_BATCH):
            size += len(flow.model_dump_json()) + 1
            if flows and size > MAX_BATCH_BYTES:
                break
            flows.append(flow)
        start = min([since, *(f.first_seen for f in flows)])
        end = max([now, *(f.last_seen for f in flows)])
        return FlowBatch(flows=flows, dropped=self.dropped, interval_start=start, interval_end=end)

    def shipped(self, batch: FlowBatch) -> None:
        """`batch` reached trustd (or was refused for good): forget it (those of its flows
        still queued: the oldest may have been dropped meanwhile)."""
        sent = {id(flow) for flow in batch.flows}
        while self._flows and id(self._flows[0]) in sent:
            self._flows.popleft()
        self.dropped -= batch.dropped
        self.dropped_here = 0


class DatapathEvents:
    """The tc program's ring buffer, read on the event loop: when the kernel wakes the
    agent (a burst, see enforce.c) and on a tick, never more than READ_BUDGET events per
    slice, then back to the loop. Events are folded into the aggregator by their raw key;
    identities and addresses are resolved once per flow when the interval is drained."""

    def __init__(self, enforcer: BpfEnforcer, aggregator: FlowAggregator) -> None:
        self._enforcer = enforcer
        self._aggregator = aggregator
        self._ring: libbpf.RingBuffer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused: asyncio.TimerHandle | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._lost = 0
        self.events = 0

    def start(self) -> None:
        """Raises:
        EnforcementError: the ring buffer cannot be read.
        """
        self._loop = asyncio.get_running_loop()
        self._ring = self._enforcer.events()
        # Lost before this run (the counter lives as long as the pinned map) is not ours.
        self._lost = self._enforcer.events_lost()
        self._loop.add_reader(self._ring.fd, self._readable)
        self._tick = self._loop.call_later(READ_TICK, self._on_tick)

    def close(self) -> None:
        for handle in (self._paused, self._tick):
            if handle is not None:
                handle.cancel()
        if self._ring is not None and self._loop is not None:
            if self._paused is None:
                self._loop.remove_reader(self._ring.fd)
            self._ring.close()
        self._ring = None

    def lost(self) -> int:
        """Events the ring buffer had no room for since the last call."""
        total = self._enforcer.events_lost()
        lost, self._lost = total - self._lost, total
        return max(lost, 0)

    def _on_tick(self) -> None:
        assert self._loop is not None
        self._tick = self._loop.call_later(READ_TICK, self._on_tick)
        if self._paused is None:
            self.read()

    def _readable(self) -> None:
        if self.read() >= READ_BUDGET and self._ring is not None and self._loop is not None:
            # More is waiting: give the loop back for READ_PAUSE before the next slice.
            self._loop.remove_reader(self._ring.fd)
            self._paused = self._loop.call_later(READ_PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._ring is not None and self._loop is not None:
            self._loop.add_reader(self._ring.fd, self._readable)

    def read(self) -> int:
        """Fold one slice of events; returns how many."""
        if self._ring is None:
            return 0
        records = self._ring.read(READ_BUDGET)
        fold_events(records, self._aggregator)
        self.events += len(records)
        return len(records)


def fold_events(records: list[bytes], aggregator: FlowAggregator) -> None:
    """Fold `struct flow_event` records into `aggregator`, keyed as they come (the source
    port left out: every connection has its own)."""
    add = aggregator.add
    for row in _EVENT.iter_unpack(b"".join(records)):
        # (ebpf, saddr, daddr, src, dst, dport, family, proto, verdict, reason, direction)
        add((Observer.EBPF, *row[1:5], *row[6:]), row[0])


class FlowReporter:
    """One agent's flows: the aggregator both enforcement points feed, drained every
    `interval` into the bounded queue, which is shipped to trustd."""

    def __init__(
        self,
        table: Callable[[], VerdictTable],
        clock: Clock,
        interval: float = 1.0,
        *,
        open_cap: int = MAX_OPEN,
        queue_cap: int = MAX_QUEUED,
    ) -> None:
        self._table = table
        self._clock = clock
        self.interval = interval
        self.aggregator = FlowAggregator(open_cap)
        self.queue = FlowQueue(queue_cap)
        self.datapath: DatapathEvents | None = None
        self._numbers: tuple[VerdictTable, Mapping[int, str]] | None = None
        self._since = clock.now()
        self._dropped_logged = 0.0
        self.l7_events = 0

    def watch(self, enforcer: BpfEnforcer) -> None:
        """Read the datapath's events (on the running loop).

        Raises:
            EnforcementError: the ring buffer cannot be read.
        """
        self.datapath = DatapathEvents(enforcer, self.aggregator)
        self.datapath.start()

    def close(self) -> None:
        if self.datapath is not None:
            self.datapath.close()

    def record_l7(
        self,
        source: str | None,
        destination: str | None,
        source_address: str,
        destination_address: str,
        port: int,
        verdict: Verdict,
        reason: Reason,
        l7: tuple[str, str, str, int],
    ) -> None:
        """An ext_authz decision (on the loop's thread, as every decision is made), with
        what it saw of the request: (method, path without its query, host, status). Kept
        as given: checked and turned into wire form once per flow, when drained."""
        self.l7_events += 1
        self.aggregator.add(
            (
                Observer.EXT_AUTHZ,
                source,
                destination,
                source_address,
                destination_address,
                port,
                verdict,
                reason,
                l7,
            ),
            time.monotonic_ns(),
        )

    def _identities(self) -> Mapping[int, str]:
        table = self._table()
        if self._numbers is None or self._numbers[0] is not table:
            self._numbers = (table, {n: s for s, n in table.identities.items()})
        return self._numbers[1]

    def flush(self) -> int:
        """Drain the interval into the queue: returns how many flows it held."""
        lost = 0
        if self.datapath is not None:
            self.datapath.read()
            lost = self.datapath.lost()
            if lost:
                metrics.AGENT_FLOWS_DROPPED.labels("ring_buffer").inc(lost)
        folded, dropped = self.aggregator.drain()
        if dropped:
            metrics.AGENT_FLOWS_DROPPED.labels("aggregator").inc(dropped)
        dropped += lost
        now = self._clock.now()
        mono = time.monotonic_ns()
        names = self._identities()

        def wall(ns: int) -> datetime:
            return min(now, now - timedelta(microseconds=(mono - ns) / 1000))

        flows = []
        events = {Observer.EBPF: 0, Observer.EXT_AUTHZ: 0}
        for key, count, first, last in folded:
            try:
                report = _report(key, count, wall(first), wall(last), names)
            except ValidationError:  # a name the proxy gave that is no SPIFFE ID
                report = None
            if report is None:
                metrics.AGENT_FLOWS_DROPPED.labels("unnamed").inc(count)
                continue
            flows.append(report)
            events[report.observer] += count
        for observer, count in events.items():
            if count:
                metrics.AGENT_FLOW_EVENTS.labels(str(observer)).inc(count)
        queued_before = self.queue.dropped_here
        self.queue.push(flows, dropped)
        if self.queue.dropped_here > queued_before:
            metrics.AGENT_FLOWS_DROPPED.labels("queue").inc(self.queue.dropped_here - queued_before)
        if self.queue.dropped and time.monotonic() - self._dropped_logged > DROP_LOG_EVERY:
            self._dropped_logged = time.monotonic()
            log.warning("flow_events_dropped", dropped=self.queue.dropped, queued=len(self.queue))
        return len(flows)

    async def ship(self, client: ServerClient, node: NodeIdentity) -> int:
        """Send what is queued, a batch at a time; returns the flows sent.

        Raises:
            ServerError: trustd cannot be reached or failed (the batch stays queued).
        """
        sent = 0
        while (batch := self.queue.batch(self._since, self._clock.now())) is not None:
            try:
                result = await client.report_flows(node, batch)
            except ServerError as exc:
                if exc.status in (400, 409, 413, 422):
                    # Refused for what it holds: sending it again cannot help.
                    metrics.AGENT_FLOW_BATCHES.labels("refused").inc()
                    metrics.AGENT_FLOWS_DROPPED.labels("refused").inc(
                        sum(f.count for f in batch.flows)
                    )
                    log.error("flow_batch_refused", error=exc.detail, flows=len(batch.flows))
                    self.queue.shipped(batch)
                    self._since = batch.interval_end
                    continue
                metrics.AGENT_FLOW_BATCHES.labels("failed").inc()
                raise
            metrics.AGENT_FLOW_BATCHES.labels("sent").inc()
            if batch.dropped:
                log.info("flow_drops_reported", dropped=batch.dropped, flows=len(batch.flows))
            if result.refused:
                log.warning("flows_refused", refused=result.refused, accepted=result.accepted)
            self.queue.shipped(batch)
            self._since = batch.interval_end
            sent += len(batch.flows)
        return sent

    async def run(
        self, client: Callable[[], ServerClient], node: Callable[[], NodeIdentity]
    ) -> None:
        """Every interval: drain, then ship (backing off while trustd is away; the queue
        holds what waits)."""
        backoff, retry_at = 1.0, 0.0
        while True:
            await asyncio.sleep(self.interval)
            self.flush()
            if time.monotonic() < retry_at:
                continue
            try:
                await self.ship(client(), node())
                backoff = 1.0
            except ServerError as exc:
                log.warning(
                    "flow_batch_failed",
                    error=exc.detail,
                    queued=len(self.queue),
                    retry_in_s=backoff,
                )
                retry_at = time.monotonic() + backoff
                backoff = min(backoff * 2, MAX_BACKOFF)

    def status(self) -> dict[str, Any]:
        """What the reporter holds and has counted, for logs and tests."""
        return {
            "open": len(self.aggregator),
            "queued": len(self.queue),
            "dropped": self.queue.dropped + self.aggregator.dropped,
            "ebpf_events": self.datapath.events if self.datapath is not None else 0,
            "ext_authz_events": self.l7_events,
        }


def _address_or_unspecified(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return _UNSPECIFIED


def _report(
    key: Any, count: int, first: datetime, last: datetime, names: Mapping[int, str]
) -> FlowReport | None:
    """A folded key as the wire's FlowReport (None: an event this agent cannot name, from a
    program of another version)."""
    if key[0] is Observer.EXT_AUTHZ:
        (
            _,
            source,
            destination,
            saddr,
            daddr,
            port,
            verdict,
            reason,
            (method, path, host, status),
        ) = key
        return FlowReport(
            source=source,
            destination=destination,
            source_address=_address_or_unspecified(saddr),
            destination_address=_address_or_unspecified(daddr),
            destination_port=port,
            protocol="tcp",
            verdict=verdict,
            reason=reason,
            direction=Direction.INGRESS,
            observer=Observer.EXT_AUTHZ,
            count=count,
            first_seen=first,
            last_seen=last,
            l7=L7Attributes(method=method[:16], path=path[:1024], host=host[:255], status=status),
        )
    _, saddr, daddr, src, dst, dport, family, proto, verdict, reason, direction = key
    if (
        proto not in EVENT_PROTOCOLS
        or family not in (4, 6)
        or verdict >= len(EVENT_VERDICTS)
        or reason >= len(EVENT_REASONS)
        or direction >= len(EVENT_DIRECTIONS)
    ):
        return None
    if family == 4:
        source_address, destination_address = (
            str(ipaddress.IPv4Address(saddr[:4])),
            str(ipaddress.IPv4Address(daddr[:4])),
        )
    else:
        source_address, destination_address = (
            str(ipaddress.IPv6Address(saddr)),
            str(ipaddress.IPv6Address(daddr)),
        )
    return FlowReport(
        source=names.get(src) if src else None,
        destination=names.get(dst) if dst else None,
        source_address=source_address,
        destination_address=destination_address,
        destination_port=dport,
        protocol=EVENT_PROTOCOLS[proto],
        verdict=EVENT_VERDICTS[verdict],
        reason=EVENT_REASONS[reason],
        direction=EVENT_DIRECTIONS[direction],
        observer=Observer.EBPF,
        count=count,
        first_seen=first,
        last_seen=last,
    )
