"""Faults injected one at a time into the HA topology (deploy/ha/topology.py) under load.

While issuing clients request X509-SVIDs through HAProxy and an ACME client fetches nonces,
each fault is injected and measured:

- PostgreSQL primary killed (kill -9 of its postmaster; Patroni promotes the synchronous
  standby): seconds issuance was unavailable, what the failed requests answered (503 with
  Retry-After is the only acceptable answer), and the certificates returned to a client
  but missing from the database (must be 0).
- Redis master killed (kill -9; Sentinel promotes the replica): issuance unaffected, ACME
  nonces refused with 503 + Retry-After until the promotion, then served again.
- The replica holding the rotation lease killed (kill -9): seconds until another replica
  claims the next fencing epoch (target: within the lease plus one tick).

Prints one table, then one RESULT line per fault.

Usage: python bench/ha_faults.py [--clients 8] [--dir DIR]   (`make ha-test`)
Needs: root, Debian patroni etcd-server redis-sentinel haproxy postgresql redis-server.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "ha"))
from harness import result
from topology import DATABASE, Topology, wait_for


@dataclass
class Outcome:
    started: float
    ended: float
    status: int  # 0: no HTTP answer (connection refused or reset, timeout)
    retry_after: str | None = None
    serial: str | None = None
    detail: str = ""


@dataclass
class Load:
    """Threads repeating one request through HAProxy and recording every outcome."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def record(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def between(self, start: float, end: float) -> list[Outcome]:
        with self.lock:
            return [o for o in self.outcomes if start <= o.started <= end]

    def halt(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def issuing_clients(topology: Topology, clients: int) -> Load:
    load = Load("x509-svid issuance")
    key = generate_private_key(KeyType.EC_P256)
    body = {"spiffe_id": "spiffe://example.org/ha/load", "csr": create_csr(key)}
    headers = {"Authorization": f"Bearer {topology.token}"}

    def run() -> None:
        with httpx.Client(base_url=topology.url, verify=topology.tls(), timeout=10) as http:
            while not load.stop.is_set():
                started = time.monotonic()
                try:
                    r = http.post("/v1/svid/x509", json=body, headers=headers)
                except httpx.HTTPError as exc:
                    load.record(Outcome(started, time.monotonic(), 0, detail=type(exc).__name__))
                    time.sleep(0.05)
                    continue
                serial = r.json().get("serial") if r.status_code == 201 else None
                detail = "" if r.status_code == 201 else r.text[:120]
                load.record(
                    Outcome(
                        started,
                        time.monotonic(),
                        r.status_code,
                        r.headers.get("retry-after"),
                        serial,
                        detail,
                    )
                )
                if r.status_code != 201:
                    time.sleep(0.05)

    for _ in range(clients):
        load.threads.append(threading.Thread(target=run, daemon=True))
    return load


def nonce_client(topology: Topology) -> Load:
    load = Load("acme new-nonce")

    def run() -> None:
        with httpx.Client(base_url=topology.url, verify=topology.tls(), timeout=10) as http:
            while not load.stop.is_set():
                started = time.monotonic()
                try:
                    r = http.head("/acme/new-nonce")
                    load.record(
                        Outcome(
                            started, time.monotonic(), r.status_code, r.headers.get("retry-after")
                        )
                    )
                except httpx.HTTPError as exc:
                    load.record(Outcome(started, time.monotonic(), 0, detail=type(exc).__name__))
                time.sleep(0.02)

    load.threads.append(threading.Thread(target=run, daemon=True))
    return load


@dataclass
class Figures:
    fault: str
    operation: str
    unavailable_s: float
    requests: int
    failed: int
    failed_not_503: int
    missing_in_db: int | None = None
    note: str = ""


def window(outcomes: list[Outcome], ok: int, fault_at: float) -> tuple[float, int, int]:
    """Seconds from the fault to the first success after the last failure (0 if nothing
    failed), failures, failures that were not a 503 with Retry-After."""
    failures = [o for o in outcomes if o.status != ok]
    bad = sum(1 for o in failures if not (o.status == 503 and o.retry_after))
    if not failures:
        return 0.0, 0, 0
    last_failure = max(o.ended for o in failures)
    after = [o.ended for o in outcomes if o.status == ok and o.started >= last_failure - 1e-3]
    recovered = min(after) if after else last_failure
    return recovered - fault_at, len(failures), bad


def answers(outcomes: list[Outcome], ok: int) -> str:
    """What the failed requests got, most frequent first (e.g. `503:610 0/ReadError:3`)."""
    counts = Counter(
        f"{o.status}" + (f"/{o.detail}" if o.status == 0 else "")
        for o in outcomes
        if o.status != ok
    )
    return " ".join(f"{k}:{v}" for k, v in counts.most_common())


def odd_answers(outcomes: list[Outcome], ok: int) -> set[str]:
    """The bodies of failures other than no answer and 503 (what to look into)."""
    return {o.detail for o in outcomes if o.status not in (ok, 0, 503)}


def missing_serials(topology: Topology, serials: set[str]) -> int:
    """Certificates a client received that the (new) primary does not hold."""
    url = f"postgresql://postgres@127.0.0.1:{topology.ports.haproxy_pg}/{DATABASE}"
    with psycopg.connect(url, connect_timeout=5) as conn:
        held = {
            row[0]
            for row in conn.execute(
                "SELECT serial FROM issued_certificates WHERE serial = ANY(%s)", (list(serials),)
            )
        }
    return len(serials - held)


def fault_postgres(topology: Topology, issuing: Load, settle: float) -> tuple[Figures, float]:
    time.sleep(settle)
    old = topology.primary_index()
    fault_at = time.monotonic()
    killed = topology.kill_postgres_primary()
    promoted = wait_for(
        "a new PostgreSQL primary", lambda: topology.primary_index() not in (None, killed), 60
    )
    time.sleep(settle + 3)
    outcomes = issuing.between(fault_at - settle, time.monotonic())
    for text in sorted(odd_answers(outcomes, 201))[:5]:
        print(f"  answered: {text}", file=sys.stderr)
    unavailable, failed, bad = window(outcomes, 201, fault_at)
    serials = {o.serial for o in issuing.between(0, time.monotonic()) if o.serial}
    missing = missing_serials(topology, serials)
    # The old primary comes back as a standby of the new one (Patroni, pg_rewind).
    rejoined = wait_for(
        "the old primary rejoins", lambda: topology.patroni_role(killed) == "replica", 90
    )
    note = (
        f"pg{(old or 0) + 1} killed, promoted after {promoted:.1f} s, rejoined "
        f"+{rejoined:.1f} s; failed: {answers(outcomes, 201)}"
    )
    return Figures(
        "postgres primary killed",
        issuing.name,
        unavailable,
        len(outcomes),
        failed,
        bad,
        missing,
        note,
    ), promoted


def fault_redis(topology: Topology, issuing: Load, nonces: Load, settle: float) -> list[Figures]:
    time.sleep(settle)
    master = topology.redis_master_port()
    proc = topology.procs[topology.redis_proc_on(master)]
    fault_at = time.monotonic()
    proc.kill()
    promoted = wait_for(
        "Sentinel promotes the replica", lambda: topology.redis_master_port() != master, 60
    )
    time.sleep(settle + 3)
    end = time.monotonic()
    rows = []
    for load, ok in ((issuing, 201), (nonces, 200)):
        outcomes = load.between(fault_at - settle, end)
        for text in sorted(odd_answers(outcomes, ok))[:5]:
            print(f"  answered: {text}", file=sys.stderr)
        unavailable, failed, bad = window(outcomes, ok, fault_at)
        rows.append(
            Figures(
                "redis master killed",
                load.name,
                unavailable,
                len(outcomes),
                failed,
                bad,
                note=f"promoted after {promoted:.1f} s; failed: {answers(outcomes, ok)}",
            )
        )
    # Back as a replica of the new master, as in production after a restart.
    proc.start()
    return rows


def leader_fence(topology: Topology) -> tuple[int, str]:
    url = f"postgresql://postgres@127.0.0.1:{topology.ports.haproxy_pg}/{DATABASE}"
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT epoch, holder FROM leader_fences WHERE name = 'ca-rotation'"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def fault_leader(topology: Topology, issuing: Load, settle: float) -> tuple[Figures, float]:
    time.sleep(settle)
    epoch, holder = leader_fence(topology)
    pid = int(holder.split(":")[1])
    name = next(
        (
            n
            for n, p in topology.procs.items()
            if n.startswith("trustd-") and p.alive() and p.pid == pid
        ),
        None,
    )
    if name is None:
        raise RuntimeError(f"no replica runs as the leader {holder}")
    fault_at = time.monotonic()
    topology.procs[name].kill()
    took = wait_for("another replica leads", lambda: leader_fence(topology)[0] > epoch, 60)
    new_epoch, new_holder = leader_fence(topology)
    time.sleep(settle + 2)
    outcomes = issuing.between(fault_at - settle, time.monotonic())
    for text in sorted(odd_answers(outcomes, 201))[:5]:
        print(f"  answered: {text}", file=sys.stderr)
    unavailable, failed, bad = window(outcomes, 201, fault_at)
    serials = {o.serial for o in issuing.between(0, time.monotonic()) if o.serial}
    note = (
        f"{name} (epoch {epoch}) killed; epoch {new_epoch} claimed after {took:.1f} s; "
        f"failed: {answers(outcomes, 201)}"
    )
    del new_holder
    figures = Figures(
        "leader replica killed",
        issuing.name,
        unavailable,
        len(outcomes),
        failed,
        bad,
        missing_serials(topology, serials),
        note,
    )
    topology.start_replica(int(name.split("-")[1]) - 1)
    return figures, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="issuing clients (threads)")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds of load around each fault"
    )
    parser.add_argument("--dir", type=Path, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--database", choices=("haproxy", "multi-host"), default="multi-host")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="trustd-ha-test-"))
    rows: list[Figures] = []
    results: list[str] = []
    try:
        with Topology(root, database=args.database) as topology:
            issuing = issuing_clients(topology, args.clients)
            nonces = nonce_client(topology)
            for t in issuing.threads + nonces.threads:
                t.start()
            try:
                figures, promoted = fault_postgres(topology, issuing, args.settle)
                rows.append(figures)
                target = promoted + 2
                results.append(
                    result(
                        "ha_postgres_failover_issuance_unavailable",
                        figures.unavailable_s,
                        "s",
                        promoted,
                        f"<={target:.1f}s",
                        figures.unavailable_s <= target
                        and figures.failed_not_503 == 0
                        and figures.missing_in_db == 0,
                    )
                )
                redis_rows = fault_redis(topology, issuing, nonces, args.settle)
                rows.extend(redis_rows)
                issuing_row, nonce_row = redis_rows
                results.append(
                    result(
                        "ha_redis_failover_issuance_unavailable",
                        issuing_row.unavailable_s,
                        "s",
                        0.0,
                        "==0s",
                        issuing_row.failed == 0,
                    )
                )
                results.append(
                    result(
                        "ha_redis_failover_acme_nonce_unavailable",
                        nonce_row.unavailable_s,
                        "s",
                        0.0,
                        "<=10s",
                        nonce_row.unavailable_s <= 10 and nonce_row.failed_not_503 == 0,
                    )
                )
                lease = max(3 * topology.rotation_interval, 5)
                figures, took = fault_leader(topology, issuing, args.settle)
                rows.append(figures)
                target = lease + topology.rotation_interval
                results.append(
                    result(
                        "ha_leader_failover_seconds",
                        took,
                        "s",
                        lease,
                        f"<={target}s",
                        took <= target and figures.missing_in_db == 0,
                    )
                )
            finally:
                issuing.halt()
                nonces.halt()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{'fault':<24} {'operation':<20} {'unavail s':>9} {'requests':>8} {'failed':>6} "
        f"{'not 503':>7} {'not in db':>9}  note"
    )
    for r in rows:
        missing = "-" if r.missing_in_db is None else str(r.missing_in_db)
        print(
            f"{r.fault:<24} {r.operation:<20} {r.unavailable_s:>9.2f} {r.requests:>8} "
            f"{r.failed:>6} {r.failed_not_503:>7} {missing:>9}  {r.note}"
        )
    print()
    for line in results:
        print(line)
    return 0 if not any(line.endswith("not met") for line in results) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
