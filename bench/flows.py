"""Flow reports: how fast a real `trustd serve` stores them, and whether it stays responsive
while nodes flood it.

Prints, in one run (one worker, SQLite, TLS, one attested node):
- the ingest rate of full batches (`MAX_FLOWS_PER_BATCH` denied SYN aggregates of one
  workload each, as an agent reports a flood it could not fold further) from four
  concurrent senders, against one-flow batches from the same senders (the per-request
  cost a batch amortises);
- with `flow_batches_per_minute` at an agent's cadence (12), the p99 of an admin query
  (`GET /v1/flows?verdict=denied&limit=20`) while one node floods full batches from four
  senders as fast as it is answered, against the same query on the idle server; and how
  many of the flood's batches were stored (the rest refused, 429, before being parsed).

Usage: python bench/flows.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, percentile, read_token, result, start_server

from pki.bundle import TrustBundle
from pki.ca import load_pem_certificates
from pki.clock import SystemClock
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId, TrustDomain
from trustd.agent.client import NodeIdentity, ServerClient
from trustd.domain.flows import MAX_FLOWS_PER_BATCH

API = "spiffe://example.org/ns/api/orders"
DB = "spiffe://example.org/ns/db/postgres"
SENDERS = 4
# Batches a minute per node in the bounded run: one every 5 s, an agent's cadence.
LIMIT = 12


def node_headers(api: httpx.Client) -> dict[str, str]:
    """Attest a node with a join token, give it the API's entry; its agent's headers."""
    token = api.post("/v1/join-tokens", json={"selectors": []}).json()["token"]
    key = generate_private_key(KeyType.EC_P256)
    body = api.post(
        "/v1/attest",
        json={"attestor": "join_token", "evidence": {"token": token}, "csr": create_csr(key)},
    ).json()
    pem = body["svid"]["certificate"] + "".join(body["svid"]["intermediates"])
    identity = NodeIdentity(
        SpiffeId.parse(body["spiffe_id"]), tuple(load_pem_certificates(pem.encode())), key
    )
    made = api.post(
        "/v1/entries",
        json={"spiffe_id": API, "parent_id": body["spiffe_id"], "selectors": ["unix:uid:1"]},
    )
    assert made.status_code == 201, made.text
    bundle = TrustBundle.from_jwks(api.get("/v1/bundle").json(), TrustDomain.parse("example.org"))
    credential = ServerClient("https://unused", bundle, SystemClock()).credential(identity)
    return {"Authorization": f"Bearer {credential}"}


def batch(size: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    flow = {
        "source": API,
        "destination": DB,
        "source_address": "10.1.0.1",
        "destination_address": "10.1.0.2",
        "protocol": "tcp",
        "verdict": "denied",
        "reason": "policy",
        "direction": "egress",
        "count": 5000,
        "first_seen": (now - timedelta(seconds=5)).isoformat(),
        "last_seen": now.isoformat(),
    }
    return {
        "flows": [{**flow, "destination_port": 1 + i % 65000} for i in range(size)],
        "interval_start": (now - timedelta(seconds=5)).isoformat(),
        "interval_end": now.isoformat(),
    }


def flood(
    url: str, verify: Any, headers: dict[str, str], size: int, seconds: float
) -> tuple[float, int, int]:
    """`SENDERS` senders posting batches of `size` as fast as they are answered: flows
    stored per second, batches stored, batches refused (429)."""
    # Encoded once: the senders share the machine with the server, and encoding 1000 flows
    # per request would be the client's cost, not trustd's.
    payload = json.dumps(batch(size)).encode()
    sent = {**headers, "Content-Type": "application/json"}
    stored = [0] * SENDERS
    answers: list[int] = []
    stop = time.monotonic() + seconds

    def send(slot: int) -> None:
        with httpx.Client(base_url=url, verify=verify, headers=sent, timeout=30) as client:
            while time.monotonic() < stop:
                answer = client.post("/v1/agents/flows", content=payload)
                assert answer.status_code in (200, 429), answer.text
                answers.append(answer.status_code)
                if answer.status_code == 200:
                    stored[slot] += answer.json()["accepted"]

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(stored) / (time.monotonic() - started), answers.count(200), answers.count(429)


def query_times(api: httpx.Client, seconds: float) -> tuple[float, float]:
    """p50 and p99 of the admin query, milliseconds, asked one after another for
    `seconds`."""
    times = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.perf_counter()
        answer = api.get("/v1/flows", params={"verdict": "denied", "limit": 20})
        assert answer.status_code == 200, answer.text
        times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50), percentile(times, 99)


class Server:
    """`trustd serve` (one worker, SQLite, TLS) with `env`, an admin client and one node."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        port = free_port()
        self.proc = start_server(data_dir, port, 1, None, env)
        self.url = f"https://127.0.0.1:{port}"
        self.verify = httpx.create_ssl_context(verify=str(data_dir / "bundle.pem"))
        admin = {"Authorization": f"Bearer {read_token(self.proc)}"}
        self.api = httpx.Client(base_url=self.url, verify=self.verify, headers=admin, timeout=30)
        self.node = node_headers(self.api)

    def stop(self) -> None:
        self.api.close()
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # Unthrottled: the ingest path itself.
        server = Server(Path(tmp) / "open", {"TRUSTD_FLOW_BATCHES_PER_MINUTE": "1000000"})
        try:
            single = flood(server.url, server.verify, server.node, 1, args.seconds / 2)[0]
            full = flood(server.url, server.verify, server.node, MAX_FLOWS_PER_BATCH, args.seconds)[
                0
            ]
        finally:
            server.stop()
        print(f"one-flow batches: {single:.0f} flows/s; full batches: {full:.0f} flows/s")
        print(
            result(
                "flow_ingest_full_batches", full, "flows/s", single, ">=10x", full >= 10 * single
            )
        )

        # Bounded at an agent's cadence (a batch every 5 s): one node flooding full batches
        # as fast as it is answered.
        server = Server(Path(tmp) / "bounded", {"TRUSTD_FLOW_BATCHES_PER_MINUTE": str(LIMIT)})
        try:
            idle_p50, idle = query_times(server.api, args.seconds / 2)
            flooded: list[tuple[float, float]] = []
            reader = threading.Thread(
                target=lambda: flooded.append(query_times(server.api, args.seconds * 0.8))
            )
            reader.start()
            started = time.monotonic()
            _, stored, refused = flood(
                server.url, server.verify, server.node, MAX_FLOWS_PER_BATCH, args.seconds
            )
            elapsed = time.monotonic() - started
            reader.join()
        finally:
            server.stop()
        flood_p50, flood_p99 = flooded[0]
        print(
            f"query p50/p99 idle {idle_p50:.1f}/{idle:.1f} ms, "
            f"while one node floods {flood_p50:.1f}/{flood_p99:.1f} ms"
        )
        print(
            result(
                "flow_query_p99_under_flood", flood_p99, "ms", idle, "<=3x", flood_p99 <= 3 * idle
            )
        )
        # GCRA: a burst of the limit, then the limit's rate for as long as the flood ran.
        bound = LIMIT + LIMIT * elapsed / 60
        print(
            f"one node, {elapsed:.1f} s of flood: {stored} batches stored, {refused} refused (429)"
        )
        print(
            result(
                "flow_batches_stored_of_flood",
                stored,
                "batches",
                stored + refused,
                f"<={bound:.0f}",
                stored <= bound + 1,
            )
        )


if __name__ == "__main__":
    main()
