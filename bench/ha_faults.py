"""Faults injected one at a time into the HA topology (deploy/ha/topology.py) under load.

While issuing clients request X509-SVIDs through HAProxy, an ACME client fetches nonces and
real agents (`trustd agent`, each given every replica's address, a different one first)
answer ext_authz probes about SVIDs, each fault is injected and measured:

- PostgreSQL primary killed (kill -9 of its postmaster; Patroni promotes the synchronous
  standby): seconds issuance was unavailable, what the failed requests answered (503 with
  Retry-After is the only acceptable answer).
- Redis master killed (kill -9; Sentinel promotes the replica): issuance unaffected, ACME
  nonces refused with 503 + Retry-After until the promotion, then served again.
- The replica holding the rotation lease killed (kill -9): seconds until another replica
  claims the next fencing epoch (target: within the lease plus one tick).
- The leader killed while an intermediate rotation is under way (the next key prepared,
  not active; intermediates live `--intermediate-ttl` seconds so that rotations happen in
  the run): the next leader activates that key once and prepares none.
- Every Redis server down for `--redis-down` seconds (both killed, then started again).
- HAProxy killed and started again.
- An agent killed and started again.
- The last replica's wall clock stepped 5 minutes ahead for 15 s (it runs under
  libfaketime; its monotonic clock is not stepped, as an NTP step leaves it). Injected
  first, while the intermediate has most of its short life left: stepped past its expiry
  the replica could sign nothing at all.

For every fault the columns that must be 0: certificates returned to a client but not in
the database; SVIDs that stopped verifying (the last 100 returned, checked against the
bundle served afterwards; and probe SVIDs an agent refused as unverifiable while
unexpired); double rotations (more than one active or prepared key of a kind, and in the
rotation fault a second activation or a new preparation); revocations (one made during
each fault) that did not reach every agent within 5 s of the fault's end; enforcement gaps
(probes an agent left unanswered or answered without policy, bundle or word from trustd).

Prints one table, then one RESULT line per fault.

Usage: python bench/ha_faults.py [--clients 8] [--agents 3] [--dir DIR]   (`make ha-test`;
with --dir the scratch directory and its logs are kept)
Needs: root, Debian patroni etcd-server redis-sentinel haproxy postgresql redis-server
faketime.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg

from pki.ca import load_pem_certificates
from pki.clock import SystemClock
from pki.csr import create_csr
from pki.errors import TrustdError
from pki.keys import KeyType, generate_private_key
from pki.x509_svid import verify_x509_svid
from trustd.agent.client import bundle_from_jwks

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "ha"))
from harness import result
from topology import DATABASE, TRUSTD, Proc, Topology, free_port, wait_for

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
PROBE_DESTINATION = "spiffe://example.org/ha/destination"
# Revocations must reach every agent within this long after the fault is over.
REVOCATION_BOUND = 5.0


@dataclass
class Outcome:
    started: float
    ended: float
    status: int  # 0: no HTTP answer (connection refused or reset, timeout)
    retry_after: str | None = None
    serial: str | None = None
    detail: str = ""
    chain: str | None = None  # the SVID and its intermediates, PEM, as returned


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
                document = r.json() if r.status_code == 201 else {}
                detail = "" if r.status_code == 201 else r.text[:120]
                chain = (
                    document["certificate"] + "".join(document["intermediates"])
                    if document
                    else None
                )
                load.record(
                    Outcome(
                        started,
                        time.monotonic(),
                        r.status_code,
                        r.headers.get("retry-after"),
                        document.get("serial"),
                        detail,
                        chain,
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
    unverified: int | None = None
    double_rotations: int | None = None
    revocations_late: int | None = None
    enforcement_gaps: int | None = None


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


def fault_postgres(
    topology: Topology, issuing: Load, agents: list[Agent], settle: float
) -> tuple[Figures, float]:
    target = arm(topology, agents, "postgres")
    time.sleep(settle)
    old = topology.primary_index()
    fault_at = time.monotonic()
    killed = topology.kill_postgres_primary()
    revocation = Revocation(topology, target)
    promoted = wait_for(
        "a new PostgreSQL primary", lambda: topology.primary_index() not in (None, killed), 60
    )
    recovered_at = fault_at + promoted
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
    figures = Figures(
        "postgres primary killed",
        issuing.name,
        unavailable,
        len(outcomes),
        failed,
        bad,
        missing,
        note,
    )
    complete(
        topology,
        figures,
        issuing,
        agents,
        (fault_at - settle, time.monotonic()),
        revocation.at,
        recovered_at,
    )
    return figures, promoted


def fault_redis(
    topology: Topology, issuing: Load, nonces: Load, agents: list[Agent], settle: float
) -> list[Figures]:
    target = arm(topology, agents, "redis-master")
    time.sleep(settle)
    master = topology.redis_master_port()
    proc = topology.procs[topology.redis_proc_on(master)]
    fault_at = time.monotonic()
    proc.kill()
    revocation = Revocation(topology, target)
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
    complete(
        topology,
        rows[0],
        issuing,
        agents,
        (fault_at - settle, end),
        revocation.at,
        fault_at + promoted,
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


def fault_leader(
    topology: Topology, issuing: Load, agents: list[Agent], settle: float
) -> tuple[Figures, float]:
    target = arm(topology, agents, "leader")
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
    revocation = Revocation(topology, target)
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
    complete(
        topology,
        figures,
        issuing,
        agents,
        (fault_at - settle, time.monotonic()),
        revocation.at,
        fault_at + took,
    )
    topology.start_replica(int(name.split("-")[1]) - 1)
    return figures, took


# -- agents and what their ext_authz endpoints answer ------------------------------------


def _db(topology: Topology) -> psycopg.Connection[tuple[object, ...]]:
    url = f"postgresql://postgres@127.0.0.1:{topology.ports.haproxy_pg}/{DATABASE}"
    return psycopg.connect(url, connect_timeout=5, autocommit=True)


@dataclass
class Cert:
    serial: str
    chain: str  # PEM, leaf first
    not_after: datetime


def issue(topology: Topology, name: str) -> Cert:
    """An X509-SVID through HAProxy (retried while a fault refuses it, bounded)."""
    body = {
        "spiffe_id": f"spiffe://example.org/ha/{name}",
        "csr": create_csr(generate_private_key(KeyType.EC_P256)),
    }
    headers = {"Authorization": f"Bearer {topology.token}"}
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.post(
                f"{topology.url}/v1/svid/x509",
                json=body,
                headers=headers,
                verify=topology.tls(),
                timeout=10,
            )
            if r.status_code == 201:
                d = r.json()
                return Cert(
                    d["serial"],
                    d["certificate"] + "".join(d["intermediates"]),
                    datetime.fromisoformat(d["not_after"]),
                )
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not issue {name}")
        time.sleep(0.2)


class Revocation:
    """`revoke` on a thread of its own, so that a fault's own timings are not held up by it;
    `at` waits for it."""

    def __init__(self, topology: Topology, cert: Cert) -> None:
        self._done: list[float] = []
        self._thread = threading.Thread(
            target=lambda: self._done.append(revoke(topology, cert)), daemon=True
        )
        self._thread.start()

    @property
    def at(self) -> float:
        self._thread.join(120)
        if not self._done:
            raise RuntimeError("the revocation did not commit")
        return self._done[0]


def revoke(topology: Topology, cert: Cert) -> float:
    """Revoke `cert` through HAProxy, retrying while a fault refuses it (bounded); returns
    when the revocation was committed (monotonic)."""
    headers = {"Authorization": f"Bearer {topology.token}"}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(
                f"{topology.url}/v1/admin/certificates/revoke",
                json={"serial": cert.serial, "reason": "keyCompromise", "quarantine": False},
                headers=headers,
                verify=topology.tls(),
                timeout=10,
            )
            if r.is_success:
                return time.monotonic()
        time.sleep(0.2)
    raise RuntimeError(f"could not revoke {cert.serial}")


@dataclass
class Answer:
    at: float
    kind: str  # ok, revoked, rejected (the SVID did not verify), gap (no usable answer)
    reason: str


@dataclass
class Agent:
    """A real `trustd agent` (all replicas' addresses, its own first) and a prober asking
    its ext_authz endpoint, every 200 ms, about a steady SVID and about the SVID the
    current fault revokes."""

    name: str
    proc: Proc
    port: int
    steady: Cert | None = None
    target: Cert | None = None
    steady_answers: list[Answer] = field(default_factory=list)
    target_answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def ask(self, http: httpx.Client, cert: Cert) -> Answer:
        headers = {
            "X-Client-Cert": quote(cert.chain, safe=""),
            "X-Trustd-Destination": PROBE_DESTINATION,
            "X-Trustd-Port": "443",
        }
        now = time.monotonic()
        try:
            r = http.get(f"http://127.0.0.1:{self.port}/", headers=headers)
            reason = str(r.json().get("reason", ""))
        except (httpx.HTTPError, ValueError) as exc:
            return Answer(now, "gap", type(exc).__name__)
        if "is revoked" in reason:
            return Answer(now, "revoked", reason)
        if reason.startswith("client certificate rejected"):
            return Answer(now, "rejected", reason)
        if reason in ("allowed", "denied by policy"):
            return Answer(now, "ok", reason)
        return Answer(now, "gap", reason)

    def run(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self.stop.is_set():
                steady, target = self.steady, self.target
                if steady is not None:
                    self.steady_answers.append(self.ask(http, steady))
                if target is not None:
                    self.target_answers.append(self.ask(http, target))
                time.sleep(0.2)

    def seen_revoked(self, after: float) -> float | None:
        return next(
            (a.at for a in self.target_answers if a.at >= after and a.kind == "revoked"), None
        )


def start_agents(topology: Topology, count: int) -> list[Agent]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    urls = [f"https://127.0.0.1:{p}" for p in topology.ports.trustd[: topology.replica_count]]
    agents = []
    for i in range(count):
        made = subprocess.run(
            [str(TRUSTD), "token", "create", "--data-dir", str(topology.root / "trustd-1")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=environ,
        )
        words = made.stdout.split()
        work = topology.root / f"agent-{i + 1}"
        work.mkdir()
        first = i % len(urls)
        servers = urls[first:] + urls[:first]
        port = free_port()
        argv = [
            str(TRUSTD),
            "agent",
            *(x for url in servers for x in ("--server", url)),
            *("--join-token", words[words.index("--join-token") + 1]),
            *("--ca-sha256", words[words.index("--ca-sha256") + 1]),
            *("--socket", str(work / "agent.sock"), "--data-dir", str(work / "state")),
            *("--ext-authz-listen", f"127.0.0.1:{port}"),
        ]
        proc = Proc(f"agent-{i + 1}", argv, topology.root / f"agent-{i + 1}.log")
        proc.start()
        topology.procs[proc.name] = proc
        agent = Agent(proc.name, proc, port)
        threading.Thread(target=agent.run, daemon=True).start()
        agents.append(agent)
    return agents


def arm(topology: Topology, agents: list[Agent], fault: str) -> Cert:
    """Before a fault: fresh steady SVIDs, and the SVID the fault will revoke, each known
    to verify at every agent."""
    target = issue(topology, f"{fault}/revoked")
    for agent in agents:
        agent.steady = issue(topology, f"{fault}/{agent.name}")
        agent.target = target
    wait_for(
        "every agent answers about the new SVIDs",
        lambda: all(
            a.steady_answers
            and a.steady_answers[-1].kind == "ok"
            and a.target_answers
            and a.target_answers[-1].kind == "ok"
            for a in agents
        ),
        60,
    )
    return target


def bundle(topology: Topology) -> object:
    """The bundle served now (retried: a fault may have left one replica unable to answer)."""
    for _ in range(10):
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{topology.url}/v1/bundle", verify=topology.tls(), timeout=10)
            if r.is_success:
                return bundle_from_jwks(r.json())
        time.sleep(0.5)
    raise RuntimeError("no replica serves the bundle")


def unverified(topology: Topology, outcomes: list[Outcome], agents: list[Agent]) -> int:
    """SVIDs that stopped verifying: every one the issuing clients got in the window, checked
    against the bundle served now, with this host's clock; and the steady
    SVIDs the agents refused as unverifiable while unexpired."""
    trust = bundle(topology)
    clock = SystemClock()
    now = clock.now()
    failed = 0
    chains = [o.chain for o in outcomes if o.chain]
    for chain in chains:
        certs = load_pem_certificates(chain.encode())
        if certs[0].not_valid_after_utc <= now:
            continue
        try:
            verify_x509_svid(
                certs[0],
                certs[1:],
                trust.x509_authorities,  # type: ignore[attr-defined]
                trust.trust_domain,  # type: ignore[attr-defined]
                clock,
            )
        except TrustdError:
            failed += 1
    for agent in agents:
        steady = agent.steady
        if steady is None:
            continue
        expires = time.monotonic() + (steady.not_after - now).total_seconds()
        failed += (
            sum(
                1
                for a in agent.steady_answers
                if a.kind == "rejected" and a.at < expires and a.at >= outcomes[0].started
            )
            if outcomes
            else 0
        )
    return failed


def gaps(agents: list[Agent], start: float, end: float) -> int:
    return sum(
        1 for a in agents for x in a.steady_answers if start <= x.at <= end and x.kind == "gap"
    )


def late_revocations(
    agents: list[Agent], revoked_at: float, recovered_at: float
) -> tuple[int, float]:
    """Agents that did not refuse the revoked SVID within REVOCATION_BOUND of the later of
    its revocation and the fault's end; and the slowest agent's lag (s)."""
    since = max(revoked_at, recovered_at)
    deadline = since + REVOCATION_BOUND + 10
    while time.monotonic() < deadline and any(a.seen_revoked(revoked_at) is None for a in agents):
        time.sleep(0.2)
    lags = [
        (seen - since) if (seen := a.seen_revoked(revoked_at)) is not None else float("inf")
        for a in agents
    ]
    return sum(1 for lag in lags if lag > REVOCATION_BOUND), max(lags)


def ca_state(topology: Topology) -> dict[str, dict[str, int]]:
    """Keys per kind and status (in the bundle or waiting)."""
    counts: dict[str, dict[str, int]] = {}
    with _db(topology) as conn:
        for kind, status, n in conn.execute(
            "SELECT kind, status, count(*) FROM ca_keys GROUP BY kind, status"
        ):
            counts.setdefault(str(kind), {})[str(status)] = int(n)  # type: ignore[call-overload]
    return counts


def doubled(topology: Topology) -> int:
    """Kinds with more than one active or more than one prepared key."""
    return sum(
        max(0, c.get("active", 0) - 1) + max(0, c.get("prepared", 0) - 1)
        for c in ca_state(topology).values()
    )


def complete(
    topology: Topology,
    figures: Figures,
    issuing: Load,
    agents: list[Agent],
    window: tuple[float, float],
    revoked_at: float,
    recovered_at: float,
    excluded: tuple[Agent, ...] = (),
) -> Figures:
    """Fill the must-be-zero columns of a fault's row."""
    counted = [a for a in agents if a not in excluded]
    outcomes = issuing.between(*window)
    figures.unverified = unverified(topology, outcomes, counted)
    figures.enforcement_gaps = gaps(counted, *window)
    late, slowest = late_revocations(agents, revoked_at, recovered_at)
    figures.revocations_late = late
    figures.note += (
        f"; the revocation reached every agent {max(0.0, slowest):.1f} s after the fault's end"
        if slowest != float("inf")
        else f"; the revocation reached {len(agents) - late} of {len(agents)} agents in 15 s"
    )
    if figures.double_rotations is None:
        figures.double_rotations = doubled(topology)
    if figures.missing_in_db is None:
        serials = {o.serial for o in issuing.between(0, time.monotonic()) if o.serial}
        figures.missing_in_db = missing_serials(topology, serials)
    return figures


def _leader_replica(topology: Topology) -> tuple[str, int]:
    epoch, holder = leader_fence(topology)
    pid = int(holder.split(":")[1])
    for n, p in topology.procs.items():
        if n.startswith("trustd-") and p.alive() and p.pid == pid:
            return n, epoch
    raise RuntimeError(f"no replica runs as the leader {holder}")


def intermediates(topology: Topology) -> str:
    """Every intermediate, oldest first: kid prefix, status, created (DB time)."""
    with _db(topology) as conn:
        rows = conn.execute(
            "SELECT kid, status, created_at FROM ca_keys WHERE kind = 'x509-intermediate' "
            "ORDER BY created_at"
        ).fetchall()
    return ", ".join(f"{str(k)[:8]} {st} {c:%H:%M:%S}" for k, st, c in rows)  # type: ignore[str-format]


def fault_rotation(
    topology: Topology, issuing: Load, agents: list[Agent], settle: float, ttl: float
) -> Figures:
    """kill -9 of the leader while an intermediate rotation is under way (the next key
    prepared and published, not yet active): the next leader must activate that key,
    once, under the next fencing epoch, and prepare no second one."""
    target = arm(topology, agents, "rotation")

    def prepared() -> str | None:
        with _db(topology) as conn:
            row = conn.execute(
                "SELECT kid FROM ca_keys WHERE kind = 'x509-intermediate' AND status = 'prepared'"
            ).fetchone()
        return str(row[0]) if row else None

    wait_for("the leader prepares the next intermediate", lambda: prepared() is not None, ttl)
    kid = prepared()
    name, epoch = _leader_replica(topology)
    with _db(topology) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        killed_db_at = row[0]
    fault_at = time.monotonic()
    topology.procs[name].kill()
    revocation = Revocation(topology, target)
    took = wait_for("another replica leads", lambda: leader_fence(topology)[0] > epoch, 60)

    def status() -> str:
        with _db(topology) as conn:
            row = conn.execute("SELECT status FROM ca_keys WHERE kid = %s", (kid,)).fetchone()
        return str(row[0]) if row else "gone"

    activated = wait_for(
        "the prepared intermediate is activated", lambda: status() == "active", ttl
    )
    recovered_at = time.monotonic()
    time.sleep(settle)
    with _db(topology) as conn:
        # The key prepared when the leader died is the one to activate: one prepared
        # between the kill and that activation would be a second rotation. (The next
        # rotation's key may be prepared soon after it: with short lifetimes the new key
        # is half spent by then.)
        activated_at = conn.execute(
            "SELECT min(at) FROM audit_events WHERE action = 'ca:authority:active' AND target = %s",
            (kid,),
        ).fetchone()
        assert activated_at is not None
        prepared_since = conn.execute(
            "SELECT count(*) FROM ca_keys WHERE kind = 'x509-intermediate' AND created_at > %s "
            "AND created_at <= %s",
            (killed_db_at, activated_at[0]),
        ).fetchone()
        activations = conn.execute(
            "SELECT count(*) FROM audit_events WHERE action = 'ca:authority:active' AND at > %s "
            "AND at <= %s AND details->>'kind' = 'x509-intermediate'",
            (killed_db_at, activated_at[0]),
        ).fetchone()
    assert prepared_since is not None and activations is not None
    new_epoch, _ = leader_fence(topology)
    # Issuance is judged around the leader change; the wait for the activation is long.
    outcomes = issuing.between(fault_at - settle, fault_at + took + settle)
    unavailable, failed, bad = window(outcomes, 201, fault_at)
    figures = Figures(
        "leader killed mid-rotation",
        issuing.name,
        unavailable,
        len(outcomes),
        failed,
        bad,
        note=(
            f"{name} (epoch {epoch}) killed with {str(kid)[:8]} prepared; epoch {new_epoch} after "
            f"{took:.1f} s; {str(kid)[:8]} activated +{activated:.1f} s, {int(activations[0])} "  # type: ignore[call-overload]
            f"activation(s), {int(prepared_since[0])} key(s) prepared in between"  # type: ignore[call-overload]
            f" [intermediates: {intermediates(topology)}]"
        ),
    )
    figures.double_rotations = (
        max(0, int(activations[0]) - 1) + int(prepared_since[0]) + doubled(topology)  # type: ignore[call-overload]
    )
    complete(
        topology,
        figures,
        issuing,
        agents,
        (fault_at - settle, time.monotonic()),
        revocation.at,
        recovered_at,
    )
    topology.start_replica(int(name.split("-")[1]) - 1)
    return figures


def fault_redis_down(
    topology: Topology, issuing: Load, nonces: Load, agents: list[Agent], settle: float, down: float
) -> list[Figures]:
    """Every Redis server down (kill -9) for `down` seconds, then started again."""
    target = arm(topology, agents, "redis-down")
    time.sleep(settle)
    redis = [n for n in topology.procs if n.startswith("redis-") and "sentinel" not in n]
    fault_at = time.monotonic()
    for n in redis:
        topology.procs[n].kill()
    revocation = Revocation(topology, target)
    time.sleep(max(0.0, down - (time.monotonic() - fault_at)))
    for n in redis:
        topology.procs[n].start()
    back = wait_for("Sentinel names a writable master", lambda: redis_writable(topology), 60)
    recovered_at = time.monotonic()
    time.sleep(settle + 3)
    end = time.monotonic()
    rows = []
    for load, ok in ((issuing, 201), (nonces, 200)):
        outcomes = load.between(fault_at - settle, end)
        unavailable, failed, bad = window(outcomes, ok, fault_at)
        rows.append(
            Figures(
                f"all redis down {down:.0f} s",
                load.name,
                unavailable,
                len(outcomes),
                failed,
                bad,
                note=(
                    f"a master again {back:.1f} s after the restart; "
                    f"failed: {answers(outcomes, ok)}"
                ),
            )
        )
    complete(
        topology, rows[0], issuing, agents, (fault_at - settle, end), revocation.at, recovered_at
    )
    return rows


def redis_writable(topology: Topology) -> bool:
    port = topology.redis_master_port()
    role = subprocess.run(
        ["redis-cli", "-p", str(port), "ROLE"], capture_output=True, text=True, timeout=2
    ).stdout.split()
    return bool(role) and role[0] == "master"


def fault_haproxy(topology: Topology, issuing: Load, agents: list[Agent], settle: float) -> Figures:
    """HAProxy killed (-9) and started again; agents talk to the replicas directly."""
    target = arm(topology, agents, "haproxy")
    time.sleep(settle)
    fault_at = time.monotonic()
    haproxy = topology.procs["haproxy"]
    haproxy.kill()
    time.sleep(1)
    haproxy.start()
    up = wait_for("HAProxy sees the replicas", topology._replicas_up, 30)
    recovered_at = time.monotonic()
    revocation = Revocation(topology, target)
    time.sleep(settle)
    outcomes = issuing.between(fault_at - settle, time.monotonic())
    unavailable, failed, bad = window(outcomes, 201, fault_at)
    figures = Figures(
        "haproxy restarted",
        issuing.name,
        unavailable,
        len(outcomes),
        failed,
        bad,
        note=f"down 1 s, replicas UP again +{up:.1f} s; failed: {answers(outcomes, 201)}",
    )
    return complete(
        topology,
        figures,
        issuing,
        agents,
        (fault_at - settle, time.monotonic()),
        revocation.at,
        recovered_at,
    )


def fault_agent(topology: Topology, issuing: Load, agents: list[Agent], settle: float) -> Figures:
    """One agent killed (-9) and started again; the revocation is made while it is down."""
    target = arm(topology, agents, "agent")
    time.sleep(settle)
    agent = agents[0]
    fault_at = time.monotonic()
    agent.proc.kill()
    revocation = Revocation(topology, target)
    time.sleep(2)
    agent.proc.start()
    back = wait_for(
        "the agent answers again",
        lambda: bool(agent.steady_answers) and agent.steady_answers[-1].kind != "gap",
        60,
    )
    recovered_at = time.monotonic()
    time.sleep(settle)
    outcomes = issuing.between(fault_at - settle, time.monotonic())
    unavailable, failed, bad = window(outcomes, 201, fault_at)
    own = gaps([agent], fault_at, recovered_at)
    figures = Figures(
        "agent restarted",
        issuing.name,
        unavailable,
        len(outcomes),
        failed,
        bad,
        note=(
            f"{agent.name} down 2 s, answering again +{back:.1f} s after its start "
            f"({own} probes unanswered meanwhile, not counted: its ext_authz was down)"
        ),
    )
    return complete(
        topology,
        figures,
        issuing,
        agents,
        (fault_at - settle, time.monotonic()),
        revocation.at,
        recovered_at,
        excluded=(agent,),
    )


def fault_clock(
    topology: Topology, issuing: Load, agents: list[Agent], settle: float, stamp: Path
) -> Figures:
    """The last replica's wall clock stepped 5 minutes ahead (libfaketime, which it runs
    under from the start; its monotonic clock is left alone, as an NTP step leaves it),
    kept there for 15 s under load, then stepped back."""
    target = arm(topology, agents, "clock")
    time.sleep(settle)
    fault_at = time.monotonic()
    stamp.write_text("+300\n")
    revocation = Revocation(topology, target)
    time.sleep(15)
    stamp.write_text("+0\n")
    recovered_at = time.monotonic()
    time.sleep(settle + 2)
    outcomes = issuing.between(fault_at - settle, time.monotonic())
    unavailable, failed, bad = window(outcomes, 201, fault_at)
    figures = Figures(
        "replica clock +5 min",
        issuing.name,
        unavailable,
        len(outcomes),
        failed,
        bad,
        note=f"trustd-{topology.replica_count} stepped 15 s; failed: {answers(outcomes, 201)}",
    )
    return complete(
        topology,
        figures,
        issuing,
        agents,
        (fault_at - settle, time.monotonic()),
        revocation.at,
        recovered_at,
    )


def zero(figures: Figures) -> bool:
    """Every must-be-zero column is zero."""
    return (
        figures.missing_in_db == 0
        and figures.unverified == 0
        and figures.double_rotations == 0
        and figures.revocations_late == 0
        and figures.enforcement_gaps == 0
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="issuing clients (threads)")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds of load around each fault"
    )
    parser.add_argument("--dir", type=Path, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--database", choices=("haproxy", "multi-host"), default="multi-host")
    parser.add_argument("--agents", type=int, default=3, help="agents (one per replica first)")
    parser.add_argument(
        "--intermediate-ttl",
        type=int,
        default=600,
        help="seconds an intermediate lives: short, so that rotations happen during the run",
    )
    parser.add_argument(
        "--redis-down", type=float, default=12.0, help="seconds every Redis server stays down"
    )
    args = parser.parse_args()
    if not FAKETIME.exists():
        sys.exit(f"error: {FAKETIME} is missing (Debian package faketime)")
    root = args.dir or Path(tempfile.mkdtemp(prefix="trustd-ha-test-"))
    root.mkdir(parents=True, exist_ok=True)
    rows: list[Figures] = []
    results: list[str] = []
    ttl = args.intermediate_ttl
    settings = {
        "TRUSTD_INTERMEDIATE_TTL": f"PT{ttl}S",
        # A prepared key must be in the bundle this long before it signs: less than the
        # sixth of the intermediate's life between preparation and activation.
        "TRUSTD_BUNDLE_REFRESH_HINT": f"PT{max(2, ttl // 12)}S",
        # Replicas poll for an activation this often besides Redis's wake-up: with Redis
        # down they must still follow the key, which expires soon after.
        "TRUSTD_BUNDLE_RELOAD_INTERVAL": "PT5S",
    }
    stamp = root / "faketime"
    stamp.write_text("+0\n")
    topology = Topology(root, database=args.database, settings=settings)
    # The last replica's wall clock can be stepped (fault_clock); its monotonic clock not.
    topology.replica_overrides[topology.replica_count - 1] = {
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(stamp),
        "FAKETIME_CACHE_DURATION": "1",
        "DONT_FAKE_MONOTONIC": "1",
    }

    def judge(name: str, value: float, baseline: float, target: str, met: bool) -> None:
        results.append(result(name, value, "s", baseline, target, met))

    try:
        with topology:
            issuing = issuing_clients(topology, args.clients)
            nonces = nonce_client(topology)
            for t in issuing.threads + nonces.threads:
                t.start()
            agents = start_agents(topology, args.agents)
            try:
                figures = fault_clock(topology, issuing, agents, args.settle, stamp)
                rows.append(figures)
                judge(
                    "ha_replica_clock_step_issuance_unavailable",
                    figures.unavailable_s,
                    0.0,
                    "==0s and zero columns 0",
                    figures.failed == 0 and zero(figures),
                )
                figures, promoted = fault_postgres(topology, issuing, agents, args.settle)
                rows.append(figures)
                judge(
                    "ha_postgres_failover_issuance_unavailable",
                    figures.unavailable_s,
                    promoted,
                    f"<={promoted + 2:.1f}s",
                    figures.unavailable_s <= promoted + 2
                    and figures.failed_not_503 == 0
                    and zero(figures),
                )
                issuing_row, nonce_row = fault_redis(topology, issuing, nonces, agents, args.settle)
                rows += [issuing_row, nonce_row]
                judge(
                    "ha_redis_failover_issuance_unavailable",
                    issuing_row.unavailable_s,
                    0.0,
                    "==0s",
                    issuing_row.failed == 0 and zero(issuing_row),
                )
                judge(
                    "ha_redis_failover_acme_nonce_unavailable",
                    nonce_row.unavailable_s,
                    0.0,
                    "<=10s",
                    nonce_row.unavailable_s <= 10 and nonce_row.failed_not_503 == 0,
                )
                lease = max(3 * topology.rotation_interval, 5)
                figures, took = fault_leader(topology, issuing, agents, args.settle)
                rows.append(figures)
                target = lease + topology.rotation_interval
                judge(
                    "ha_leader_failover_seconds",
                    took,
                    lease,
                    f"<={target}s",
                    took <= target and zero(figures),
                )
                figures = fault_rotation(topology, issuing, agents, args.settle, ttl)
                rows.append(figures)
                judge(
                    "ha_leader_killed_mid_rotation_issuance_unavailable",
                    figures.unavailable_s,
                    0.0,
                    "zero columns 0",
                    zero(figures),
                )
                issuing_row, nonce_row = fault_redis_down(
                    topology, issuing, nonces, agents, args.settle, args.redis_down
                )
                rows += [issuing_row, nonce_row]
                judge(
                    "ha_redis_all_down_issuance_unavailable",
                    issuing_row.unavailable_s,
                    0.0,
                    "==0s",
                    issuing_row.failed == 0 and zero(issuing_row),
                )
                judge(
                    "ha_redis_all_down_acme_nonce_unavailable",
                    nonce_row.unavailable_s,
                    args.redis_down,
                    f"<={args.redis_down + 10:.0f}s",
                    nonce_row.unavailable_s <= args.redis_down + 10
                    and nonce_row.failed_not_503 == 0,
                )
                for fault in (fault_haproxy, fault_agent):
                    figures = fault(topology, issuing, agents, args.settle)
                    rows.append(figures)
                    judge(
                        f"ha_{figures.fault.replace(' ', '_')}_issuance_unavailable",
                        figures.unavailable_s,
                        0.0,
                        "zero columns 0",
                        zero(figures),
                    )
            finally:
                issuing.halt()
                nonces.halt()
                for agent in agents:
                    agent.stop.set()
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{'fault':<26} {'operation':<18} {'unavail s':>9} {'requests':>8} {'failed':>6} "
        f"{'not 503':>7} {'not in db':>9} {'unverif':>7} {'double':>6} {'rev late':>8} "
        f"{'gaps':>5}  note"
    )

    def cell(value: int | None) -> str:
        return "-" if value is None else str(value)

    for r in rows:
        print(
            f"{r.fault:<26} {r.operation:<18} {r.unavailable_s:>9.2f} {r.requests:>8} "
            f"{r.failed:>6} {r.failed_not_503:>7} {cell(r.missing_in_db):>9} "
            f"{cell(r.unverified):>7} {cell(r.double_rotations):>6} "
            f"{cell(r.revocations_late):>8} {cell(r.enforcement_gaps):>5}  {r.note}"
        )
    print()
    for line in results:
        print(line)
    return 0 if not any(line.endswith("not met") for line in results) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
