"""Admin UI page times at scale: entries, certificates and the decision log.

Seeds a scratch PostgreSQL database with bulk COPY (10,000 registration entries, 100,000
issued certificates, 1,000,000 decision-log rows), signs in through the UI form, then
requests each page repeatedly through the real app (ASGI, in-process) and prints p50 and
p95 server time per page. The baseline is `/healthz` through the same client in the same
run: the ratio is the page's own cost over the framework's fixed cost.
Target: p95 < 150 ms for each page.

Usage: python bench/ui.py [--entries 10000] [--certificates 100000] [--decisions 1000000]
       [--requests 40]
Needs: PostgreSQL on 127.0.0.1:5432 (trust auth).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from policy.engine import Result
from trustd.app import create_app
from trustd.roles import Role
from trustd.services.auth import Principal
from trustd.services.container import Services
from trustd.services.policy import result_hash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import in_process, percentile, result, scratch_database

TD = "spiffe://example.org"
PASSWORD = "bench password long enough"  # noqa: S105 - a throwaway account


def seed(dsn: str, services: Services, entries: int, certificates: int, decisions: int) -> None:
    """Bulk-load the three tables with COPY (what a long-running installation holds)."""
    state = services.ca.state
    kid = state.keys[0].kid
    for row in state.keys:
        if row.status == "active" and row.kind == "x509-intermediate":
            kid = row.kid
    pem = state.bundle.to_pem()
    now = services.clock.now()
    allow, deny = result_hash(Result(True, True)), result_hash(Result(True, False))
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        with cur.copy(
            "COPY registration_entries (id, spiffe_id, parent_id, selectors, selectors_key, "
            "x509_ttl, jwt_ttl, dns_names, admin, downstream, hint, revision, created_by, "
            "created_at, updated_at) FROM STDIN"
        ) as copy:
            for n in range(entries):
                selectors = [f"unix:uid:{n}"]
                copy.write_row((
                    uuid.uuid4().hex, f"{TD}/ns/ns{n % 100}/svc{n}", f"{TD}/node/n{n % 50}",
                    json.dumps(selectors), "|".join(selectors), 3600, 300, "[]", False, False,
                    "", n + 1, "bench", now, now,
                ))  # fmt: skip
        with cur.copy(
            "COPY issued_certificates (serial, kind, spiffe_id, issuer_kid, status, not_before, "
            "not_after, certificate_pem, requested_by, created_at) FROM STDIN"
        ) as copy:
            for n in range(certificates):
                copy.write_row((
                    format(10**15 + n * 7919, "x"), "x509-svid",
                    f"{TD}/ns/ns{n % 100}/svc{n % max(entries, 1)}", kid,
                    "revoked" if n % 97 == 0 else "valid", now - timedelta(minutes=5),
                    now + timedelta(hours=1), pem, "bench", now - timedelta(seconds=n),
                ))  # fmt: skip
        with cur.copy(
            "COPY policy_decisions (decision_id, at, path, input, result, defined, result_hash, "
            "revision, latency_us, caller, source, destination) FROM STDIN"
        ) as copy:
            for n in range(decisions):
                allowed = n % 3 != 0
                source, destination = f"{TD}/ns/ns{n % 100}/a", f"{TD}/ns/ns{n % 37}/b"
                copy.write_row((
                    str(uuid.UUID(int=n)), now - timedelta(milliseconds=n * 50),
                    "trustd/mesh/allow",
                    json.dumps({"source": source, "destination": destination}),
                    json.dumps(allowed), True, allow if allowed else deny, 1, 20, "bench",
                    source, destination,
                ))  # fmt: skip
        conn.commit()
        cur.execute("ANALYZE")
    print(
        f"seeded {entries} entries, {certificates} certificates, {decisions} decisions "
        f"in {time.perf_counter() - started:.1f} s"
    )


def sign_in(client: TestClient) -> None:
    form = client.get("/ui/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    response = client.post(
        "/ui/login",
        data={"username": "bench", "password": PASSWORD, "csrf": token[1]},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def measure(client: TestClient, path: str, requests: int) -> tuple[float, float]:
    client.get(path)  # warm caches and prepared statements
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path, follow_redirects=False)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code in (200, 303), (path, response.status_code)
    return statistics.median(times), percentile(times, 95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--certificates", type=int, default=100_000)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()

    with scratch_database("trustd_bench_ui") as url:
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with tempfile.TemporaryDirectory() as tmp:
            services = in_process(url, Path(tmp), ui_cookie_secure=False)
            services.ui.create_user(
                Principal("bench", Role.ADMIN), "bench", PASSWORD, Role.ADMIN, totp=False
            )
            seed(dsn, services, args.entries, args.certificates, args.decisions)
            with TestClient(create_app(services.settings, services)) as client:
                sign_in(client)
                mid = format(10**15 + (args.certificates // 2) * 7919, "x")
                # A keyset page seven hours into the million rows (one every 50 ms).
                older = services.clock.now() - timedelta(hours=7)
                cursor = older.strftime("%Y-%m-%dT%H:%M:%S") + "|f"
                pages = {
                    "baseline /healthz": "/healthz",
                    "entries, first page": "/ui/entries",
                    "entries, page 100": "/ui/entries?page=100",
                    "entries, by SPIFFE ID": f"/ui/entries?spiffe_id={TD}/ns/ns7/svc7",
                    "entries, by selector": "/ui/entries?selector=unix:uid:4242",
                    "certificates, first page": "/ui/certificates",
                    "certificates, mid keyset page": f"/ui/certificates?after={mid}",
                    "certificates, by SPIFFE ID": f"/ui/certificates?q={TD}/ns/ns3/svc3",
                    "certificates, revoked only": "/ui/certificates?status=revoked",
                    "decisions, first page": "/ui/decisions",
                    "decisions, denied only": "/ui/decisions?result=deny",
                    "decisions, by source": f"/ui/decisions?source={TD}/ns/ns5/a",
                    "decisions, by source+destination": (
                        f"/ui/decisions?source={TD}/ns/ns5/a&destination={TD}/ns/ns5/b"
                    ),
                    "decisions, 7 h back (keyset)": f"/ui/decisions?before={cursor}",
                }
                results = {
                    label: measure(client, path, args.requests) for label, path in pages.items()
                }
            services.engine.dispose()

    base = results["baseline /healthz"][1]
    print(f"\n{'page':36} {'p50 ms':>8} {'p95 ms':>8} {'p95/base':>9}  target p95 < 150 ms")
    for label, (p50, p95) in results.items():
        verdict = "" if label.startswith("baseline") else ("ok" if p95 < 150 else "SLOW")
        print(f"{label:36} {p50:8.1f} {p95:8.1f} {p95 / base:9.1f}  {verdict}")
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    for label, (_p50, p95) in results.items():
        if not label.startswith("baseline"):
            measure_name = "ui_p95_" + re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
            print(result(measure_name, p95, "ms", base, "<150", p95 < 150))


if __name__ == "__main__":
    main()
