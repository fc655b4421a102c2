"""Policy decisions: `/v1/data/trustd/mesh/allow` over HTTP vs. the engine in-process.

Prints, in one run:
- the raw in-process rate of the shipped mesh policy (compiled Program+Rvm, and the
  interpreter cloned per evaluation), one core;
- a trivial FastAPI endpoint (one async POST that parses the JSON body and answers
  `{"result": true}`) under the same uvicorn settings: the HTTP ceiling;
- closed loop: trustd's decision endpoint with 1 and 2 workers at 50 concurrent keep-alive
  clients (wrk), with every input distinct (cache misses) and with one repeated input
  (cache hits): decisions/s and the ratio to the trivial endpoint; trustd's own `/healthz`
  (trivial, behind trustd's middleware) in the same server, to tell the cost of the
  decision from the cost of the service's request pipeline. A closed loop's latencies
  say little (with 50 clients p50 is 50 / throughput);
- open loop: p50/p99 of trustd (1 worker) and of the trivial endpoint at one fixed offered
  rate, half of trustd's closed-loop throughput (`--open-loop-fraction`), from 50
  connections in 2 client processes (`harness.paced_load`: latency from each request's
  due time, so a stall is charged to every request it delays);
- the batch endpoint (1000 inputs per request, one worker): decisions/s, and decisions
  per CPU-second of the server against the compiled engine's per CPU-second in-process.

The servers run without TLS on loopback (TLS costs the same on both sides of the ratio)
with the decision log on, authenticated by the policy API token. On a shared machine the
ratios are what the targets judge: both sides of each are measured in the same run.

Usage: python bench/decisions.py [--seconds 10] [--connections 50] [--open-loop-fraction 0.5]
Needs: wrk (Debian package).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from policy.engine import EmbeddedEngine
from policy.testing import load_directory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Paced, cpu_seconds, free_port, paced_load, result
from issuance import WRK_DONE, parse_wrk

ROOT = Path(__file__).resolve().parent.parent
TRUSTD = Path(sys.executable).parent / "trustd"
PATH = "/v1/data/trustd/mesh/allow"
WEB = "spiffe://example.org/ns/web/frontend"
API = "spiffe://example.org/ns/api/orders"
TRIVIAL_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()

@app.post("/v1/data/trustd/mesh/allow")
async def allow(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"result": body["input"] is not None})
"""


def mesh_input(port: int) -> dict[str, object]:
    return {
        "source": WEB,
        "destination": API,
        "port": port,
        "protocol": "http",
        "method": "GET",
        "path": "/v1/orders",
    }


def raw_rates(seconds: float) -> tuple[float, float, float]:
    """Compiled and interpreted decisions/s in this process, and the compiled engine's
    decisions per CPU-second."""
    bundle = load_directory(ROOT / "rego", tests=False)
    rates = []
    per_cpu = 0.0
    for compiled in (True, False):
        engine = EmbeddedEngine(bundle.modules, bundle.data, compiled=compiled)
        count = 0
        cpu = time.process_time()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            engine.query("trustd/mesh/allow", json.dumps(mesh_input(count % 60000)))
            count += 1
        rates.append(count / seconds)
        if compiled:
            per_cpu = count / max(time.process_time() - cpu, 1e-9)
    return rates[0], rates[1], per_cpu


def wait_ready(url: str, tries: int) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            ok = sum(httpx.get(url, timeout=2).status_code == 200 for _ in range(tries))
            if ok == tries:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def run_wrk(
    url: str, token: str, distinct: bool, seconds: int, connections: int, get: bool = False
) -> dict[str, float]:
    # Distinct inputs: a random port per request, so the decision cache rarely helps.
    port = "math.random(1, 65535)" if distinct else "8443"
    body = json.dumps({"input": mesh_input(0)}).replace('"port": 0', "\"port\": ' .. p .. '")
    post = (
        'wrk.method = "POST"\n'
        "request = function()\n"
        f"  local p = {port}\n"
        f"  return wrk.format(nil, nil, nil, '{body}')\n"
        "end\n"
    )
    script = (
        ("" if get else post)
        + 'wrk.headers["Content-Type"] = "application/json"\n'
        + f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        + WRK_DONE
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "-s", handle.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    return parse_wrk(out)


def decision_bodies(count: int) -> list[bytes]:
    """Distinct decision requests (a port each) for the paced client."""
    return [json.dumps({"input": mesh_input(i)}).encode() for i in range(count)]


def paced(url: str, token: str, rate: float, seconds: int, connections: int) -> Paced:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    return paced_load(
        url,
        rate,
        seconds,
        # One input per request (every one a cache miss), up to the 65535 ports.
        decision_bodies(min(int(rate * (seconds + 1)) + 1, 65535)),
        headers=headers,
        processes=2,
        connections=max(1, connections // 2),
    )


@contextlib.contextmanager
def trivial_server() -> Iterator[str]:
    """The trivial endpoint's URL while it runs."""
    directory = Path(tempfile.mkdtemp(prefix="trustd-bench-trivial-"))
    (directory / "trivial_app.py").write_text(TRIVIAL_APP)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "trivial_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--no-server-header",
        ],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}{PATH}"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                httpx.post(url, json={"input": {}}, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Trustd:
    port: int
    token: str
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"


