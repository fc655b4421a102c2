"""Federation: a bundle change in b.example until a.example's agents hold it, p50/p99 at 100
agents; and bundle endpoint requests/s against a trivial endpoint of the same server.

Two real `trustd serve` (TLS, one worker each): A (a.example, SQLite) federating with B
(b.example, PostgreSQL) over `https_spiffe`, B's refresh hint `--hint` seconds, the leader's
ticker and the minimum refresh interval 1 s. The agents are simulated: each attests to A with
a join token through the agent's own client (`trustd.agent.client`), has one registration
entry that federates with b.example, and long-polls `GET /v1/agents/sync` as the agent does;
its Workload API serves exactly the federated bundles the sync answer carries, so the moment
an agent holds B's new sequence is the moment its workloads can fetch it. They run on one
event loop in this process (the changes are made through the servers' admin sockets).

A round prepares the next JWT key in B (`POST /v1/admin/ca/prepare`, what `trustd ca
prepare --kind jwt` sends: the bundle grows by a key and its sequence advances), and lasts
from just before that request to each agent holding the new sequence of b.example; the key is
activated after the round, so the next prepare is allowed.

Baseline, same run, same agents: the same change in A's own bundle, until each agent holds
A's new sequence: the fan-out floor, without federation's fetch.

Bundle endpoint: `GET /v1/bundle` on B with `--clients` keep-alive connections for
`--seconds`, then `GET /healthz` (trivial) the same way.

Target: a change reaches A's workloads within its refresh hint plus 1 s (p99).

Usage: python bench/federation.py [--agents 100] [--rounds 8] [--hint 2] [--clients 16]
       [--seconds 5]
Needs: PostgreSQL on 127.0.0.1:5432 (trust auth).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from pki.clock import SystemClock
from pki.keys import KeyType, generate_private_key
from trustd.agent.client import NodeIdentity, ServerClient, pin_first_contact

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import TRUSTD, free_port, percentile, result, scratch_database, start_server

SYNC_WAIT = 30.0
ROUND_TIMEOUT = 60.0


def admin(data_dir: Path) -> httpx.AsyncClient:
    """The server's admin socket (local root: no token)."""
    transport = httpx.AsyncHTTPTransport(uds=str(data_dir / "admin.sock"))
    return httpx.AsyncClient(transport=transport, base_url="http://trustd", timeout=60)


async def call(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await client.request(method, path, json=body)
    if response.is_error:
        raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
    return response.json() if response.content else None


class Agents:
    """The simulated agents of A and the bundle sequences each holds, with the time each
    sequence first arrived."""

    def __init__(self) -> None:
        # (agent, trust domain) -> [(sequence, first held at)], in arrival order.
        self.seen: dict[tuple[int, str], list[tuple[int, float]]] = {}
        self.stop = asyncio.Event()

    async def run(self, index: int, client: ServerClient, identity: NodeIdentity) -> None:
        since = 0
        while not self.stop.is_set():
            answer = await client.sync(identity, since, None, SYNC_WAIT)
            if not answer["changed"]:
                continue
            since = int(answer["revision"])
            now = time.perf_counter()
            held = {"a.example": answer["bundle"], **answer.get("federated_bundles", {})}
            for domain, bundle in held.items():
                history = self.seen.setdefault((index, domain), [])
                sequence = int(bundle.get("spiffe_sequence", 0))
                if not history or history[-1][0] != sequence:
                    history.append((sequence, now))

    def arrived(self, count: int, domain: str, sequence: int) -> list[float] | None:
        """When each agent first held `sequence` (or later) of `domain`; None until all do."""
        times = []
        for index in range(count):
            at = [t for s, t in self.seen.get((index, domain), ()) if s >= sequence]
            if not at:
                return None
            times.append(at[0])
        return times


async def enrol(
    a: httpx.AsyncClient, url: str, count: int, agents: Agents
) -> list[asyncio.Task[None]]:
    tokens = [await call(a, "POST", "/v1/join-tokens", {"selectors": []}) for _ in range(count)]
    bundle = await asyncio.to_thread(pin_first_contact, url, tokens[0]["ca_sha256"][0])
    clock = SystemClock()

    async def attest(token: str) -> tuple[ServerClient, NodeIdentity]:
        client = ServerClient(url, bundle, clock)
        key = await asyncio.to_thread(generate_private_key, KeyType.EC_P256)
        identity, _ = await client.attest("join_token", {"token": token}, key)
        return client, identity

    nodes = await asyncio.gather(*(attest(t["token"]) for t in tokens))
    specs = [
        {
            "spiffe_id": f"spiffe://a.example/bench/n{i}",
            "parent_id": str(identity.spiffe_id),
            "selectors": ["unix:uid:1000"],
            "federates_with": ["b.example"],
        }
        for i, (_, identity) in enumerate(nodes)
    ]
    await call(a, "POST", "/v1/entries/batch", {"entries": specs})
    return [asyncio.create_task(agents.run(i, c, ident)) for i, (c, ident) in enumerate(nodes)]


async def sequence_of(url: str, bundle: Path) -> int:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(bundle))) as c:
        return int((await c.get(f"{url}/v1/bundle")).json()["spiffe_sequence"])


