"""Policy decisions: `/v1/data/trustd/mesh/allow` over HTTP vs. the engine in-process.

Prints, in one run:
- the raw in-process rate of the shipped mesh policy (compiled Program+Rvm, and the
  interpreter cloned per evaluation), one core;
- a trivial FastAPI endpoint (one async POST that parses the JSON body and answers
  `{"result": true}`) under the same uvicorn settings: the HTTP ceiling;
- trustd's decision endpoint with 1 and 2 workers at 50 concurrent keep-alive clients
  (wrk), with every input distinct (cache misses) and with one repeated input (cache
  hits): decisions/s, p50/p99 and the ratio to the trivial endpoint;
- trustd's own `/healthz` (trivial, behind trustd's middleware) in the same server, to
  tell the cost of the decision from the cost of the service's request pipeline;
- the batch endpoint (1000 inputs per request, one worker): decisions/s.

The servers run without TLS on loopback (TLS costs the same on both sides of the ratio)
with the decision log on, authenticated by the policy API token.

Usage: python bench/decisions.py [--seconds 10] [--connections 50]
Needs: wrk (Debian package).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from policy.engine import EmbeddedEngine
from policy.testing import load_directory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, result
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


def raw_rates(seconds: float) -> tuple[float, float]:
    bundle = load_directory(ROOT / "rego", tests=False)
    rates = []
    for compiled in (True, False):
        engine = EmbeddedEngine(bundle.modules, bundle.data, compiled=compiled)
        count = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            engine.query("trustd/mesh/allow", json.dumps(mesh_input(count % 60000)))
            count += 1
        rates.append(count / seconds)
    return rates[0], rates[1]


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


def trivial_run(seconds: int, connections: int) -> dict[str, float]:
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
        run_wrk(url, "-", True, 2, connections)
        return run_wrk(url, "-", True, seconds, connections)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


def trustd_run(
    workers: int, seconds: int, connections: int
) -> tuple[dict[str, float], dict[str, float], dict[str, float], float]:
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
        url = f"http://127.0.0.1:{port}{PATH}"
        run_wrk(url, token, True, 2, connections)  # warm-up: every worker compiles
        distinct = run_wrk(url, token, True, seconds, connections)
        repeated = run_wrk(url, token, False, seconds, connections)
        healthz = run_wrk(
            f"http://127.0.0.1:{port}/healthz", token, False, seconds, connections, get=True
        )
        batch = batch_rate(port, token, seconds) if workers == 1 else 0.0
        return distinct, repeated, healthz, batch
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)


def batch_rate(port: int, token: str, seconds: int) -> float:
    url = f"http://127.0.0.1:{port}/v1/batch{PATH[3:]}"
    headers = {"Authorization": f"Bearer {token}"}
    decisions = 0
    with httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        offset = 0
        while time.perf_counter() - started < seconds:
            inputs = {str(i): mesh_input(offset + i) for i in range(1000)}
            offset = (offset + 1000) % 60000
            response = client.post(url, json={"inputs": inputs}, headers=headers)
            response.raise_for_status()
            decisions += len(response.json()["responses"])
        return decisions / (time.perf_counter() - started)


@dataclass(frozen=True)
class Run:
    distinct: dict[str, float]
    batch: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")

    compiled, interpreted = raw_rates(3.0)
    print(
        f"raw in-process mesh decision (1 core): compiled {compiled:,.0f}/s, "
        f"interpreter (clone per evaluation) {interpreted:,.0f}/s"
    )
    trivial = trivial_run(args.seconds, args.connections)
    print(
        f"trivial FastAPI endpoint (1 worker): {trivial['rps']:,.0f} req/s, "
        f"p50 {trivial['p50_ms']:.2f} ms, p99 {trivial['p99_ms']:.2f} ms"
    )
    print(
        f"{'workers':>7} {'inputs':>9} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'vs trivial/worker':>18}"
    )
    runs: dict[int, Run] = {}
    for workers in (1, 2):
        distinct, repeated, healthz, batch = trustd_run(workers, args.seconds, args.connections)
        runs[workers] = Run(distinct, batch)
        for name, r in (("distinct", distinct), ("repeated", repeated), ("/healthz", healthz)):
            ratio = r["rps"] / workers / trivial["rps"]
            print(
                f"{workers:>7} {name:>9} {r['rps']:>12,.0f} {r['p50_ms']:>8.2f} "
                f"{r['p99_ms']:>8.2f} {int(r['errors']):>6} {ratio:>17.0%}"
            )
        if batch:
            print(
                f"batch endpoint, 1 worker, 1000 distinct inputs per request: "
                f"{batch:,.0f} decisions/s"
            )
    print(
        f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; wrk runs "
        "on the same cores as the servers)"
    )
    one = runs[1]
    for line in (
        result(
            "decisions_per_worker",
            one.distinct["rps"],
            "req/s",
            trivial["rps"],
            ">=0.7x",
            one.distinct["rps"] >= 0.7 * trivial["rps"],
        ),
        result(
            f"decisions_p99_{args.connections}_clients",
            one.distinct["p99_ms"],
            "ms",
            trivial["p99_ms"],
            "<5",
            one.distinct["p99_ms"] < 5,
        ),
        result(
            "decisions_batch", one.batch, "decisions/s", compiled, ">=20000", one.batch >= 20000
        ),
    ):
        print(line)


if __name__ == "__main__":
    main()
