"""Verdict propagation: a mesh policy change -> 100 agents applied, p50/p99, on one server
and on two replicas sharing PostgreSQL and Redis.

Real `trustd serve` processes (TLS, one worker each) on a fresh PostgreSQL database, with
Redis. 100 nodes attest with join tokens through the agent's own client
(`trustd.agent.client`: first-contact pinning, attestation, node credentials), each with one
registration entry (a distinct SPIFFE ID with a /32 in `ip_addresses`), so every node has a
local destination identity. 100 simulated agents in this process long-poll
`GET /v1/agents/sync` with `verdict_since`, apply each update with `VerdictTable.applied` (the
agent's validation and apply, without the kernel) and acknowledge the verdict revision.

Each round posts a mesh policy (`POST /v1/admin/policy/bundles`, the shipped modules with new
`data.mesh`) whose compiled verdicts differ for every node: one allow rule per workload,
workload i accepting workload (i + round + 1) mod N on TCP port 8000 + round. An agent-round
lasts from just before the POST to that agent having applied and acknowledged the verdicts of
the new policy revision; after each round every agent's table is checked against the policy,
and after the last `GET /v1/verdicts/agents` must report lag 0 for every node.

Baseline, measured in the same run with the same agents, connections and servers (the fan-out
floor): the agents long-poll without `verdict_since` (not enforcing) and each round edits a
registration entry of no node, so every long-poll wakes, answers with the node's entries and
is acknowledged: waking 100 long-polls and answering them, without compiling, storing or
applying verdicts.

Two replicas: two `trustd serve` on the same database and Redis, agents alternating between
them, every change posted to the first replica only (the second's agents wake over Redis).

Target: p99 < 1 s at 100 agents.

Usage: python bench/propagation.py [--agents 100] [--rounds 10]
Needs: PostgreSQL on 127.0.0.1:5432 (trust auth), Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pki.clock import SystemClock
from pki.keys import KeyType, generate_private_key
from trustd.agent.client import NodeIdentity, ServerClient, pin_first_contact
from trustd.agent.enforcement.state import PolicyKey, VerdictTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REDIS_URL, free_port, percentile, read_token, scratch_database, start_server

TD = "spiffe://example.org"
SYNC_WAIT = 30.0
# How long after a round every agent is surely parked in its next long-poll again.
SETTLE = 0.5
ROUND_TIMEOUT = 60.0
BASE_PORT = 8000
TCP = 6
# Replicas share the database and so must share the key-encryption key.
PASSPHRASE = "propagation bench shared passphrase"  # noqa: S105 - a throwaway CA


def workload(index: int) -> str:
    return f"{TD}/bench/w{index}"


def mesh_rules(agents: int, round_: int) -> dict[str, Any]:
    """Workload i accepts workload (i + round + 1) mod N on port BASE_PORT + round."""
    return {
        "allow": [
            {
                "name": f"r{round_}-w{i}",
                "source": workload((i + round_ + 1) % agents),
                "destination": workload(i),
                "ports": [BASE_PORT + round_],
                "protocols": ["tcp"],
            }
            for i in range(agents)
        ],
        "deny": [],
    }


@dataclass
class Agent:
    """One node's agent: its client and node credential, sync cursors and verdict table;
    `reached` holds (change marker, when applied and acknowledged)."""

    index: int
    client: ServerClient
    identity: NodeIdentity
    since: int = 0
    revoked_since: int | None = None
    table: VerdictTable = field(default_factory=VerdictTable)
    reached: list[tuple[int, float]] = field(default_factory=list)

    def marker(self, enforce: bool) -> int:
        # Enforcing: the policy revision of the verdicts held; otherwise the sync revision.
        if enforce:
            return int(self.table.l7["revision"]) if self.table.l7 else 0
        return self.since

    def first_at(self, target: int) -> float | None:
        return next((at for marker, at in self.reached if marker >= target), None)

    async def run(self, enforce: bool, stop: asyncio.Event, progress: asyncio.Event) -> None:
        try:
            await self._loop(enforce, stop, progress)
        finally:
            progress.set()  # a failed agent ends the round at once, with its error

    async def _loop(self, enforce: bool, stop: asyncio.Event, progress: asyncio.Event) -> None:
        while not stop.is_set():
            result = await self.client.sync(
                self.identity,
                self.since,
                self.revoked_since,
                SYNC_WAIT,
                self.table.revision if enforce else None,
            )
            if not result["changed"]:
                continue
            if result.get("verdicts"):
                self.table = self.table.applied(result["verdicts"])
            self.revoked_since = int(result["revocation_revision"])
            self.since = int(result["revision"])
            await self.client.ack(
                self.identity, self.since, self.table.revision if enforce else None
            )
            self.reached.append((self.marker(enforce), time.perf_counter()))
            progress.set()


@dataclass
class Fleet:
    agents: list[Agent]
    admin: httpx.AsyncClient
    spare_entry: str
    modules: dict[str, str]
    data: dict[str, Any]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    enforce: bool = False

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.admin.request(method, path, json=body)
        if response.is_error:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    async def wait_for(self, target: int) -> None:
        """Until every agent has applied and acknowledged the change `target`."""
        async with asyncio.timeout(ROUND_TIMEOUT):
            while any(a.first_at(target) is None for a in self.agents):
                for task in self.tasks:
                    if task.done():
                        task.result()  # re-raises the agent's error
                self.progress.clear()
                await self.progress.wait()

    async def start(self, enforce: bool, target: int) -> None:
        self.enforce, self.stop = enforce, asyncio.Event()
        for agent in self.agents:
            agent.reached.clear()
        self.tasks = [
            asyncio.create_task(a.run(enforce, self.stop, self.progress)) for a in self.agents
        ]
        await self.wait_for(target)
        await asyncio.sleep(SETTLE)

    async def finish(self) -> None:
        """Every agent answers one last change and leaves no long-poll behind."""
        self.stop.set()
        await self.entry_change()
        async with asyncio.timeout(ROUND_TIMEOUT):
            await asyncio.gather(*self.tasks)

    async def entry_change(self) -> int:
        """Edit the entry of no node: the sync revision moves, every long-poll wakes."""
        entry = await self.call("PATCH", f"/v1/entries/{self.spare_entry}", {"hint": "x"})
        return int(entry["revision"])

    async def post_policy(self, round_: int) -> int:
        body = {
            "modules": self.modules,
            "data": {**self.data, "mesh": mesh_rules(len(self.agents), round_)},
        }
        return int((await self.call("POST", "/v1/admin/policy/bundles", body))["revision"])

    async def measure(self, change: Callable[[int], Awaitable[int]], rounds: int) -> list[float]:
        latencies: list[float] = []
        for round_ in range(1, rounds + 1):
            started = time.perf_counter()
            target = await change(round_)
            await self.wait_for(target)
            for agent in self.agents:
                at = agent.first_at(target)
                assert at is not None
                latencies.append(at - started)
            if self.enforce:
                self.check_verdicts(round_)
            await asyncio.sleep(SETTLE)
        return latencies

    def check_verdicts(self, round_: int) -> None:
        """Each node's table allows exactly its round's source on the round's port."""
        n = len(self.agents)
        for agent in self.agents:
            ids = agent.table.identities
            dst = ids[workload(agent.index)]
            src = ids[workload((agent.index + round_ + 1) % n)]
            if agent.table.policy != {PolicyKey(dst, src, BASE_PORT + round_, TCP): True}:
                raise SystemExit(f"agent {agent.index}: verdicts of round {round_} not applied")

    async def check_lag(self) -> None:
        rows = {r["node_id"]: r for r in await self.call("GET", "/v1/verdicts/agents")}
        for agent in self.agents:
            row = rows.get(str(agent.identity.spiffe_id))
            if row is None or row["lag"] != 0 or row["applied_revision"] != agent.table.revision:
                raise SystemExit(f"GET /v1/verdicts/agents: agent {agent.index} lags: {row}")


