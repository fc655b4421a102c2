"""Verdict propagation: a mesh policy change -> 100 agents applied, and a quarantine -> 100
agents applied, p50/p99, on one server and on two replicas sharing PostgreSQL and Redis; and
a scale line (1,000 agents, 10,000 entries: time until every agent applied a change, server
RSS and CPU).

Real `trustd serve` processes (TLS, one worker each) on a fresh PostgreSQL database, with
Redis. The simulated agents run in separate agent processes (neither in the servers nor in
the process that makes the changes), each process holding a share of them. Every node
attests with a join token through the agent's own client (`trustd.agent.client`:
first-contact pinning, attestation, node credentials) and gets registration entries (a
distinct SPIFFE ID with a /32 in `ip_addresses` each), so every node has local destination
identities. The agents long-poll `GET /v1/agents/sync` with `verdict_since` and apply each
update with `VerdictTable.applied` (the agent's validation and apply, without the kernel);
their next long-poll is their acknowledgement.

Each round posts a mesh policy (`POST /v1/admin/policy/bundles`, the shipped modules with new
`data.mesh`) whose compiled verdicts differ for every node: one allow rule per node,
node i's first workload accepting node (i + round + 1) mod N's on TCP port 8000 + round. An
agent-round lasts from just before the POST to that agent having applied the verdicts of the
new policy revision; after each round every agent's table is checked against the policy, and
after the last `GET /v1/verdicts/agents` must report lag 0 for every node.

Baseline, measured in the same run with the same agents, connections and servers (the fan-out
floor): the agents long-poll without `verdict_since` (not enforcing) and each round edits a
registration entry of no node, so every long-poll wakes and answers with the node's entries:
waking the long-polls and answering them, without verdicts.

Quarantine rounds, after the policy rounds: each quarantines one more workload identity
(`POST /v1/admin/identities/quarantine`); an agent-round lasts from just before the POST to
that agent holding the identity among its denied identities (what its kernel would drop).

Two replicas: two `trustd serve` on the same database and Redis, agents alternating between
them, every change posted to the first replica only (the second's agents wake over Redis).

Output: a table, then `RESULT <measure> <value> <unit> baseline <value> ratio <r> target <t>
met|not met` lines. Target: p99 < 1 s at 100 agents (last measured before verdicts were
compiled once per change: 2.5-2.6 s, floor 1.5 s).

Usage: python bench/propagation.py [--agents 100] [--rounds 10] [--procs 2] [--scale]
       [--scale-only]
Needs: PostgreSQL on 127.0.0.1:5432 (trust auth), Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pki.clock import SystemClock
from pki.keys import KeyType, generate_private_key
from trustd.agent.client import NodeIdentity, ServerClient, ServerError, pin_first_contact
from trustd.agent.enforcement.state import PolicyKey, VerdictTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    REDIS_URL,
    cpu_seconds,
    free_port,
    percentile,
    read_token,
    result,
    scratch_database,
    start_server,
)

TD = "spiffe://example.org"
SYNC_WAIT = 30.0
# How long after a round every agent is surely parked in its next long-poll again.
SETTLE = 0.5
ROUND_TIMEOUT = 120.0
# The first answers carry every agent's full state (10,000 identities at scale).
START_TIMEOUT = 900.0
BASE_PORT = 8000
TCP = 6
TARGET = 1.0
# Replicas share the database and so must share the key-encryption key.
PASSPHRASE = "propagation bench shared passphrase"  # noqa: S105 - a throwaway CA


def workload(node: int, index: int = 0) -> str:
    return f"{TD}/bench/n{node}/w{index}"


def address(node: int, index: int, per_node: int) -> str:
    n = node * per_node + index
    return f"10.{n // 65024}.{n // 254 % 256}.{n % 254 + 1}"


def mesh_rules(nodes: int, round_: int) -> dict[str, Any]:
    """Node i's first workload accepts node (i + round + 1) mod N's on BASE_PORT + round."""
    return {
        "allow": [
            {
                "name": f"r{round_}-n{i}",
                "source": workload((i + round_ + 1) % nodes),
                "destination": workload(i),
                "ports": [BASE_PORT + round_],
                "protocols": ["tcp"],
            }
            for i in range(nodes)
        ],
        "deny": [],
    }


# -- the agent processes ---------------------------------------------------------------------


@dataclass
class Agent:
    """One node's agent: its client and node credential, sync cursors and verdict table."""

    index: int
    client: ServerClient
    identity: NodeIdentity
    since: int = 0
    revoked_since: int | None = None
    table: VerdictTable = field(default_factory=VerdictTable)
    retries: int = 0

    def marker(self, enforce: bool) -> int:
        # Enforcing: the policy revision of the verdicts held; otherwise the sync revision.
        if enforce:
            return int(self.table.l7["revision"]) if self.table.l7 else 0
        return self.since

    async def run(self, enforce: bool, stop: asyncio.Event, report: Callable[..., None]) -> None:
        while not stop.is_set():
            try:
                result = await self.client.sync(
                    self.identity,
                    self.since,
                    self.revoked_since,
                    SYNC_WAIT,
                    self.table.revision if enforce else None,
                )
            except ServerError as exc:
                # A keep-alive connection the server closed as it was reused: ask again
                # at once, as the agent's sync loop would (after its back-off).
                if exc.status != 0:
                    raise
                self.retries += 1
                continue
            if not result["changed"]:
                continue
            if result.get("verdicts"):
                self.table = self.table.applied(result["verdicts"])
            self.revoked_since = int(result["revocation_revision"])
            self.since = int(result["revision"])
            report(
                self.index,
                self.marker(enforce),
                self.table.revision,
                len(self.table.revoked),
                time.perf_counter(),
            )


