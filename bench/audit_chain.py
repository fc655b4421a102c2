"""The audit hash chain on the issuance path: X509-SVIDs issued in-process through trustd's
pipeline (sign, group commit, audit), with the chain on and, in the same run, with the audit
rows inserted unchained (the baseline: no head-row lock, no hashing).

Issuance audits every certificate, so the chain's cost is paid once per group commit (two
statements on the head row) plus one SHA-256 per event. Prints certificates/s for each
backend, `--tasks` concurrent issuances in one event loop (as one worker serves them), and
the ratio to the unchained baseline (target >= 0.95: the chain costs under 5%).

Usage: python bench/audit_chain.py [--seconds 3] [--tasks 32] [--backends sqlite,postgresql]
Needs: PostgreSQL on 127.0.0.1:5432 (trust auth) for the postgresql backend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession

from pki.csr import create_csr
from pki.spiffe_id import SpiffeId
from trustd.domain.certificates import CertificateKind
from trustd.services.issuance import IssuanceRequest
from trustd.store import audit as audit_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import in_process, result, scratch_database

# Unchained rows take negative seqs: outside the chain (seq > 0), which still verifies.
_SEQS = count(-1, -1)
# Alternating rounds of each, so that load from elsewhere on the machine hits both alike.
ROUNDS = 4


@contextlib.contextmanager
def unchained() -> Iterator[None]:
    """Audit rows inserted as they were before the chain: at commit, no head row, no hash."""
    seqs = _SEQS

    def insert_plain(session: OrmSession) -> None:
        pending = session.info.pop("trustd.audit.pending", None)
        if pending:
            rows = [{**v, "seq": next(seqs), "prev_hash": "", "hash": ""} for v in pending]
            session.connection().execute(audit_store.AUDIT_INSERT, rows)

    event.remove(OrmSession, "before_commit", audit_store._append_pending)
    event.listen(OrmSession, "before_commit", insert_plain)
    try:
        yield
    finally:
        event.remove(OrmSession, "before_commit", insert_plain)
        event.listen(OrmSession, "before_commit", audit_store._append_pending)


async def issue_for(services: Any, seconds: float, tasks: int) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = create_csr(key).encode()
    request = IssuanceRequest(
        kind=CertificateKind.X509_SVID,
        spiffe_id=SpiffeId.parse("spiffe://example.org/bench"),
        actor="token:bench",
        csr=csr,
    )
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued
        while time.perf_counter() < deadline:
            await services.issuer.issue(request)
            issued += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return issued / (time.perf_counter() - started)


def run(url: str, data_dir: Path, seconds: float, tasks: int) -> tuple[float, float]:
    services = in_process(url, data_dir)
    try:
        asyncio.run(issue_for(services, 0.5, tasks))  # warm up
        chained, plain = [], []
        for _ in range(ROUNDS):
            chained.append(asyncio.run(issue_for(services, seconds / ROUNDS, tasks)))
            with unchained():
                plain.append(asyncio.run(issue_for(services, seconds / ROUNDS, tasks)))
        services.audit_trail.verify()
        return sum(chained) / ROUNDS, sum(plain) / ROUNDS
    finally:
        services.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            data.mkdir()
            if backend == "sqlite":
                chained, plain = run(f"sqlite:///{data}/trustd.db", data, args.seconds, args.tasks)
            else:
                with scratch_database("trustd_bench_audit") as url:
                    chained, plain = run(url, data, args.seconds, args.tasks)
        print(f"{backend}: chained {chained:.0f}/s, unchained {plain:.0f}/s")
        ratio = chained / plain
        print(
            result(
                f"audit_chain_issuance_{backend}",
                chained,
                "certs/s",
                plain,
                ">=0.95",
                ratio >= 0.95,
            )
        )


if __name__ == "__main__":
    main()