async def enrol(urls: list[str], admin: httpx.AsyncClient, count: int) -> list[Agent]:
    """`count` nodes attested with join tokens, each with one entry with a /32; agents are
    spread over the replicas' URLs."""
    tokens = []
    for _ in range(count):
        response = await admin.post("/v1/join-tokens", json={"selectors": []})
        response.raise_for_status()
        tokens.append(response.json())
    bundle = await asyncio.to_thread(pin_first_contact, urls[0], tokens[0]["ca_sha256"][0])

    async def attest(index: int) -> Agent:
        client = ServerClient(urls[index % len(urls)], bundle, SystemClock())
        key = await asyncio.to_thread(generate_private_key, KeyType.EC_P256)
        identity, _ = await client.attest("join_token", {"token": tokens[index]["token"]}, key)
        return Agent(index, client, identity)

    agents = list(await asyncio.gather(*(attest(i) for i in range(count))))
    specs = [
        {
            "spiffe_id": workload(a.index),
            "parent_id": str(a.identity.spiffe_id),
            "selectors": [f"unix:uid:{10000 + a.index}"],
            "ip_addresses": [f"10.213.{a.index // 200}.{a.index % 200 + 1}"],
        }
        for a in agents
    ]
    response = await admin.post("/v1/entries/batch", json={"entries": specs})
    response.raise_for_status()
    return agents


