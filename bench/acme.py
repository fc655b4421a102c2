"""ACME: complete orders per second against trustd and, in the same run, against pebble.

One driver for both servers: the Python `acme` client, C concurrent clients (one account
each), each order = newOrder, answer http-01, poll the authorization (10 ms sleeps),
finalize, poll the order if needed, download the chain. Pebble runs with
PEBBLE_VA_NOSLEEP=1 PEBBLE_VA_ALWAYS_VALID=1 (it validates nothing); trustd really validates
every http-01 challenge against a responder on loopback and records every certificate
durably before returning it. Prints orders/s and p50/p99 per order, and the ratio
trustd/pebble (target >= 1).

Usage: python bench/acme.py [--seconds 10] [--clients 1]
(Debian's pebble 2.4 stalled, a request timing out after 45 s, with 8 concurrent clients, so
the default is one client: latency-bound, like a single renewing host.)
Needs: pebble (Debian package), PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379.
To see where a trustd order's time goes, profile the server while this runs (py-spy is in the
dev extra): `py-spy record -p <pid of trustd serve> -d 10 --threads -f raw -o profile.txt`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# ruff: noqa: E402 - the path fix below must run before the imports.
# This script is named like the `acme` client package it drives: keep its own directory off
# the import path, and put the repository root on it (for tests.acme_support).
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import josepy as jose
import psycopg
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.harness import result
from tests.acme_support import DnsServer, Http01Responder

TRUSTD = Path(sys.executable).parent / "trustd"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
POLL = 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Target:
    name: str
    directory: str
    ca_bundle: str
    responder: Http01Responder | None
    dns: DnsServer | None


def _csr(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _client(target: Target) -> acme_client.ClientV2:
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(key, alg=jose.ES256, verify_ssl=target.ca_bundle)
    client = acme_client.ClientV2(acme_client.ClientV2.get_directory(target.directory, net), net)
    client.new_account(
        messages.NewRegistration.from_data(email="bench@example.org", terms_of_service_agreed=True)
    )
    return client


def one_order(client: acme_client.ClientV2, target: Target, name: str) -> None:
    if target.dns is not None:
        target.dns.add(name, "A", "127.0.0.1")
    order = client.new_order(_csr(name))
    for authz in order.authorizations:
        challb = next(c for c in authz.body.challenges if c.chall.typ == "http-01")
        response, validation = challb.response_and_validation(client.net.key)
        if target.responder is not None:
            target.responder.tokens[challb.chall.encode("token")] = validation
        client.answer_challenge(challb, response)
    for url in order.body.authorizations:
        while True:
            body = client._post_as_get(url).json()
            if body["status"] != "pending":
                assert body["status"] == "valid", body
                break
            time.sleep(POLL)
    finalized = client.begin_finalization(order)
    body = finalized.body.to_json()
    while body["status"] != "valid":
        assert body["status"] in ("processing", "ready"), body
        time.sleep(POLL)
        body = client._post_as_get(order.uri).json()
    chain = client._post_as_get(body["certificate"]).text
    assert chain.startswith("-----BEGIN CERTIFICATE-----")


def drive(target: Target, clients: int, seconds: float) -> tuple[float, list[float]]:
    """Run `clients` concurrent clients for `seconds`; return (orders/s, latencies)."""
    accounts = [_client(target) for _ in range(clients)]
    for account in accounts:  # warm-up: connections, first-use costs
        one_order(account, target, f"warm-{uuid.uuid4().hex[:8]}.bench.example.org")
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def worker(account: acme_client.ClientV2) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                one_order(account, target, f"o{uuid.uuid4().hex[:12]}.bench.example.org")
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - started)

    begun = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(a,)) for a in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begun
    if errors:
        raise RuntimeError(f"{target.name}: {errors[0]!r}")
    return len(latencies) / elapsed, latencies


# --------------------------------------------------------------------------- servers


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble bench")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "pebble.pem", directory / "pebble-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _wait(url: str, bundle: str, process: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context(cafile=bundle)
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError, OSError):
            if httpx.get(url, verify=context).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def pebble(work: Path) -> Iterator[Target]:
    exe = shutil.which("pebble")
    if exe is None:
        raise SystemExit("pebble is not installed (apt-get install pebble)")
    cert, key = _self_signed(work)
    port = _free_port()
    config = work / "pebble.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{port}",
                    "managementListenAddress": f"127.0.0.1:{_free_port()}",
                    "certificate": str(cert),
                    "privateKey": str(key),
                    "httpPort": _free_port(),
                    "tlsPort": _free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_VA_ALWAYS_VALID": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
    }
    process = subprocess.Popen(
        [exe, "-config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"https://127.0.0.1:{port}/dir"
        _wait(url, str(cert), process)
        yield Target("pebble", url, str(cert), None, None)
    finally:
        _stop(process)


@contextlib.contextmanager
def trustd(work: Path, label: str, workers: int, postgres: bool) -> Iterator[Target]:
    dns, responder = DnsServer(), Http01Responder()
    port = _free_port()
    data_dir = work / f"var-{label}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    env |= {
        "TRUSTD_ACME_HTTP01_PORT": str(responder.port),
        "TRUSTD_ACME_DNS_RESOLVER": dns.address,
        "TRUSTD_ACME_ORDERS_PER_HOUR": "10000000",
        "TRUSTD_ACME_IDENTIFIER_ORDERS_PER_HOUR": "1000",
    }
    dbname = f"trustd_bench_acme_{os.getpid()}_{label}"
    if postgres:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')  # type: ignore[arg-type]
        env["TRUSTD_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}"
        env["TRUSTD_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    process = subprocess.Popen(
        [
            str(TRUSTD),
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"https://127.0.0.1:{port}"
        for _ in range(300):
            if (data_dir / "bundle.pem").exists():
                break
            time.sleep(0.1)
        bundle = str(data_dir / "bundle.pem")
        _wait(f"{url}/readyz", bundle, process)
        yield Target(label, f"{url}/acme/directory", bundle, responder, dns)
    finally:
        _stop(process)
        responder.close()
        dns.close()
        if postgres:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')  # type: ignore[arg-type]


def _row(name: str, rate: float, latencies: list[float], baseline: float) -> str:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return (
        f"{name:<34} {rate:8.1f} orders/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
        f"n={len(ordered):<5} ratio {rate / baseline:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trustd-bench-acme-") as tmp:
        work = Path(tmp)
        with pebble(work) as target:
            base_rate, base_lat = drive(target, args.clients, args.seconds)
        results = [("pebble (VA always valid)", base_rate, base_lat)]
        for label, workers, postgres in (
            ("trustd sqlite, 1 worker", 1, False),
            ("trustd postgres+redis, 2 workers", 2, True),
        ):
            with trustd(work, label.split()[1].replace("+", "-"), workers, postgres) as target:
                rate, lat = drive(target, args.clients, args.seconds)
            results.append((label, rate, lat))
    print(f"ACME orders, {args.clients} concurrent clients, {args.seconds:g} s each")
    for name, rate, lat in results:
        print(_row(name, rate, lat, base_rate))
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    for (_name, rate, _lat), measure in zip(
        results[1:], ("acme_orders_sqlite", "acme_orders_postgres_redis"), strict=True
    ):
        print(result(measure, rate, "orders/s", base_rate, ">=1.0x", rate >= base_rate))


if __name__ == "__main__":
    main()
