"""Workload API: FetchX509SVID latency with 50 concurrent clients and 1,000 cache entries.

An agent process serves the Workload API over a cache of 1,000 entries, each with a minted
X509-SVID; the caller's uid matches one of them. Client processes each run 25 concurrent
clients, every client on its own gRPC channel (its own connection, as separate workloads
would be). Each call opens FetchX509SVID and times the first message (attestation from
SO_PEERCRED and /proc, cache lookup, noting the caller for the address report, full
state); the stream is then cancelled. As in the agent, a worker reads new callers'
network namespaces off the call's path.

Two loads: paced (each client calls --rate times a second, the way workloads really use
the API: fetch, then hold the stream) and saturated (each client calls again as soon as it
has an answer, so latency there is mostly queueing behind the other 49).

Baseline, in the same run and over the same socket, relay and server: the same call
without the `workload.spiffe.io` header, which the server refuses before attesting.
The ratio is what attestation and building the response add. Target: p99 < 10 ms.

Usage: python bench/workload_api.py [--seconds 5] [--clients 50] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers build the trust domain and SVIDs

from pki.clock import FakeClock  # noqa: E402
from tests.workload_helpers import Domain  # noqa: E402
from trustd.agent.addresses import WorkloadAddresses  # noqa: E402
from trustd.agent.cache import SvidCache  # noqa: E402
from trustd.agent.proto import workload_pb2 as pb  # noqa: E402
from trustd.agent.proto import workload_pb2_grpc as pb_grpc  # noqa: E402
from trustd.agent.workload_api import start_workload_api  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from harness import percentile, result  # noqa: E402

HEADER = (("workload.spiffe.io", "true"),)


async def serve(socket_path: str, entries: int) -> None:
    domain = Domain(FakeClock(datetime.now(UTC)))
    cache = SvidCache()
    # Entry 0 is the benchmark's own uid; the others belong to workloads that never call.
    made = [domain.entry("e0", "/bench/0", f"unix:uid:{os.getuid()}")]
    made += [
        domain.entry(f"e{i}", f"/bench/{i}", f"unix:uid:{100000 + i}") for i in range(1, entries)
    ]
    await cache.set_entries(made)
    await cache.set_bundle(domain.bundle())
    for entry in made:
        await cache.put_svid(domain.svid(entry))
    addresses = WorkloadAddresses(lambda: None)
    worker = asyncio.create_task(addresses.run())
    server = await start_workload_api(
        socket_path, cache, domain.jwt_source(), clock=domain.clock, addresses=addresses
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(None)
    worker.cancel()


async def one_client(
    socket_path: str, mode: str, interval: float, deadline: float, out: list[float]
) -> None:
    metadata = HEADER if mode == "fetch" else ()
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        stub = pb_grpc.SpiffeWorkloadAPIStub(channel)
        await channel.channel_ready()
        # Spread paced clients over the interval rather than fire them all at once.
        next_call = time.monotonic() + random.uniform(0, interval)
        while time.monotonic() < deadline:
            if interval:
                await asyncio.sleep(max(0.0, next_call - time.monotonic()))
                next_call += interval
            start = time.perf_counter()
            call = stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=metadata)
            try:
                message = await call.read()
                assert isinstance(message, pb.X509SVIDResponse) and message.svids
            except grpc.aio.AioRpcError as exc:
                if mode != "baseline" or exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
            out.append((time.perf_counter() - start) * 1000)
            call.cancel()


async def clients(socket_path: str, mode: str, count: int, interval: float, seconds: float) -> None:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(one_client(socket_path, mode, interval, deadline, latencies) for _ in range(count))
    )
    print(json.dumps(latencies))


def run(socket_path: str, mode: str, interval: float, opts: argparse.Namespace) -> list[float]:
    per = opts.clients // opts.processes
    seconds = opts.seconds
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "clients",
                socket_path,
                mode,
                str(per),
                str(interval),
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(opts.processes)
    ]
    latencies: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise SystemExit(f"client process failed ({proc.returncode})")
        latencies += json.loads(out)
    return latencies


def report(label: str, latencies: list[float], seconds: float) -> float:
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(
        f"{label:<44} calls={len(latencies):>6}  {len(latencies) / seconds:>7.0f}/s  "
        f"p50={p50:6.2f} ms  p99={p99:6.2f} ms"
    )
    return p99


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        asyncio.run(serve(sys.argv[2], int(sys.argv[3])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "clients":
        asyncio.run(
            clients(
                sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
            )
        )
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=10, help="calls per second per client in the paced runs"
    )
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        socket_path = str(Path(tmp) / "agent.sock")
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, __file__, "serve", socket_path, str(opts.entries)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            # The agent logs to stdout too; wait for its "ready" line.
            while (line := server.stdout.readline()) and line.strip() != "ready":
                pass
            if not line:
                raise SystemExit("the agent process did not start")
            print(
                f"Workload API on a Unix socket, {opts.entries} cache entries with SVIDs "
                f"(ready in {time.perf_counter() - started:.1f} s); {opts.clients} concurrent "
                f"clients ({opts.processes} processes, one channel each), {opts.seconds:g} s "
                f"per run, {os.cpu_count()} CPUs shared by clients and agent"
            )
            interval = 1 / opts.rate
            results = {}
            for pacing, every in [
                (f"paced, {opts.rate:g}/s per client", interval),
                ("saturated", 0.0),
            ]:
                print(f"-- {pacing}")
                for mode, label in [
                    ("baseline", "baseline: refused call (no header)"),
                    ("fetch", "FetchX509SVID: attest + full state"),
                ]:
                    latencies = run(socket_path, mode, every, opts)
                    results[pacing, mode] = report(label, latencies, opts.seconds)
                ratio = results[pacing, "fetch"] / results[pacing, "baseline"]
                print(f"p99 ratio FetchX509SVID / baseline: {ratio:.2f}")
            key = f"paced, {opts.rate:g}/s per client"
            paced, paced_base = results[key, "fetch"], results[key, "baseline"]
            print(
                f"target p99 < 10 ms (paced): {'met' if paced < 10 else 'NOT met'} ({paced:.2f} ms)"
            )
            print(f"(load average {os.getloadavg()[0]:.2f})")
            print(
                result(
                    "workload_api_fetch_x509_p99_paced", paced, "ms", paced_base, "<10", paced < 10
                )
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


if __name__ == "__main__":
    main()