async def run(
    urls: list[str], bundle_pem: Path, token: str, count: int, rounds: int
) -> dict[str, list[float]]:
    tls = ssl.create_default_context(cafile=str(bundle_pem))
    async with httpx.AsyncClient(
        base_url=urls[0], verify=tls, timeout=60, headers={"Authorization": f"Bearer {token}"}
    ) as admin:
        # Created before the nodes attest at once: on a fresh database the first change
        # inserts the sync-state row, and concurrent first changes collide on it.
        spare = await admin.post(
            "/v1/entries",
            json={
                "spiffe_id": f"{TD}/bench/spare",
                "parent_id": f"{TD}/bench/no-node",
                "selectors": ["unix:uid:1"],
            },
        )
        spare.raise_for_status()
        agents = await enrol(urls, admin, count)
        bundles = (await admin.get("/v1/admin/policy/bundles")).json()
        active = next(b for b in bundles if b["active"])
        shipped = (await admin.get(f"/v1/admin/policy/bundles/{active['revision']}")).json()
        fleet = Fleet(agents, admin, spare.json()["id"], shipped["modules"], shipped["data"])
        try:
            # The floor: the same long-polls, woken by an entry change, without verdicts.
            await fleet.start(enforce=False, target=await fleet.entry_change())
            floor = await fleet.measure(lambda _: fleet.entry_change(), rounds)
            await fleet.finish()
            # Verdicts: the full state first, then one policy change per round.
            await fleet.start(enforce=True, target=await fleet.post_policy(0))
            verdicts = await fleet.measure(fleet.post_policy, rounds)
            await fleet.check_lag()
        finally:
            for task in fleet.tasks:
                task.cancel()
            await asyncio.gather(*fleet.tasks, return_exceptions=True)
            for agent in agents:
                await agent.client.aclose()
    return {"floor": floor, "verdicts": verdicts}


@contextlib.contextmanager
def servers(replicas: int, work: Path) -> Iterator[tuple[list[str], Path, str]]:
    """`replicas` servers on one fresh database and Redis: URLs, trust bundle, admin token."""
    env = {"TRUSTD_REDIS_URL": REDIS_URL, "TRUSTD_KEY_PASSPHRASE": PASSPHRASE}
    procs: list[subprocess.Popen[str]] = []
    with scratch_database("trustd_bench_propagation") as db_url:
        try:
            urls = []
            for n in range(replicas):
                port = free_port()
                procs.append(start_server(work / f"var{n}", port, 1, db_url, env))
                urls.append(f"https://127.0.0.1:{port}")
            yield urls, work / "var0" / "bundle.pem", read_token(procs[0])
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)


def row(topology: str, change: str, latencies: list[float], floor: list[float] | None) -> str:
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    ratio = f"{p99 / percentile(floor, 99):9.1f}x" if floor else f"{'-':>10}"
    target = "" if floor is None else f"  [{'met' if p99 < 1 else 'not met'}]"
    return (
        f"{topology:<11} {change:<30} {len(latencies):>5} {p50 * 1000:>8.1f} "
        f"{p99 * 1000:>8.1f} {max(latencies) * 1000:>8.1f} {ratio}{target}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(
        f"Verdict propagation to {args.agents} agents, {args.rounds} rounds per line "
        "(change posted -> agent applied + acked)"
    )
    print(
        "floor = the same long-polls woken by an entry change and answered without verdicts "
        "(agents not enforcing): wake, sync answer, ack"
    )
    print(
        f"{'topology':<11} {'change':<30} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'p99/floor':>10}  target p99 < 1 s"
    )
    for replicas, name in ((1, "1 server"), (2, "2 replicas")):
        with tempfile.TemporaryDirectory() as tmp, servers(replicas, Path(tmp)) as cluster:
            result = asyncio.run(run(*cluster, args.agents, args.rounds))
        print(row(name, "floor: entry change, no verdict", result["floor"], None))
        print(row(name, "mesh policy change", result["verdicts"], result["floor"]))
    print(
        "2 replicas: every change posted to one, half the agents on the other (woken over "
        "Redis); after the last round GET /v1/verdicts/agents said lag 0 for every agent"
    )
    print(
        f"(machine: {os.cpu_count()} cores, shared by the servers, PostgreSQL, Redis and the "
        f"{args.agents} agents)"
    )


if __name__ == "__main__":
    main()
