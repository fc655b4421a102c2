"""Flow reports: how fast a real `trustd serve` stores them, and whether it stays responsive
while nodes flood it.

Prints, in one run (one worker, SQLite, TLS, one attested node):
- the ingest rate of full batches (`MAX_FLOWS_PER_BATCH` denied SYN aggregates of one
  workload each, as an agent reports a flood it could not fold further) from four
  concurrent senders, against one-flow batches from the same senders (the per-request
  cost a batch amortises);
- the p99 of an admin query (`GET /v1/flows?verdict=denied&limit=20`) while the full
  batches arrive, against the same query on the idle server;
- how much of a flood from one node over its `flow_batches_per_minute` is refused (429).

Usage: python bench/flows.py [--seconds 10]
"""

from __future__ import annotations

import argparse
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


def ingest(url: str, verify: Any, headers: dict[str, str], size: int, seconds: float) -> float:
    """Flows stored per second by `SENDERS` senders posting batches of `size`."""
    body = batch(size)
    stored = [0] * SENDERS
    stop = time.monotonic() + seconds

    def send(slot: int) -> None:
        with httpx.Client(base_url=url, verify=verify, headers=headers, timeout=30) as client:
            while time.monotonic() < stop:
                answer = client.post("/v1/agents/flows", json=body)
                assert answer.status_code == 200, answer.text
                stored[slot] += answer.json()["accepted"]

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(stored) / (time.monotonic() - started)


def query_p99(api: httpx.Client, seconds: float) -> float:
    """p99 of the admin query, milliseconds, asked one after another for `seconds`."""
    times = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        started = time.perf_counter()
        answer = api.get("/v1/flows", params={"verdict": "denied", "limit": 20})
        assert answer.status_code == 200, answer.text
        times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 99)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "var"
        port = free_port()
        # High enough that the senders are never throttled: the ingest path is measured.
        env = {"TRUSTD_FLOW_BATCHES_PER_MINUTE": "1000000"}
        proc = start_server(data_dir, port, 1, None, env)
        try:
            url = f"https://127.0.0.1:{port}"
            verify = httpx.create_ssl_context(verify=str(data_dir / "bundle.pem"))
            admin = {"Authorization": f"Bearer {read_token(proc)}"}
            with httpx.Client(base_url=url, verify=verify, headers=admin, timeout=30) as api:
                headers = node_headers(api)
                single = ingest(url, verify, headers, 1, args.seconds / 2)
                idle = query_p99(api, args.seconds / 2)
                flooded: list[float] = []
                reader = threading.Thread(
                    target=lambda: flooded.append(query_p99(api, args.seconds * 0.8))
                )
                reader.start()
                full = ingest(url, verify, headers, MAX_FLOWS_PER_BATCH, args.seconds)
                reader.join()
        finally:
            proc.terminate()
            proc.wait(30)
        print(f"one-flow batches: {single:.0f} flows/s; full batches: {full:.0f} flows/s")
        print(f"query p99 idle {idle:.1f} ms, during the full-batch flood {flooded[0]:.1f} ms")
        print(
            result(
                "flow_ingest_full_batches", full, "flows/s", single, ">=10x", full >= 10 * single
            )
        )
        print(
            result(
                "flow_query_p99_under_flood",
                flooded[0],
                "ms",
                idle,
                "<=10x",
                flooded[0] <= 10 * idle,
            )
        )

        # The default bound: one node flooding batches is refused past 120 a minute.
        data_dir = Path(tmp) / "throttled"
        port = free_port()
        proc = start_server(data_dir, port, 1, None)
        try:
            url = f"https://127.0.0.1:{port}"
            verify = httpx.create_ssl_context(verify=str(data_dir / "bundle.pem"))
            admin = {"Authorization": f"Bearer {read_token(proc)}"}
            with httpx.Client(base_url=url, verify=verify, headers=admin, timeout=30) as api:
                headers = node_headers(api)
                body = batch(10)
                with httpx.Client(base_url=url, verify=verify, headers=headers) as node:
                    started = time.monotonic()
                    statuses = [
                        node.post("/v1/agents/flows", json=body).status_code for _ in range(600)
                    ]
                    elapsed = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(30)
        accepted = statuses.count(200)
        # GCRA: a burst of the limit, then the limit's rate for as long as the flood ran.
        bound = 120 + 120 * elapsed / 60
        print(
            f"one node, 600 batches in {elapsed:.1f} s: {accepted} stored, "
            f"{statuses.count(429)} refused (429)"
        )
        print(
            result(
                "flow_batches_accepted_of_flood",
                accepted,
                "batches",
                600,
                f"<={bound:.0f}",
                accepted <= bound + 1,
            )
        )


if __name__ == "__main__":
    main()
