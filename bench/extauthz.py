"""The agent's ext_authz endpoints: HTTP (nginx auth_request / Envoy HTTP) and gRPC
(Envoy `Authorization/Check`), checks/s and p50/p99 on one core.

Prints, in one run, for each protocol: the real endpoint (client chain verified against the
bundle, from `X-Client-Cert` for HTTP and `source.certificate` for gRPC; mesh policy decision
from the agent's engine) and, as the baseline, a trivial endpoint on the same server loop and code
path that answers "allowed" without deciding: the ratio is what the decision costs.

The server is one process pinned to CPU 0 (the agent serves both endpoints from one event
loop); load comes from CPU 1: wrk for HTTP (keep-alive), a grpc.aio client for gRPC.
Same requests repeat, as a proxy's checks do: verification and decisions hit the caches.

Usage: python bench/extauthz.py [--seconds 8] [--connections 8]
Needs: wrk (Debian package), two CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import free_port, result
from issuance import WRK_DONE, parse_wrk

ROOT = Path(__file__).resolve().parent.parent
WEB = "spiffe://example.org/ns/web/frontend"
API = "spiffe://example.org/ns/api/orders"


def _state() -> tuple[Any, Any, str, Any]:
    """A verdict table with the shipped mesh policy, a bundle, and a client chain."""
    from pki.bundle import TrustBundle
    from pki.ca import Authority, certificate_pem, create_intermediate, create_root
    from pki.clock import SystemClock
    from pki.keys import KeyType, generate_private_key
    from pki.spiffe_id import SpiffeId, TrustDomain
    from pki.x509_svid import X509SvidParams, issue_x509_svid
    from trustd.agent.enforcement.state import VerdictTable

    clock, td = SystemClock(), TrustDomain.parse("example.org")
    root_key, key, leaf_key = (generate_private_key(KeyType.EC_P256) for _ in range(3))
    root = create_root(td, root_key, clock, timedelta(days=1))
    inter = create_intermediate(
        td, key, Authority(root, root_key, (), root), clock, timedelta(hours=2)
    )
    leaf = issue_x509_svid(
        Authority(inter, key, (), root),
        X509SvidParams(SpiffeId.parse(WEB), leaf_key.public_key(), timedelta(hours=1)),
        clock,
    )
    table = VerdictTable().applied(
        {
            "revision": 1,
            "base": 0,
            "changes": {"identities": {"set": {WEB: 256, API: 257}}},
            "l7": {
                "revision": 1,
                "modules": {"mesh.rego": (ROOT / "rego" / "mesh.rego").read_text()},
                "data": {
                    "mesh": {
                        "allow": [
                            {"name": "r", "source": WEB, "destination": API, "methods": ["GET"]}
                        ],
                        "deny": [],
                    }
                },
            },
        }
    )
    chain = quote(certificate_pem(leaf) + certificate_pem(inter))
    return table, TrustBundle(td, (root,), {}, 1, 300), chain, clock


class Trivial:
    """The baseline: the same server code, no verification, no decision."""

    def check(self, method: str, path: str, headers: dict[str, str]) -> tuple[bool, str]:
        return True, "trivial"

    def identify(self, pem_escaped: str, claimed: str | None = None) -> tuple[str | None, str]:
        return WEB, ""

    def decide(
        self, source: str, destination: str, port: int, method: str, path: str
    ) -> tuple[bool, str]:
        return True, "trivial"


async def _serve(ports: list[int], table: Any, bundle: Any, clock: Any) -> None:
    from trustd.agent.extauthz import Authorizer, start_extauthz
    from trustd.agent.extauthz_grpc import start_extauthz_grpc

    real = Authorizer(lambda: table, lambda: bundle, clock)
    http_real = await start_extauthz("127.0.0.1", ports[0], real)
    http_trivial = await start_extauthz("127.0.0.1", ports[1], Trivial())
    grpc_real, _ = await start_extauthz_grpc("127.0.0.1", ports[2], real)
    grpc_trivial, _ = await start_extauthz_grpc("127.0.0.1", ports[3], Trivial())
    print("ready", flush=True)
    await asyncio.Event().wait()
    del http_real, http_trivial, grpc_real, grpc_trivial


def _wrk(port: int, headers: dict[str, str], seconds: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_DONE)
    args = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, "-s", script.name, f"http://127.0.0.1:{port}/check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    return parse_wrk(out)


async def _grpc_load(port: int, seconds: float, concurrency: int, chain: str) -> dict[str, float]:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2 as pb
    from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc

    request = pb.CheckRequest()
    request.attributes.source.principal = WEB
    request.attributes.source.certificate = chain
    request.attributes.destination.principal = API
    request.attributes.destination.address.socket_address.port_value = 8443
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = "/v1/orders"
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = pb_grpc.AuthorizationStub(channel).Check
        await check(request)
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await check(request)
                latencies.append(time.perf_counter() - started)
                errors += response.status.code != 0

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def _line(name: str, figures: dict[str, float], baseline: dict[str, float] | None) -> None:
    ratio = f"  {figures['rps'] / baseline['rps']:.2f}x trivial" if baseline else ""
    print(
        f"{name:<34} {figures['rps']:>9.0f} checks/s  p50 {figures['p50_ms']:.2f} ms"
        f"  p99 {figures['p99_ms']:.2f} ms  errors {figures['errors']:.0f}{ratio}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--grpc-load", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        os.sched_setaffinity(0, {0})
        table, bundle, chain, clock = _state()
        Path(args.serve[4]).write_text(chain)
        asyncio.run(_serve([int(p) for p in args.serve[:4]], table, bundle, clock))
        return
    if args.grpc_load:
        os.sched_setaffinity(0, {1})
        port, seconds, concurrency, chain_path = args.grpc_load
        chain = Path(chain_path).read_text()
        figures = asyncio.run(_grpc_load(int(port), float(seconds), int(concurrency), chain))
        print(" ".join(f"{k}={v}" for k, v in figures.items()))
        return
    ports = [free_port() for _ in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        chain_file = Path(tmp) / "chain"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", *map(str, ports), str(chain_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            # The server's log lines come first on its stdout.
            for line in server.stdout:
                if line.strip() == "ready":
                    break
            chain = chain_file.read_text()
            print(f"ext_authz on one core (CPU 0), {args.seconds} s per run, load from CPU 1")
            headers = {
                "X-Client-Cert": chain,
                "X-Trustd-Destination": API,
                "X-Trustd-Port": "8443",
                "X-Original-Method": "GET",
                "X-Original-URI": "/v1/orders",
            }
            base = _wrk(ports[1], headers, args.seconds, args.connections)
            _line("HTTP trivial endpoint (baseline)", base, None)
            http = _wrk(ports[0], headers, args.seconds, args.connections)
            _line("HTTP ext_authz (chain + policy)", http, base)
            grpc_figures = []
            for port in (ports[3], ports[2]):
                out = subprocess.run(
                    [
                        *(sys.executable, __file__, "--grpc-load", str(port)),
                        *(str(args.seconds), "16", str(chain_file)),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                grpc_figures.append({k: float(v) for k, v in (p.split("=") for p in out.split())})
            _line("gRPC trivial Check (baseline)", grpc_figures[0], None)
            _line("gRPC ext_authz Check (cert + policy)", grpc_figures[1], grpc_figures[0])
            print(f"(load average {os.getloadavg()[0]:.2f})")
            rps, p99 = http["rps"], http["p99_ms"]
            for line in (
                result("extauthz_http_checks", rps, "checks/s", base["rps"], ">=5000", rps >= 5000),
                result("extauthz_http_p99", p99, "ms", base["p99_ms"], "<2", p99 < 2),
                result(
                    "extauthz_grpc_checks",
                    grpc_figures[1]["rps"],
                    "checks/s",
                    grpc_figures[0]["rps"],
                    "-",
                    None,
                ),
            ):
                print(line)
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
