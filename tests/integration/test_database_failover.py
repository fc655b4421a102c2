"""A real `trustd serve` whose PostgreSQL stops answering, as it does through HAProxy's
PostgreSQL front while no primary is up: open sessions are cut and new connections are
accepted but never answered until `connect_timeout`. Issuance answers 503 with Retry-After
and nothing it did not commit; meanwhile the event loop goes on answering health checks and
decisions, which need no database.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.conftest import PG_ADMIN_DSN, PostgresDatabase
from tests.integration.conftest import Running, start_server, tls

# `timed`: the proof is how long the loop takes to answer while a connect is pending.
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timed]

POLICY_TOKEN = "decisions-token-0123456789abcdef"
# A connect waits up to `connect_timeout` (3 s, trustd.store.db): an answer within a third of
# it cannot have waited behind one.
ANSWER_WITHIN = 1.0


class HoldingFront:
    """A TCP front to PostgreSQL. `hold()` cuts the sessions it relays and from then on
    accepts connections without answering them (the client sees a connect that never
    completes its startup); `release()` closes those and relays again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._relayed: list[socket.socket] = []
        self._held: list[socket.socket] = []
        self._holding = False
        self.held_count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._holding:
                    self._held.append(client)
                    self.held_count += 1
                    continue
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._relayed += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _close(self, sockets: list[socket.socket]) -> None:
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def hold(self) -> None:
        with self._lock:
            self._holding = True
            relayed, self._relayed = self._relayed, []
        self._close(relayed)

    def release(self) -> None:
        with self._lock:
            self._holding = False
            held, self._held = self._held, []
        self._close(held)

    def close(self) -> None:
        self._listener.close()
        self.hold()
        self.release()


@pytest.fixture
def server(tmp_path: Path, postgres_db: PostgresDatabase) -> Iterator[tuple[Running, HoldingFront]]:
    host, port = "127.0.0.1", int(PG_ADMIN_DSN.rsplit(":", 1)[1].split("/")[0])
    front = HoldingFront((host, port))
    url = postgres_db.url.replace(f":{port}/", f":{front.port}/")
    running = start_server(
        tmp_path / "var",
        tmp_path / "server.log",
        TRUSTD_DATABASE_URL=url,
        TRUSTD_POLICY_API_TOKEN=POLICY_TOKEN,
    )
    try:
        yield running, front
    finally:
        running.stop()
        front.close()


def _issue(running: Running) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(running.data_dir / "admin.sock"))
    with httpx.Client(transport=transport, base_url="http://trustd", timeout=60) as client:
        return client.post(
            "/v1/svid/x509",
            json={
                "spiffe_id": "spiffe://example.org/failover",
                "csr": create_csr(generate_private_key(KeyType.EC_P256)),
            },
        )


def _held_serials(postgres_db: PostgresDatabase, serials: set[str]) -> set[str]:
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{postgres_db.name}"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT serial FROM issued_certificates WHERE serial = ANY(%s)", (list(serials),)
        )
        return {row[0] for row in rows}


def test_the_loop_answers_while_issuance_waits_on_an_unanswering_database(
    server: tuple[Running, HoldingFront], postgres_db: PostgresDatabase
) -> None:
    running, front = server
    before = _issue(running)
    assert before.status_code == 201, before.text
    with (
        httpx.Client(base_url=running.url, verify=tls(running.bundle), timeout=60) as http,
        ThreadPoolExecutor(4) as pool,
    ):
        front.hold()
        pending: list[Future[httpx.Response]] = [pool.submit(_issue, running) for _ in range(4)]
        # The server is connecting (its group commit waits on a connection the front never
        # answers): from here until `connect_timeout` the issuances cannot complete.
        while front.held_count == 0:
            assert not any(f.done() for f in pending), [f.result().text for f in pending]
            time.sleep(0.01)
        # Health checks and decisions, probed until every issuance has answered.
        probes: list[tuple[float, int, int]] = []
        while not all(f.done() for f in pending):
            started = time.monotonic()
            health = http.get("/healthz")
            decision = http.post(
                "/v1/data/trustd/mesh/allow",
                json={"input": {}},
                headers={"Authorization": f"Bearer {POLICY_TOKEN}"},
            )
            probes.append((time.monotonic() - started, health.status_code, decision.status_code))
            time.sleep(0.1)
        answers = [f.result() for f in pending]
        front.release()
        after = _issue(running)
    assert probes, "the issuances answered before any probe"
    assert {(h, d) for _, h, d in probes} == {(200, 200)}
    assert max(took for took, _, _ in probes) < ANSWER_WITHIN, probes
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"]
    assert after.status_code == 201, after.text
    returned = {before.json()["serial"], after.json()["serial"]}
    assert _held_serials(postgres_db, returned) == returned
