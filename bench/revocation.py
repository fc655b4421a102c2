"""Revocation: CRL generation, OCSP throughput, and how fast a revocation reaches agents.

Runs the real services on PostgreSQL and Redis (a scratch database, dropped afterwards):

1. CRL of 10k and 100k revoked entries through `Revocations.crl` (read the entries, build,
   sign, store), against signing the same CRL in memory (`pki.revocation.build_crl`) as the
   baseline. Target: 100k entries < 2 s.
2. OCSP responses per second through `Revocations.ocsp` (parse, look the serial up, sign),
   one thread, against building and signing the same response without the database.
3. Revocation to 100 simulated agents: each agent long-polls the `revocation` channel of a
   Redis bus (spread over two replicas' buses) and, when woken, reads the revocations since
   its revision from the database. Reports p50/p99 of revoke-call-start -> agent applied,
   with a bare Redis publish -> subscriber round trip measured in the same run as the
   baseline. Target: p99 < 1 s.

Usage: python bench/revocation.py [--agents 100] [--revocations 20] [--seconds 5]
Needs: PostgreSQL on 127.0.0.1:5432 (trust auth), Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from sqlalchemy import delete, insert, update

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from pki.revocation import GOOD, RevocationReason, RevokedEntry, build_crl, build_ocsp_response
from pki.revocation import parse_ocsp_request as parse_request
from trustd.bus import RedisBus
from trustd.redis_clients import RedisTarget
from trustd.services.auth import Principal, Role
from trustd.services.container import Services
from trustd.store.db import transaction
from trustd.store.revocations import CrlState, RevocationEvent, RevocationState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REDIS_URL, in_process, percentile, result, scratch_database

ADMIN = Principal("bench", Role.ADMIN)


def fill_revocations(services: Services, kid: str, count: int) -> None:
    """Replace the issuer's revocation entries with *count* synthetic ones."""
    now = services.clock.now()
    with transaction(services.engine) as session:
        session.execute(delete(RevocationEvent))
        session.execute(delete(CrlState))
        session.execute(update(RevocationState).values(revision=count))
        if not count:
            return
        session.connection().execute(
            insert(RevocationEvent.__table__),  # type: ignore[attr-defined]
            [
                {
                    "revision": n + 1,
                    "serial": format(10**12 + n, "x"),
                    "issuer_kid": kid,
                    "spiffe_id": f"spiffe://example.org/w/{n}",
                    "reason": "keyCompromise" if n % 2 else "unspecified",
                    "revoked_at": now,
                    "not_after": now + timedelta(hours=1),
                    "revoked_by": "bench",
                }
                for n in range(count)
            ],
        )


def bench_crl(services: Services) -> list[str]:
    state = services.ca.state
    authority = state.authority
    now = services.clock.now()
    print("CRL generation (PostgreSQL, stored; baseline: build + sign in memory)")
    results = []
    for count in (10_000, 100_000):
        fill_revocations(services, state.authority_kid, count)
        entries = [
            RevokedEntry(10**12 + n, now, RevocationReason.KEY_COMPROMISE) for n in range(count)
        ]
        started = time.perf_counter()
        build_crl(
            authority.certificate, authority.private_key, entries, 1, now, now + timedelta(hours=1)
        )
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        der = services.revocations.crl(state.authority_kid)
        full = time.perf_counter() - started
        started = time.perf_counter()
        cached = services.revocations.crl(state.authority_kid)
        served = time.perf_counter() - started
        assert cached == der and len(x509.load_der_x509_crl(der)) == count
        print(
            f"  {count:>7} entries: {full:.3f} s generated and stored ({len(der) / 1e6:.1f} MB), "
            f"baseline {baseline:.3f} s, ratio {full / baseline:.2f}x; "
            f"served from store {served * 1000:.1f} ms  [target < 2 s: "
            f"{'met' if full < 2 else 'MISSED'}]"
        )
        results.append(result(f"crl_{count}_entries", full, "s", baseline, "<2", full < 2))
    fill_revocations(services, state.authority_kid, 0)
    return results


