"""Group commit: concurrent issuances share a transaction, and each answers only once its
own rows are committed. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from pki.ca import serial_hex
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId
from pki.x509_svid import X509SvidParams
from tests.conftest import PostgresDatabase
from tests.functional.conftest import Server
from trustd.domain.certificates import CertificateKind
from trustd.errors import StoreUnavailable
from trustd.services.issuance import IssuedX509
from trustd.store.audit import AuditEvent
from trustd.store.certificates import IssuedCertificate
from trustd.store.db import transaction
from trustd.store.group_commit import GroupCommit

KIND = CertificateKind.X509_SVID


def _issue_concurrently(server: Server, count: int) -> list[httpx.Response]:
    """`count` issuance requests in flight at once on the app's event loop."""

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=server.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://trustd") as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/svid/x509",
                        json={
                            "spiffe_id": f"spiffe://example.org/w/{n}",
                            "csr": create_csr(generate_private_key(KeyType.EC_P256)),
                        },
                        headers=server.auth,
                    )
                    for n in range(count)
                )
            )

    return asyncio.run(scenario())


def _signed(server: Server, name: str) -> IssuedX509:
    params = X509SvidParams(
        spiffe_id=SpiffeId.parse(f"spiffe://example.org/{name}"),
        public_key=generate_private_key(KeyType.EC_P256).public_key(),
        ttl=timedelta(minutes=10),
    )
    return server.services.issuer.sign(params)


def _stored(server: Server, *serials: str) -> int:
    with Session(server.services.engine) as session:
        return session.exec(
            select(func.count())
            .select_from(IssuedCertificate)
            .where(IssuedCertificate.serial.in_(serials))  # type: ignore[attr-defined]
        ).one()


def test_concurrent_issuances_are_each_recorded_with_their_own_request(server: Server) -> None:
    responses = _issue_concurrently(server, 20)
    assert [r.status_code for r in responses] == [201] * 20
    issued = {r.json()["serial"]: r.headers["x-request-id"] for r in responses}
    assert _stored(server, *issued) == 20
    with Session(server.services.engine) as session:
        audits = session.exec(select(AuditEvent).where(AuditEvent.action == "svid:x509:issued"))
        # The audit row names the request that asked for it, though another request's task
        # may have committed it.
        assert {a.details["serial"]: a.request_id for a in audits} == issued


@pytest.mark.parametrize("backend", ["postgresql"])
def test_concurrent_issuances_share_a_commit(server: Server) -> None:
    responses = _issue_concurrently(server, 20)
    serials = [r.json()["serial"] for r in responses]
    with Session(server.services.engine) as session:
        # Rows written by one transaction carry its id in xmin.
        transactions = session.execute(
            text(
                "SELECT count(DISTINCT xmin::text) FROM issued_certificates "
                "WHERE serial = ANY(:serials)"
            ),
            {"serials": serials},
        ).scalar_one()
    assert transactions < len(serials) // 2


def test_a_refused_row_fails_only_its_own_caller(server: Server) -> None:
    issuer = server.services.issuer
    taken = _signed(server, "taken")
    with transaction(server.services.engine) as session:
        issuer.record(session, "test", taken, KIND)
    fresh = [_signed(server, f"fresh/{n}") for n in range(3)]
    group = GroupCommit(server.services.engine)

    async def scenario() -> list[BaseException | None]:
        # The same serial again: the primary key refuses it.
        batch = [fresh[0], taken, fresh[1], fresh[2]]
        return await asyncio.gather(
            *(group.insert(issuer.rows("test", i, KIND)) for i in batch),
            return_exceptions=True,
        )

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[1], IntegrityError)
    assert [outcomes[0], *outcomes[2:]] == [None, None, None]
    assert _stored(server, *(serial_hex(i.certificate) for i in fresh)) == 3
    with Session(server.services.engine) as session:
        audits = session.exec(select(AuditEvent).where(AuditEvent.action == "svid:x509:issued"))
        # The refused caller's audit row rolled back with its certificate.
        assert sorted(a.details["serial"] for a in audits) == sorted(
            serial_hex(i.certificate) for i in (taken, *fresh)
        )


def test_a_cancelled_caller_does_not_strand_the_ones_queued_behind_it(server: Server) -> None:
    issuer = server.services.issuer
    first, second = _signed(server, "first"), _signed(server, "second")
    group = GroupCommit(server.services.engine)

    async def scenario() -> None:
        leader = asyncio.create_task(group.insert(issuer.rows("test", first, KIND)))
        follower = asyncio.create_task(group.insert(issuer.rows("test", second, KIND)))
        await asyncio.sleep(0)  # both queued; the first waits one iteration to commit both
        leader.cancel()
        await asyncio.wait_for(follower, 5)
        with pytest.raises(asyncio.CancelledError):
            await leader

    asyncio.run(scenario())
    assert _stored(server, serial_hex(second.certificate)) == 1


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_outage_fails_every_request_of_the_batch(
    server: Server, postgres_db: PostgresDatabase
) -> None:
    issuer = server.services.issuer
    batch = [_signed(server, f"outage/{n}") for n in range(5)]
    group = GroupCommit(server.services.engine)

    async def scenario() -> list[BaseException | None]:
        return await asyncio.gather(
            *(group.insert(issuer.rows("test", i, KIND)) for i in batch),
            return_exceptions=True,
        )

    postgres_db.set_connections_allowed(False)
    try:
        outcomes = asyncio.run(scenario())
        responses = _issue_concurrently(server, 5)
    finally:
        postgres_db.set_connections_allowed(True)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    # Each caller gets an error of its own, not one object raised in five tasks.
    assert len({id(o) for o in outcomes}) == 5
    assert _stored(server, *(serial_hex(i.certificate) for i in batch)) == 0
    assert [r.status_code for r in responses] == [503] * 5
    assert {r.headers["content-type"] for r in responses} == {"application/problem+json"}
    with Session(server.services.engine) as session:
        assert session.exec(select(func.count()).select_from(IssuedCertificate)).one() == 0