def check_table(agent: Agent, nodes: int, round_: int) -> str | None:
    """Why the node's table is not its round's (None: it is): it allows exactly the
    round's source on the round's port."""
    ids = agent.table.identities
    dst = ids[workload(agent.index)]
    src = ids[workload((agent.index + round_ + 1) % nodes)]
    if agent.table.policy != {PolicyKey(dst, src, BASE_PORT + round_, TCP): True}:
        return f"agent {agent.index}: verdicts of round {round_} not applied"
    return None


def agent_process(*args: Any) -> None:
    """Attest this process's share of the nodes, then run their agents as told."""
    asyncio.run(_agent_process(*args))


async def _agent_process(
    conn: multiprocessing.connection.Connection,
    urls: list[str],
    ca_sha256: str,
    tokens: list[tuple[int, str]],
    nodes: int,
) -> None:
    loop = asyncio.get_running_loop()
    bundle = await asyncio.to_thread(pin_first_contact, urls[0], ca_sha256)
    clock = SystemClock()

    async def attest(index: int, token: str) -> Agent:
        client = ServerClient(urls[index % len(urls)], bundle, clock)
        key = await asyncio.to_thread(generate_private_key, KeyType.EC_P256)
        identity, _ = await client.attest("join_token", {"token": token}, key)
        return Agent(index, client, identity)

    agents = list(await asyncio.gather(*(attest(i, t) for i, t in tokens)))
    conn.send(("ready", [(a.index, str(a.identity.spiffe_id)) for a in agents]))
    pending: list[tuple[int, int, int, int, float]] = []

    def report(index: int, marker: int, revision: int, quarantined: int, at: float) -> None:
        if not pending:
            loop.call_soon(flush)
        pending.append((index, marker, revision, quarantined, at))

    def flush() -> None:
        conn.send(("reached", list(pending)))
        pending.clear()

    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    stop, tasks = asyncio.Event(), list[asyncio.Task[None]]()
    try:
        while True:
            command = await commands.get()
            if command[0] == "run":
                stop = asyncio.Event()
                tasks = [asyncio.create_task(a.run(command[1], stop, report)) for a in agents]
                for task in tasks:
                    task.add_done_callback(
                        lambda t: (
                            conn.send(("failed", repr(t.exception())))
                            if not t.cancelled() and t.exception()
                            else None
                        )
                    )
            elif command[0] == "stop":
                stop.set()
                conn.send(("stopping",))
            elif command[0] == "join":
                await asyncio.gather(*tasks)
                conn.send(("joined",))
            elif command[0] == "check":
                problems = [p for a in agents if (p := check_table(a, nodes, command[1]))]
                conn.send(("checked", problems[:3], sum(a.retries for a in agents)))
            elif command[0] == "exit":
                return
    finally:
        for task in tasks:
            task.cancel()
        for agent in agents:
            await agent.client.aclose()