def bench_ocsp(services: Services, seconds: float) -> str:
    issued = asyncio.run(
        services.issuer.issue_x509_svid(
            ADMIN,
            "spiffe://example.org/ocsp",
            create_csr(generate_private_key(KeyType.EC_P256)).encode(),
        )
    )
    issuer = issued.intermediates[0]
    # RFC 5019 §2.1.1: the SHA-1 CertID that clients send.
    der = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, issuer, hashes.SHA1())  # noqa: S303
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    authority = services.ca.state.authority
    request = parse_request(der)

    def rate(work: object) -> float:
        count = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            work()  # type: ignore[operator]
            count += 1
        return count / seconds

    now = services.clock.now()
    baseline = rate(
        lambda: build_ocsp_response(
            request, issuer, authority.private_key, GOOD, now, now + timedelta(hours=1)
        )
    )
    answer = ocsp.load_der_ocsp_response(services.revocations.ocsp(der))
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    full = rate(lambda: services.revocations.ocsp(der))
    print("OCSP (one thread; baseline: sign the same response without parsing or database)")
    print(f"  {full:,.0f} responses/s, baseline {baseline:,.0f}/s, ratio {full / baseline:.2f}")
    return result("ocsp_responses", full, "responses/s", baseline, "-", None)


async def redis_round_trip(samples: int) -> list[float]:
    a, b = RedisBus(RedisTarget(REDIS_URL)), RedisBus(RedisTarget(REDIS_URL))
    await a.start()
    await b.start()
    channel = f"bench:{uuid.uuid4().hex}"
    times: list[float] = []
    for _ in range(samples):
        waiter = asyncio.create_task(b.wait(channel))
        await asyncio.sleep(0.005)
        started = time.perf_counter()
        await asyncio.to_thread(a.publish, channel, "x")
        await waiter
        times.append(time.perf_counter() - started)
    await a.stop()
    await b.stop()
    return times


async def bench_agents(services: Services, agents: int, revocations: int) -> str:
    # Two replicas' buses: the services' own (the revoker) and a second one.
    other = RedisBus(RedisTarget(REDIS_URL))
    await services.bus.start()
    await other.start()
    buses = [services.bus, other]
    csr = create_csr(generate_private_key(KeyType.EC_P256)).encode()
    serials = [
        format(
            (
                await services.issuer.issue_x509_svid(ADMIN, f"spiffe://example.org/a/{n}", csr)
            ).certificate.serial_number,
            "x",
        )
        for n in range(revocations)
    ]
    applied: dict[str, list[float]] = {s: [] for s in serials}
    complete = {s: asyncio.Event() for s in serials}
    revision = services.revocations.since(0, 1).revision

    async def agent(index: int) -> None:
        bus = buses[index % len(buses)]
        mine = revision
        while True:
            announced: int | None = None
            try:
                async with asyncio.timeout(5):
                    announced = int(await bus.wait("revocation"))
            except TimeoutError:
                pass  # a lost wake costs latency only: read anyway
            feed = await asyncio.to_thread(services.revocations.since, mine, 1000, announced)
            at = time.perf_counter()
            for event in feed.events:
                applied[event.serial].append(at)
                if len(applied[event.serial]) == agents:
                    complete[event.serial].set()
            mine = feed.revision

    tasks = [asyncio.create_task(agent(i)) for i in range(agents)]
    await asyncio.sleep(0.5)  # every agent is waiting
    latencies: list[float] = []
    for serial in serials:
        started = time.perf_counter()
        await asyncio.to_thread(services.revocations.revoke, ADMIN, serial=serial)
        async with asyncio.timeout(30):
            await complete[serial].wait()
        latencies += [t - started for t in applied[serial]]
        await asyncio.sleep(0.05)  # agents are back to waiting
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await other.stop()
    await services.bus.stop()
    baseline = await redis_round_trip(50)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(
        f"Revocation -> {agents} agents applied ({revocations} revocations, "
        f"{len(latencies)} deliveries; Redis bus + database read per agent)"
    )
    print(
        f"  p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms;"
        f" baseline Redis publish->subscriber p50 {statistics.median(baseline) * 1000:.2f} ms,"
        f" p99 ratio {p99 / percentile(baseline, 99):.0f}x  "
        f"[target p99 < 1 s: {'met' if p99 < 1 else 'MISSED'}]"
    )
    return result(
        f"revocation_to_{agents}_agents_p99", p99, "s", percentile(baseline, 99), "<1", p99 < 1
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--revocations", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with scratch_database() as url, tempfile.TemporaryDirectory() as tmp:
        services = in_process(url, Path(tmp), redis_url=REDIS_URL)
        results = bench_crl(services)
        results.append(bench_ocsp(services, args.seconds))
        results.append(asyncio.run(bench_agents(services, args.agents, args.revocations)))
        services.engine.dispose()
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    for line in results:
        print(line)


if __name__ == "__main__":
    main()
