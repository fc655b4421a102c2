"""X509-SVID issuance: HTTP (CSR -> chain, persisted) vs. signing in-process.

Prints, for 1 and 2 uvicorn workers on SQLite and PostgreSQL: requests/s, p50/p99 latency at
50 concurrent keep-alive clients (wrk), and in the same run the raw in-process rate of
building and signing the same certificate with cryptography through trustd's pipeline. The
ratio is HTTP issuance per worker over the raw single-core rate (target >= 40%).

The same run measures ML-DSA-65 (FIPS 204) the same way: the raw rate of an ML-DSA-65
intermediate signing an SVID for an ML-DSA-65 key, and HTTP issuance of such SVIDs by a
trust domain that keeps an ML-DSA-65 chain next to its EC one
(TRUSTD_ADDITIONAL_CA_KEY_TYPES=ml-dsa-65, the request asking for `key_type: ml-dsa-65`);
target: ML-DSA-65 HTTP issuance per worker >= 40% of its own raw rate.

The machine's cores are shared with wrk (and, on a shared host, with others), so rates depend
on the load around them. The server's CPU time per request (all its processes, user and
system, over the measured run) depends much less on it: the raw CPU time per certificate over
it is the ratio a worker reaches on a core of its own. The load average is printed with each
row.

With --pkcs11 (or --pkcs11-only) the same run compares the pkcs11 key backend, the CA keys
in a fresh SoftHSM2 token, with the file backend: in-process signing, and HTTP issuance on
SQLite with one worker (target: the token reaches >= 50% of the file backend's rate).

Usage: python bench/issuance.py [--seconds 10] [--connections 50] [--pkcs11 | --pkcs11-only]
Needs: wrk (Debian package), PostgreSQL on 127.0.0.1:5432 (trust auth); for --pkcs11
softhsm2 and opensc.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from pki.ca import Authority, create_intermediate, create_root
from pki.clock import SystemClock
from pki.csr import create_csr
from pki.keys import KeyType, PrivateKey, generate_private_key
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import X509SvidParams, issue_x509_svid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    cpu_seconds,
    free_port,
    read_token,
    result,
    scratch_database,
    start_server,
)


def raw_rate(
    seconds: float,
    inter_key: PrivateKey | None = None,
    key_type: KeyType = KeyType.EC_P256,
) -> float:
    """Sign the same certificate as the HTTP path does, in this process, on one core, with
    *inter_key* as the intermediate's key (a fresh file key by default); the CA chain and
    the leaf key are of *key_type*."""
    clock = SystemClock()
    td = TrustDomain.parse("example.org")
    root_key = generate_private_key(key_type)
    root = create_root(td, root_key, clock, timedelta(days=30))
    inter_key = inter_key or generate_private_key(key_type)
    inter = create_intermediate(
        td, inter_key, Authority(root, root_key, (), root), clock, timedelta(days=7)
    )
    authority = Authority(inter, inter_key, (), root)
    public = generate_private_key(key_type).public_key()
    params = X509SvidParams(
        SpiffeId.parse("spiffe://example.org/bench"), public, timedelta(hours=1)
    )
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        issue_x509_svid(authority, params, clock)
        count += 1
    return count / seconds


# A wrk `done` hook printing one machine-readable line for `parse_wrk`.
WRK_DONE = (
    "done = function(summary, latency, requests)\n"
    '  io.write(string.format("WRKSUMMARY %d %d %d %f %f\\n", summary.requests, '
    "summary.errors.status + summary.errors.connect + summary.errors.read + "
    "summary.errors.write + summary.errors.timeout, summary.duration, "
    "latency:percentile(50), latency:percentile(99)))\n"
    "end\n"
)


def run_wrk(url: str, token: str, body: str, seconds: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {token}"\n' + WRK_DONE
        )
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, float]:
    """The figures `WRK_DONE` printed: requests/s, errors, p50 and p99 in ms."""
    match = re.search(r"WRKSUMMARY (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    assert match, out
    requests, errors, duration_us, p50_us, p99_us = match.groups()
    return {
        "rps": int(requests) / (int(duration_us) / 1e6),
        "errors": int(errors),
        "p50_ms": float(p50_us) / 1000,
        "p99_ms": float(p99_us) / 1000,
    }


def http_run(
    workers: int,
    backend: str,
    seconds: int,
    connections: int,
    env: dict[str, str] | None = None,
    key_type: KeyType = KeyType.EC_P256,
) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trustd-bench-")))
        db_url = stack.enter_context(scratch_database()) if backend == "postgresql" else None
        port = free_port()
        proc = start_server(data_dir, port, workers, db_url, env)
        try:
            token = read_token(proc)
            csr = create_csr(generate_private_key(key_type))
            request = {"spiffe_id": "spiffe://example.org/bench", "csr": csr}
            if key_type.post_quantum:
                # An ML-DSA CSR is signed only when the request asks for that key type.
                request["key_type"] = str(key_type)
            body = json.dumps(request)
            url = f"https://127.0.0.1:{port}/v1/svid/x509"
            run_wrk(url, token, body, 2, connections)  # warm-up
            before = cpu_seconds(proc.pid)
            figures = run_wrk(url, token, body, seconds, connections)
            requests = figures["rps"] * seconds
            figures["cpu_ms"] = (cpu_seconds(proc.pid) - before) * 1000 / requests
            return figures
        finally:
            proc.terminate()
            proc.wait(30)


def pkcs11_lines(seconds: int, connections: int) -> list[str]:
    """The pkcs11 key backend (SoftHSM2) against the file backend, in the same run."""
    if not (shutil.which("softhsm2-util") and shutil.which("pkcs11-tool")):
        return [result("issuance_pkcs11_raw", 0, "certs/s", 0, ">=0.5x", None)]
    from tests.hsm_support import new_token

    scratch = Path(tempfile.mkdtemp(prefix="trustd-bench-hsm-"))
    token = new_token(scratch)
    # SoftHSM reads its configuration when the module is first initialised.
    os.environ["SOFTHSM2_CONF"] = str(token.conf)
    from pki.keys.token import Pkcs11Backend

    backend = Pkcs11Backend(token.module, token.label, token.pin)
    in_token, _ = backend.generate(KeyType.EC_P256, "bench intermediate")
    file_raw = raw_rate(3.0)
    token_raw = raw_rate(3.0, in_token)
    print(f"raw in-process issuance: file key {file_raw:,.0f}/s, SoftHSM2 key {token_raw:,.0f}/s")
    lines = [
        result(
            "issuance_pkcs11_raw",
            token_raw,
            "certs/s",
            file_raw,
            ">=0.5x",
            token_raw >= file_raw / 2,
        )
    ]
    if shutil.which("wrk"):
        on_file = http_run(1, "sqlite", seconds, connections)
        on_token = http_run(1, "sqlite", seconds, connections, token.env)
        print(
            f"HTTP issuance, sqlite, 1 worker: file {on_file['rps']:,.0f}/s "
            f"(p99 {on_file['p99_ms']:.1f} ms), pkcs11 {on_token['rps']:,.0f}/s "
            f"(p99 {on_token['p99_ms']:.1f} ms, {int(on_token['errors'])} errors)"
        )
        lines.append(
            result(
                "issuance_pkcs11_sqlite_1w",
                on_token["rps"],
                "certs/s",
                on_file["rps"],
                ">=0.5x",
                on_token["rps"] >= on_file["rps"] / 2 and not on_token["errors"],
            )
        )
    else:
        print("wrk is not installed: the HTTP pkcs11 line is left out (apt-get install wrk)")
        lines.append(result("issuance_pkcs11_sqlite_1w", 0, "certs/s", 0, ">=0.5x", None))
    backend.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pkcs11", action="store_true", help="compare the pkcs11 key backend")
    parser.add_argument("--pkcs11-only", action="store_true", help="only the pkcs11 comparison")
    args = parser.parse_args()
    if args.pkcs11_only:
        for line in pkcs11_lines(args.seconds, args.connections):
            print(line)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")

    started = time.process_time()
    raw = raw_rate(3.0)
    raw_ms = (time.process_time() - started) * 1000 / (raw * 3.0)
    print(f"raw in-process issuance (1 core): {raw:,.0f} certs/s, {raw_ms:.3f} ms CPU each")
    started = time.process_time()
    pq_raw = raw_rate(3.0, key_type=KeyType.ML_DSA_65)
    pq_raw_ms = (time.process_time() - started) * 1000 / (pq_raw * 3.0)
    print(
        f"raw in-process ML-DSA-65 issuance (1 core): {pq_raw:,.0f} certs/s, "
        f"{pq_raw_ms:.3f} ms CPU each"
    )
    print(
        f"{'backend':<11} {'workers':>7} {'certs/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'per-worker/raw':>15} {'CPU ms/req':>11} {'raw/CPU':>8} {'load':>5}"
    )
    # ML-DSA-65 against EC P-256 signing, in this run: what the post-quantum chain costs.
    results: list[str] = [
        result("issuance_ml_dsa_65_raw", pq_raw, "certs/s", raw, "report", None),
    ]
    for backend in args.backends.split(","):
        for workers in (1, 2):
            r = http_run(workers, backend, args.seconds, args.connections)
            ratio = r["rps"] / workers / raw
            per_worker, p99 = r["rps"] / workers, r["p99_ms"]
            results += [
                result(
                    f"issuance_per_worker_{backend}_{workers}w",
                    per_worker,
                    "certs/s",
                    raw,
                    ">=0.4x",
                    per_worker >= 0.4 * raw,
                ),
                # The baseline is the raw time to build and sign one certificate.
                result(
                    f"issuance_p99_{backend}_{workers}w", p99, "ms", 1000 / raw, "<20", p99 < 20
                ),
            ]
            print(
                f"{backend:<11} {workers:>7} {r['rps']:>9,.0f} {r['p50_ms']:>8.2f} "
                f"{r['p99_ms']:>8.2f} {int(r['errors']):>6} {ratio:>14.0%} "
                f"{r['cpu_ms']:>11.3f} {raw_ms / r['cpu_ms']:>7.0%} {os.getloadavg()[0]:>5.2f}"
            )
            pq = http_run(
                workers,
                backend,
                args.seconds,
                args.connections,
                {"TRUSTD_ADDITIONAL_CA_KEY_TYPES": str(KeyType.ML_DSA_65)},
                KeyType.ML_DSA_65,
            )
            pq_per_worker = pq["rps"] / workers
            results.append(
                result(
                    f"issuance_ml_dsa_65_per_worker_{backend}_{workers}w",
                    pq_per_worker,
                    "certs/s",
                    pq_raw,
                    ">=0.4x",
                    pq_per_worker >= 0.4 * pq_raw and not pq["errors"],
                )
            )
            # The same on a core of its own: the server's CPU time per request against the
            # raw CPU time per certificate (less sensitive to a loaded, shared machine).
            per_core, raw_per_core = 1000 / pq["cpu_ms"], 1000 / pq_raw_ms
            results.append(
                result(
                    f"issuance_ml_dsa_65_per_core_{backend}_{workers}w",
                    per_core,
                    "certs/s",
                    raw_per_core,
                    ">=0.4x",
                    per_core >= 0.4 * raw_per_core,
                )
            )
            print(
                f"{backend + ' ML65':<11} {workers:>7} {pq['rps']:>9,.0f} {pq['p50_ms']:>8.2f} "
                f"{pq['p99_ms']:>8.2f} {int(pq['errors']):>6} {pq_per_worker / pq_raw:>14.0%} "
                f"{pq['cpu_ms']:>11.3f} {pq_raw_ms / pq['cpu_ms']:>7.0%} "
                f"{os.getloadavg()[0]:>5.2f}"
            )
    print(
        f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; wrk runs "
        "on the same cores as the server)"
    )
    if args.pkcs11:
        results += pkcs11_lines(args.seconds, args.connections)
    for line in results:
        print(line)


if __name__ == "__main__":
    main()