# -- the coordinator -------------------------------------------------------------------------


class Fleet:
    """The agent processes, as the coordinator sees them."""

    def __init__(self, procs: list[tuple[Any, multiprocessing.connection.Connection]]) -> None:
        self.procs = procs
        # Per agent: (marker, verdict revision, quarantined identities held, when).
        self.reached: dict[int, list[tuple[int, int, int, float]]] = {}
        # Long-polls asked again after a dropped keep-alive connection, as last counted.
        self.retries = 0
        self.nodes: dict[int, str] = {}
        self._replies: list[list[Any]] = [[] for _ in procs]
        self._cond = threading.Condition()
        self._failed: str | None = None
        for n, (_, conn) in enumerate(procs):
            threading.Thread(target=self._read, args=(n, conn), daemon=True).start()

    def _read(self, n: int, conn: multiprocessing.connection.Connection) -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                message = conn.recv()
                with self._cond:
                    if message[0] == "reached":
                        for index, marker, revision, held, at in message[1]:
                            self.reached.setdefault(index, []).append((marker, revision, held, at))
                    elif message[0] == "failed":
                        self._failed = message[1]
                    else:
                        self._replies[n].append(message)
                    self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready():
                if self._failed:
                    raise SystemExit(f"an agent failed: {self._failed}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit("timed out waiting for the agents")
                self._cond.wait(left)

    def ask(self, command: tuple[Any, ...], timeout: float = ROUND_TIMEOUT) -> list[Any]:
        """Send `command` to every agent process; their replies."""
        with self._cond:
            for replies in self._replies:
                replies.clear()
        for _, conn in self.procs:
            conn.send(command)
        self._wait(lambda: all(self._replies), timeout)
        return [replies[0] for replies in self._replies]

    def ready(self) -> dict[int, str]:
        self._wait(lambda: all(self._replies), ROUND_TIMEOUT * 5)
        for replies in self._replies:
            self.nodes.update(dict(replies.pop(0)[1]))
        return self.nodes

    def first_at(self, index: int, target: int, quarantined: int = 0) -> float | None:
        return next(
            (
                at
                for m, _, held, at in self.reached.get(index, ())
                if m >= target and held >= quarantined
            ),
            None,
        )

    def applied_revision(self, index: int) -> int:
        return self.reached[index][-1][1]

    async def wait_for(
        self, target: int, within: float = ROUND_TIMEOUT, quarantined: int = 0
    ) -> None:
        """Until every agent has applied the change `target` (and holds `quarantined`
        denied identities)."""
        nodes = list(self.nodes)
        await asyncio.to_thread(
            self._wait,
            lambda: all(self.first_at(i, target, quarantined) is not None for i in nodes),
            within,
        )

    def run(self, enforce: bool) -> None:
        with self._cond:
            self.reached.clear()
        for _, conn in self.procs:
            conn.send(("run", enforce))


@dataclass
class Admin:
    client: httpx.AsyncClient
    spare_entry: str
    modules: dict[str, str]
    data: dict[str, Any]
    nodes: int

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.client.request(method, path, json=body)
        if response.is_error:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    async def entry_change(self, _: int = 0) -> int:
        """Edit the entry of no node: the sync revision moves, every long-poll wakes."""
        entry = await self.call("PATCH", f"/v1/entries/{self.spare_entry}", {"hint": "x"})
        return int(entry["revision"])

    async def quarantine(self, round_: int) -> None:
        """Quarantine one more workload identity (round 1: the first node's)."""
        body = {"spiffe_id": workload((round_ - 1) % self.nodes), "reason": f"round {round_}"}
        await self.call("POST", "/v1/admin/identities/quarantine", body)

    async def post_policy(self, round_: int) -> int:
        body = {
            "modules": self.modules,
            "data": {**self.data, "mesh": mesh_rules(self.nodes, round_)},
        }
        return int((await self.call("POST", "/v1/admin/policy/bundles", body))["revision"])


async def measure(
    fleet: Fleet, change: Callable[[int], Awaitable[int]], rounds: int, check: bool
) -> list[float]:
    """Per round and agent: seconds from just before the change to the agent applying it."""
    latencies: list[float] = []
    for round_ in range(1, rounds + 1):
        started = time.perf_counter()
        target = await change(round_)
        await fleet.wait_for(target)
        for index in fleet.nodes:
            at = fleet.first_at(index, target)
            assert at is not None
            latencies.append(at - started)
        if check:
            replies = fleet.ask(("check", round_))
            problems = [p for reply in replies for p in reply[1]]
            if problems:
                raise SystemExit("; ".join(problems))
            fleet.retries = sum(reply[2] for reply in replies)
        await asyncio.sleep(SETTLE)
    return latencies


async def measure_quarantine(fleet: Fleet, admin: Admin, rounds: int) -> list[float]:
    """Per round and agent: seconds from just before a quarantine to the agent holding it
    among its denied identities."""
    latencies: list[float] = []
    for round_ in range(1, rounds + 1):
        started = time.perf_counter()
        await admin.quarantine(round_)
        await fleet.wait_for(0, quarantined=round_)
        for index in fleet.nodes:
            at = fleet.first_at(index, 0, round_)
            assert at is not None
            latencies.append(at - started)
        await asyncio.sleep(SETTLE)
    return latencies


async def switch(
    fleet: Fleet, admin: Admin, enforce: bool, first: Callable[[], Awaitable[int]]
) -> None:
    """Every agent answers one last change and leaves no long-poll behind; then they run
    in the other mode until they applied `first()`."""
    fleet.ask(("stop",))
    await admin.entry_change()
    await asyncio.to_thread(fleet.ask, ("join",))
    fleet.run(enforce)
    await fleet.wait_for(await first(), START_TIMEOUT)
    await asyncio.sleep(SETTLE)


async def enrol(
    admin: httpx.AsyncClient,
    urls: list[str],
    count: int,
    per_node: int,
    procs: int,
) -> tuple[Fleet, str]:
    tokens = []
    for _ in range(count):
        response = await admin.post("/v1/join-tokens", json={"selectors": []})
        response.raise_for_status()
        tokens.append(response.json())
    ca_sha256 = tokens[0]["ca_sha256"][0]
    context = multiprocessing.get_context("spawn")
    started = []
    for p in range(procs):
        share = [(i, tokens[i]["token"]) for i in range(p, count, procs)]
        parent, child = context.Pipe()
        proc = context.Process(
            target=agent_process, args=(child, urls, ca_sha256, share, count), daemon=True
        )
        proc.start()
        started.append((proc, parent))
    fleet = Fleet(started)
    nodes = await asyncio.to_thread(fleet.ready)
    specs = [
        {
            "spiffe_id": workload(index, w),
            "parent_id": node_id,
            "selectors": [f"unix:uid:{10000 + w}"],
            "ip_addresses": [address(index, w, per_node)],
        }
        for index, node_id in sorted(nodes.items())
        for w in range(per_node)
    ]
    for start in range(0, len(specs), 500):
        response = await admin.post(
            "/v1/entries/batch", json={"entries": specs[start : start + 500]}
        )
        response.raise_for_status()
    return fleet, ca_sha256


@dataclass
class Outcome:
    floor: list[float] = field(default_factory=list)
    verdicts: list[float] = field(default_factory=list)
    quarantine: list[float] = field(default_factory=list)
    rss_mib: float = 0.0
    # Server CPU seconds per round (every server process together).
    cpu_s: float = 0.0
    floor_cpu_s: float = 0.0
    retries: int = 0


async def run(
    urls: list[str],
    bundle_pem: Path,
    token: str,
    pids: list[int],
    count: int,
    per_node: int,
    rounds: int,
    procs: int,
    quarantine_rounds: int = 0,
) -> Outcome:
    tls = ssl.create_default_context(cafile=str(bundle_pem))
    outcome = Outcome()
    async with httpx.AsyncClient(
        base_url=urls[0], verify=tls, timeout=120, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        # Created before the nodes attest at once: on a fresh database the first change
        # inserts the sync-state row, and concurrent first changes collide on it.
        spare = await client.post(
            "/v1/entries",
            json={
                "spiffe_id": f"{TD}/bench/spare",
                "parent_id": f"{TD}/bench/no-node",
                "selectors": ["unix:uid:1"],
            },
        )
        spare.raise_for_status()
        fleet, _ = await enrol(client, urls, count, per_node, procs)
        bundles = (await client.get("/v1/admin/policy/bundles")).json()
        active = next(b for b in bundles if b["active"])
        shipped = (await client.get(f"/v1/admin/policy/bundles/{active['revision']}")).json()
        admin = Admin(client, spare.json()["id"], shipped["modules"], shipped["data"], count)
        try:
            # The floor: the same long-polls, woken by an entry change, without verdicts.
            fleet.run(False)
            await fleet.wait_for(await admin.entry_change(), START_TIMEOUT)
            await asyncio.sleep(SETTLE)
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            outcome.floor = await measure(fleet, admin.entry_change, rounds, False)
            outcome.floor_cpu_s = (sum(cpu_seconds(pid) for pid in pids) - cpu_before) / rounds
            # Verdicts: the full state first, then one policy change per round.
            await switch(fleet, admin, True, lambda: admin.post_policy(0))
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            outcome.verdicts = await measure(fleet, admin.post_policy, rounds, True)
            outcome.cpu_s = (sum(cpu_seconds(pid) for pid in pids) - cpu_before) / rounds
            outcome.rss_mib = sum(rss_mib(pid) for pid in pids)
            outcome.retries = fleet.retries
            if quarantine_rounds:
                outcome.quarantine = await measure_quarantine(fleet, admin, quarantine_rounds)
            # Each agent's next long-poll acknowledges what it applied.
            deadline = time.monotonic() + ROUND_TIMEOUT
            while lagging := await lags(admin, fleet):
                if time.monotonic() > deadline:
                    raise SystemExit(f"GET /v1/verdicts/agents: {lagging[0]}")
                await asyncio.sleep(0.1)
        finally:
            for _, conn in fleet.procs:
                with contextlib.suppress(OSError):
                    conn.send(("exit",))
            for proc, _ in fleet.procs:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
    return outcome


async def lags(admin: Admin, fleet: Fleet) -> list[str]:
    """The agents `GET /v1/verdicts/agents` does not report at the revision they hold."""
    rows = {r["node_id"]: r for r in await admin.call("GET", "/v1/verdicts/agents")}
    out = []
    for index, node_id in fleet.nodes.items():
        row = rows.get(node_id)
        if (
            row is None
            or row["lag"] != 0
            or row["applied_revision"] != fleet.applied_revision(index)
        ):
            out.append(f"agent {index} lags: {row}")
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its children (the workers), MiB."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if status.parent.name == str(pid) or fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total / 1024


@contextlib.contextmanager
def servers(replicas: int, work: Path) -> Iterator[tuple[list[str], Path, str, list[int]]]:
    """`replicas` servers on one fresh database and Redis: URLs, bundle, admin token, pids."""
    env = {"TRUSTD_REDIS_URL": REDIS_URL, "TRUSTD_KEY_PASSPHRASE": PASSPHRASE}
    procs: list[subprocess.Popen[str]] = []
    with scratch_database("trustd_bench_propagation") as db_url:
        try:
            urls = []
            for n in range(replicas):
                port = free_port()
                procs.append(start_server(work / f"var{n}", port, 1, db_url, env))
                urls.append(f"https://127.0.0.1:{port}")
            yield urls, work / "var0" / "bundle.pem", read_token(procs[0]), [p.pid for p in procs]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)


def row(topology: str, change: str, latencies: list[float], floor: list[float] | None) -> str:
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    ratio = f"{p99 / percentile(floor, 99):9.1f}x" if floor else f"{'-':>10}"
    target = "" if floor is None else f"  [{'met' if p99 < TARGET else 'not met'}]"
    return (
        f"{topology:<11} {change:<30} {len(latencies):>5} {p50 * 1000:>8.1f} "
        f"{p99 * 1000:>8.1f} {max(latencies) * 1000:>8.1f} {ratio}{target}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--procs", type=int, default=2, help="agent processes")
    parser.add_argument("--scale", action="store_true", help="add the 1,000-agent scale line")
    parser.add_argument("--scale-only", action="store_true")
    args = parser.parse_args()
    print(
        f"Verdict propagation to {args.agents} agents in {args.procs} agent processes, "
        f"{args.rounds} rounds per line (change posted -> agent applied)"
    )
    print(
        f"{'topology':<11} {'change':<30} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'p99/floor':>10}  target p99 < 1 s"
    )
    results = []
    runs = [] if args.scale_only else [(1, "1 server"), (2, "2 replicas")]
    for replicas, name in runs:
        with tempfile.TemporaryDirectory() as tmp, servers(replicas, Path(tmp)) as c:
            out = asyncio.run(run(*c, args.agents, 1, args.rounds, args.procs, args.rounds))
        print(row(name, "floor: entry change, no verdict", out.floor, None))
        print(row(name, "mesh policy change", out.verdicts, out.floor))
        print(row(name, "quarantine", out.quarantine, out.floor))
        print(
            f"  server CPU per change: floor {out.floor_cpu_s * 1000:.0f} ms, policy "
            f"{out.cpu_s * 1000:.0f} ms ({out.cpu_s * 1000 / args.agents:.1f} ms per agent)"
        )
        if out.retries:
            print(f"  ({out.retries} long-polls asked again after a dropped connection)")
        p99, floor = percentile(out.verdicts, 99), percentile(out.floor, 99)
        tag = name.replace(" ", "_")
        results.append(
            result(f"policy_p99_{args.agents}_agents_{tag}", p99, "s", floor, "<1", p99 < TARGET)
        )
        q99 = percentile(out.quarantine, 99)
        results.append(
            result(
                f"quarantine_p99_{args.agents}_agents_{tag}", q99, "s", floor, "<1", q99 < TARGET
            )
        )
    if args.scale or args.scale_only:
        agents, per_node, rounds = 1000, 10, 2
        with tempfile.TemporaryDirectory() as tmp, servers(1, Path(tmp)) as c:
            out = asyncio.run(run(*c, agents, per_node, rounds, max(args.procs, 4)))
        print(row("1 server", f"scale: {agents} agents floor", out.floor, None))
        print(row("1 server", f"scale: {agents} agents policy", out.verdicts, out.floor))
        # Every agent applied: the slowest agent of each round, averaged over the rounds.
        n = len(out.verdicts) // rounds
        all_applied = sum(max(out.verdicts[r * n : (r + 1) * n]) for r in range(rounds)) / rounds
        floor_all = sum(max(out.floor[r * n : (r + 1) * n]) for r in range(rounds)) / rounds
        results.append(
            result(
                "scale_1000_agents_10000_entries_all_applied",
                all_applied,
                "s",
                floor_all,
                "-",
                None,
            )
        )
        results.append(result("scale_server_rss", out.rss_mib, "MiB", out.rss_mib, "-", None))
        results.append(
            result("scale_server_cpu_per_change", out.cpu_s, "cpu-s", all_applied, "-", None)
        )
    print(
        "2 replicas: every change posted to one, half the agents on the other (woken over "
        "Redis); after the last round GET /v1/verdicts/agents said lag 0 for every agent"
    )
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end)")
    for line in results:
        print(line)


if __name__ == "__main__":
    main()