@contextlib.contextmanager
def trustd_server(workers: int) -> Iterator[Trustd]:
    data_dir = Path(tempfile.mkdtemp(prefix="trustd-bench-"))
    token = secrets.token_urlsafe(32)
    port = free_port()
    env = {
        **os.environ,
        "TRUSTD_DATA_DIR": str(data_dir),
        "TRUSTD_LISTEN": f"127.0.0.1:{port}",
        "TRUSTD_POLICY_API_TOKEN": token,
        # A batch of 1000 inputs is ~180 KB, above the default request limit.
        "TRUSTD_MAX_REQUEST_BYTES": str(1 << 20),
    }
    proc = subprocess.Popen(
        [str(TRUSTD), "serve", "--tls", "off", "--workers", str(workers), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", workers * 4)
        server = Trustd(port, token, proc.pid)
        run_wrk(server.url, token, True, 1, 50)  # warm-up: every worker compiles
        yield server
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)


def batch_rate(server: Trustd, seconds: int) -> tuple[float, float]:
    """Decisions/s through the batch endpoint, and decisions per CPU-second of the server."""
    url = f"http://127.0.0.1:{server.port}/v1/batch{PATH[3:]}"
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    # Built beforehand: the client's own JSON encoding would compete with the server.
    bodies = [
        json.dumps({"inputs": {str(i): mesh_input(n * 1000 + i) for i in range(1000)}}).encode()
        for n in range(60)
    ]
    decisions = 0
    with httpx.Client(timeout=60) as client:
        cpu = cpu_seconds(server.pid)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            response = client.post(url, content=bodies[decisions // 1000 % 60], headers=headers)
            response.raise_for_status()
            decisions += len(response.json()["responses"])
        elapsed = time.perf_counter() - started
        used = cpu_seconds(server.pid) - cpu
    return decisions / elapsed, decisions / max(used, 1e-9)


def row(workers: int, name: str, r: dict[str, float], trivial_rps: float) -> str:
    ratio = r["rps"] / workers / trivial_rps
    return (
        f"{workers:>7} {name:>9} {r['rps']:>12,.0f} {r['p50_ms']:>8.2f} "
        f"{r['p99_ms']:>8.2f} {int(r['errors']):>6} {ratio:>17.0%}"
    )


def describe(name: str, p: Paced) -> str:
    return (
        f"open loop, {name}: offered {p.offered_rps:,.0f}/s, answered {p.achieved_rps:,.0f}/s, "
        f"p50 {p.p50_ms:.2f} ms, p99 {p.p99_ms:.2f} ms, max {p.max_ms:.1f} ms, "
        f"errors {p.errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--open-loop-fraction",
        type=float,
        default=0.5,
        help="the open loop's offered rate, as a fraction of the closed-loop throughput",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    seconds, connections = args.seconds, args.connections

    compiled, interpreted, compiled_per_cpu = raw_rates(3.0)
    print(
        f"raw in-process mesh decision (1 core): compiled {compiled:,.0f}/s "
        f"({compiled_per_cpu:,.0f} per CPU-second), "
        f"interpreter (clone per evaluation) {interpreted:,.0f}/s"
    )
    with trivial_server() as url:
        run_wrk(url, "-", True, 2, connections)
        trivial = run_wrk(url, "-", True, seconds, connections)
    print(f"trivial FastAPI endpoint (1 worker), closed loop: {trivial['rps']:,.0f} req/s")
    print(
        f"{'workers':>7} {'inputs':>9} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'vs trivial/worker':>18}"
    )
    with trustd_server(1) as server:
        distinct = run_wrk(server.url, server.token, True, seconds, connections)
        repeated = run_wrk(server.url, server.token, False, seconds, connections)
        healthz = run_wrk(
            f"http://127.0.0.1:{server.port}/healthz", "-", False, seconds, connections, get=True
        )
        for name, r in (("distinct", distinct), ("repeated", repeated), ("/healthz", healthz)):
            print(row(1, name, r, trivial["rps"]))
    # A fresh server for the open loop and the batch: a closed loop leaves a full decision
    # log queue behind, whose writing would be charged to the next measure.
    rate = round(distinct["rps"] * args.open_loop_fraction)
    with trustd_server(1) as server:
        open_trustd = paced(server.url, server.token, rate, seconds, connections)
        batch, batch_per_cpu = batch_rate(server, seconds)
    with trivial_server() as url:
        open_trivial = paced(url, "-", rate, seconds, connections)
    with trustd_server(2) as server:
        two = run_wrk(server.url, server.token, True, seconds, connections)
        print(row(2, "distinct", two, trivial["rps"]))
    print(describe("trustd, 1 worker, distinct inputs", open_trustd))
    print(describe("trivial endpoint", open_trivial))
    print(
        f"batch endpoint, 1 worker, 1000 distinct inputs per request: {batch:,.0f} decisions/s, "
        f"{batch_per_cpu:,.0f} per CPU-second of the server"
    )
    load = os.getloadavg()
    print(
        f"(machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; the clients run on the same cores as the servers)"
    )
    clients = connections
    for line in (
        result(
            "decisions_per_worker_closed_loop",
            distinct["rps"],
            "req/s",
            trivial["rps"],
            ">=0.7x",
            distinct["rps"] >= 0.7 * trivial["rps"],
        ),
        result(
            f"decisions_p50_open_loop_{rate}rps_{clients}_clients",
            open_trustd.p50_ms,
            "ms",
            open_trivial.p50_ms,
            "-",
            None,
        ),
        result(
            f"decisions_p99_open_loop_{rate}rps_{clients}_clients",
            open_trustd.p99_ms,
            "ms",
            open_trivial.p99_ms,
            "<5",
            open_trustd.p99_ms < 5,
        ),
        result(
            "decisions_batch_per_core",
            batch_per_cpu,
            "decisions/cpu-s",
            compiled_per_cpu,
            ">=20000",
            batch_per_cpu >= 20000,
        ),
    ):
        print(line)


if __name__ == "__main__":
    main()