async def round_(
    server: httpx.AsyncClient,
    url: str,
    bundle: Path,
    domain: str,
    agents: Agents,
    count: int,
) -> list[float]:
    """One JWT key prepared on `server`: seconds until each agent holds its bundle."""
    started = time.perf_counter()
    await call(server, "POST", "/v1/admin/ca/prepare", {"kind": "jwt"})
    sequence = await sequence_of(url, bundle)
    deadline = started + ROUND_TIMEOUT
    while (times := agents.arrived(count, domain, sequence)) is None:
        if time.perf_counter() > deadline:
            raise SystemExit(f"{domain} sequence {sequence} did not reach every agent")
        await asyncio.sleep(0.01)
    await call(server, "POST", "/v1/admin/ca/activate", {"kind": "jwt"})
    return [t - started for t in times]


async def throughput(url: str, bundle: Path, path: str, clients: int, seconds: float) -> float:
    """Requests/s of `GET path` over `clients` keep-alive connections."""
    context = ssl.create_default_context(cafile=str(bundle))
    done = 0
    end = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done
        async with httpx.AsyncClient(verify=context, base_url=url) as client:
            while time.perf_counter() < end:
                response = await client.get(path)
                response.raise_for_status()
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return done / (time.perf_counter() - started)


def federate(a_dir: Path, b_dir: Path, b_url: str) -> None:
    """`trustd federation create` in A for B, over https_spiffe."""
    fed = subprocess.run(
        [
            str(TRUSTD),
            "federation",
            "create",
            "--trust-domain",
            "b.example",
            "--bundle-endpoint",
            f"{b_url}/v1/bundle",
            "--profile",
            "https_spiffe",
            "--endpoint-spiffe-id",
            "spiffe://b.example/trustd/server",
            "--bundle",
            str(b_dir / "bundle.pem"),
            "--data-dir",
            str(a_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if fed.returncode:
        raise SystemExit(f"federation create: {fed.stderr}")


async def bench(
    opts: argparse.Namespace, a_dir: Path, b_dir: Path, a_url: str, b_url: str
) -> list[str]:
    agents = Agents()
    async with admin(a_dir) as a, admin(b_dir) as b:
        tasks = await enrol(a, a_url, opts.agents, agents)
        # Every agent holds B's bundle before the first round.
        first = await sequence_of(b_url, b_dir / "bundle.pem")
        deadline = time.perf_counter() + ROUND_TIMEOUT
        while agents.arrived(opts.agents, "b.example", first) is None:
            if time.perf_counter() > deadline:
                raise SystemExit("B's bundle did not reach every agent")
            await asyncio.sleep(0.1)
        federated: list[float] = []
        local: list[float] = []
        for _ in range(opts.rounds):
            federated += await round_(
                b, b_url, b_dir / "bundle.pem", "b.example", agents, opts.agents
            )
            await asyncio.sleep(0.5)
            local += await round_(a, a_url, a_dir / "bundle.pem", "a.example", agents, opts.agents)
            await asyncio.sleep(0.5)
        agents.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    bundle_rps = await throughput(
        b_url, b_dir / "bundle.pem", "/v1/bundle", opts.clients, opts.seconds
    )
    trivial_rps = await throughput(
        b_url, b_dir / "bundle.pem", "/healthz", opts.clients, opts.seconds
    )
    limit = opts.hint + 1.0
    lines = []
    for p in (50, 99):
        value, floor = percentile(federated, p), percentile(local, p)
        lines.append(
            result(
                f"federated_bundle_to_{opts.agents}_agents_p{p}",
                value,
                "s",
                floor,
                f"<{limit:g}s",
                value < limit,
            )
        )
    lines.append(
        result(
            "bundle_endpoint_rps",
            bundle_rps,
            "req/s",
            trivial_rps,
            ">=0.5",
            bundle_rps >= 0.5 * trivial_rps,
        )
    )
    print(
        f"{opts.rounds} rounds x {opts.agents} agents; hint {opts.hint:g} s; federated "
        f"max {max(federated):.3f} s, local max {max(local):.3f} s"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--hint", type=int, default=2, help="B's refresh hint, seconds")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    opts = parser.parse_args()
    fast = {"TRUSTD_ROTATION_INTERVAL": "PT1S", "TRUSTD_FEDERATION_REFRESH_MIN": "PT1S"}
    with (
        tempfile.TemporaryDirectory(prefix="trustd-bench-federation-") as tmp,
        scratch_database("trustd_bench_federation") as db_url,
    ):
        work = Path(tmp)
        a_port, b_port = free_port(), free_port()
        procs = []
        try:
            procs.append(
                start_server(
                    work / "a", a_port, 1, None, {**fast, "TRUSTD_TRUST_DOMAIN": "a.example"}
                )
            )
            procs.append(
                start_server(
                    work / "b",
                    b_port,
                    1,
                    db_url,
                    {
                        **fast,
                        "TRUSTD_TRUST_DOMAIN": "b.example",
                        "TRUSTD_BUNDLE_REFRESH_HINT": f"PT{opts.hint}S",
                    },
                )
            )
            federate(work / "a", work / "b", f"https://127.0.0.1:{b_port}")
            lines = asyncio.run(
                bench(
                    opts,
                    work / "a",
                    work / "b",
                    f"https://127.0.0.1:{a_port}",
                    f"https://127.0.0.1:{b_port}",
                )
            )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
