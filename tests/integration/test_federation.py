"""Federation between two real `trustd serve` deployments (a.example on SQLite, b.example on
PostgreSQL) over `https_spiffe` both ways, and a bundle endpoint that lies: each lie is
refused with the reason on the relationship's status, and the last good bundle stays."""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki.bundle import TrustBundle
from pki.ca import certificate_pem, create_root
from pki.clock import SystemClock
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import TrustDomain
from tests.conftest import PostgresDatabase
from tests.integration.conftest import Running, cli, join_agent_command, start_server, tls

FAST = {
    "TRUSTD_ROTATION_INTERVAL": "PT1S",
    "TRUSTD_FEDERATION_REFRESH_MIN": "PT1S",
    "TRUSTD_FEDERATION_FETCH_TIMEOUT": "PT2S",
    "TRUSTD_BUNDLE_REFRESH_HINT": "PT2S",
}


@dataclass
class Pair:
    a: Running
    b: Running


@pytest.fixture(scope="module")
def web_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[x509.Certificate, Any, Path]:
    """A CA for the lying `https_web` endpoint, trusted by A through its web roots setting."""
    key = generate_private_key(KeyType.EC_P256)
    root = create_root(TrustDomain.parse("web.test"), key, SystemClock(), timedelta(days=1))
    path = tmp_path_factory.mktemp("webca") / "roots.pem"
    path.write_text(certificate_pem(root))
    return root, key, path


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_template: str,
    web_ca: tuple[x509.Certificate, Any, Path],
) -> Iterator[Pair]:
    work = tmp_path_factory.mktemp("federation")
    database = PostgresDatabase(postgres_template)
    database.create()
    a = start_server(
        work / "a",
        work / "a.log",
        TRUSTD_TRUST_DOMAIN="a.example",
        TRUSTD_FEDERATION_WEB_CA_BUNDLE=str(web_ca[2]),
        **FAST,
    )
    b = start_server(
        work / "b",
        work / "b.log",
        TRUSTD_TRUST_DOMAIN="b.example",
        TRUSTD_DATABASE_URL=database.url,
        **FAST,
    )
    try:
        yield Pair(a, b)
    finally:
        a.stop()
        b.stop()
        database.drop()


def trustd(server: Running, *args: str, check: bool = True) -> Any:
    done = cli(*args, "--data-dir", str(server.data_dir), "--output", "json", check=check)
    return json.loads(done.stdout) if done.returncode == 0 else done


def admin(server: Running, method: str, path: str) -> httpx.Response:
    """An admin API request on the server's admin socket (quicker than a CLI process)."""
    transport = httpx.HTTPTransport(uds=str(server.data_dir / "admin.sock"))
    with httpx.Client(transport=transport, base_url="http://trustd") as client:
        return client.request(method, path)


def shown(server: Running, domain: str) -> dict[str, Any]:
    response = admin(server, "GET", f"/v1/admin/federations/{domain}")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return {**document, **document["status"]}


def served_bundle(server: Running) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/bundle", verify=tls(server.bundle))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def federate(here: Running, there: Running, domain: str) -> Any:
    return trustd(
        here,
        "federation",
        "create",
        "--trust-domain",
        domain,
        "--bundle-endpoint",
        f"{there.url}/v1/bundle",
        "--profile",
        "https_spiffe",
        "--endpoint-spiffe-id",
        f"spiffe://{domain}/trustd/server",
        "--bundle",
        str(there.bundle),
    )


def wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.2)


def test_bundle_endpoint_serves_the_spiffe_bundle_over_an_x509_svid(pair: Pair) -> None:
    # SPIFFE Federation §5.2.2.3: the server certificate is an X509-SVID; the body is the
    # SPIFFE bundle with spiffe_sequence and spiffe_refresh_hint.
    document = served_bundle(pair.b)
    assert document["spiffe_refresh_hint"] == 2
    assert document["spiffe_sequence"] >= 1
    assert any(k["use"] == "x509-svid" for k in document["keys"])
    assert any(k["use"] == "jwt-svid" for k in document["keys"])
    context = tls(pair.b.bundle)
    context.check_hostname = False
    with (
        httpx.Client(verify=context) as client,
        client.stream("GET", f"{pair.b.url}/v1/bundle") as response,
    ):
        der = response.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)
    leaf = x509.load_der_x509_certificate(der)
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://b.example/trustd/server"]


def test_federate_both_ways_over_https_spiffe(pair: Pair) -> None:
    made = federate(pair.a, pair.b, "b.example")
    assert made["profile"] == "https_spiffe"
    assert made["endpoint_spiffe_id"] == "spiffe://b.example/trustd/server"
    federate(pair.b, pair.a, "a.example")
    for here, there, domain in ((pair.a, pair.b, "b.example"), (pair.b, pair.a, "a.example")):
        # The leader fetches on its own: no refresh asked.
        status = wait_for(
            lambda h=here, d=domain: s if (s := shown(h, d))["last_success_at"] else None
        )
        assert status["last_error"] is None
        assert status["bundle_sequence"] == served_bundle(there)["spiffe_sequence"]
        assert status["bundle"]["keys"] == served_bundle(there)["keys"]
    assert (
        "b.example"
        in cli("federation", "show", "b.example", "--data-dir", str(pair.a.data_dir)).stdout
    )
    listed = trustd(pair.a, "federation", "list")
    assert [f["trust_domain"] for f in listed] == ["b.example"]
    assert "b.example" in cli("federation", "list", "--data-dir", str(pair.a.data_dir)).stdout


def test_a_root_rotation_in_b_reaches_a_within_the_refresh_hint(pair: Pair) -> None:
    before = shown(pair.a, "b.example")
    cli("ca", "prepare", "--kind", "x509-root", "--data-dir", str(pair.b.data_dir))
    rotated = served_bundle(pair.b)
    assert rotated["spiffe_sequence"] > before["bundle_sequence"]
    # Hint 2 s, ticks every 1 s: A holds the new bundle within a few seconds.
    status = wait_for(
        lambda: (
            s
            if (s := shown(pair.a, "b.example"))["bundle_sequence"] == rotated["spiffe_sequence"]
            else None
        ),
        timeout=10,
    )
    assert status["bundle"]["keys"] == rotated["keys"]
    assert status["revision"] > before["revision"]


def test_an_endpoint_with_the_wrong_spiffe_id_is_refused(pair: Pair) -> None:
    # Not self-serving: c2.example's bundle served by b.example's endpoint, authenticated by
    # b.example's bundle (held from the relationship above) but expecting another ID.
    trustd(
        pair.a,
        "federation",
        "create",
        "--trust-domain",
        "c2.example",
        "--bundle-endpoint",
        f"{pair.b.url}/v1/bundle",
        "--endpoint-spiffe-id",
        "spiffe://b.example/bundle-server",
    )
    failed = trustd(pair.a, "federation", "refresh", "c2.example", check=False)
    assert failed.returncode != 0
    assert "presented spiffe://b.example/trustd/server, not spiffe://b.example/bundle-server" in (
        failed.stderr
    )
    status = shown(pair.a, "c2.example")
    assert status["bundle_sequence"] is None
    assert "presented spiffe://b.example/trustd/server" in status["last_error"]
    trustd(pair.a, "federation", "delete", "c2.example")
    gone = admin(pair.a, "GET", "/v1/admin/federations/c2.example")
    assert gone.status_code == 404


# -- a bundle endpoint that lies -------------------------------------------------------------


@dataclass
class Liar:
    """An https_web bundle endpoint whose answer each test picks."""

    url: str
    answer: dict[str, Any] = field(default_factory=dict)


def _bundle(domain: str, sequence: int) -> bytes:
    key = generate_private_key(KeyType.EC_P256)
    root = create_root(TrustDomain.parse(domain), key, SystemClock(), timedelta(days=1))
    bundle = TrustBundle(TrustDomain.parse(domain), (root,), {}, sequence, 2)
    return bundle.to_json().encode()


@pytest.fixture(scope="module")
def liar(
    web_ca: tuple[x509.Certificate, Any, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Liar]:
    root, root_key, _ = web_ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    work = tmp_path_factory.mktemp("liar")
    (work / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    state: dict[str, Any] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            answer = state["answer"]
            if answer.get("sleep"):
                time.sleep(answer["sleep"])
            self.send_response(answer.get("status", 200))
            for name, value in answer.get("headers", {}).items():
                self.send_header(name, value)
            body: bytes = answer.get("body", b"")
            self.send_header("Content-Type", "application/json")
            if not answer.get("chunked"):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(work / "cert.pem", work / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = Liar(f"https://127.0.0.1:{server.server_address[1]}/bundle.json", state)
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()


def test_lying_endpoint_leaves_the_last_good_bundle(pair: Pair, liar: Liar) -> None:
    good = _bundle("c.example", 5)
    liar.answer["answer"] = {"body": good}
    trustd(
        pair.a,
        "federation",
        "create",
        "--trust-domain",
        "c.example",
        "--bundle-endpoint",
        liar.url,
        "--profile",
        "https_web",
    )
    held = trustd(pair.a, "federation", "refresh", "c.example")
    assert held["bundle_sequence"] == 5
    assert held["last_error"] is None
    revision = held["revision"]
    lies: list[tuple[dict[str, Any], str]] = [
        ({"body": b"<html>not a bundle</html>"}, "bundle is not JSON"),
        ({"body": _bundle("a.example", 9)}, "authority is for trust domain a.example"),
        ({"body": _bundle("c.example", 4)}, "spiffe_sequence went backwards: 4 < 5"),
        (
            {"status": 302, "headers": {"Location": f"{pair.b.url}/v1/bundle"}},
            "redirects are refused",
        ),
        ({"body": b" " * (1024 * 1024 + 10)}, "larger than 1048576 bytes"),
        ({"body": b" " * (1024 * 1024 + 10), "chunked": True}, "larger than 1048576 bytes"),
        ({"body": good, "sleep": 4}, "did not answer within 2 s"),
        ({"status": 500, "body": b"{}"}, "answered 500"),
    ]
    for answer, reason in lies:
        liar.answer["answer"] = answer
        failed = admin(pair.a, "POST", "/v1/admin/federations/c.example/refresh")
        assert failed.status_code == 502, answer
        assert failed.headers["content-type"] == "application/problem+json"
        assert reason in failed.json()["detail"], (reason, failed.text)
        status = shown(pair.a, "c.example")
        assert status["bundle_sequence"] == 5, reason
        assert status["revision"] == revision, reason
        assert reason in status["last_error"]
        assert status["failures"] >= 1
        assert status["last_success_at"] == held["last_success_at"]
    # Telling the truth again clears the error; a newer sequence replaces the bundle.
    # The CLI says why, and exits non-zero.
    failed_cli = trustd(pair.a, "federation", "refresh", "c.example", check=False)
    assert failed_cli.returncode != 0
    assert "answered 500" in failed_cli.stderr
    liar.answer["answer"] = {"body": _bundle("c.example", 6)}
    healed = trustd(pair.a, "federation", "refresh", "c.example")
    assert healed["bundle_sequence"] == 6
    assert healed["last_error"] is None
    assert healed["failures"] == 0
    assert healed["revision"] > revision
    trustd(pair.a, "federation", "delete", "c.example")


# -- an agent in A serves B's bundle to the entries that federate with it --------------------

WORKLOAD_UID = 2011
CLIENT = str(Path(__file__).with_name("workload_client.py"))


def workload(socket: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            CLIENT,
            "--socket",
            str(socket),
            "--uid",
            str(WORKLOAD_UID),
            "--gid",
            str(WORKLOAD_UID),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout, done.stderr
    document: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return document


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the workload as another user")
def test_an_agent_in_a_serves_b_bundle_to_federating_workloads(pair: Pair, tmp_path: Path) -> None:
    if admin(pair.a, "GET", "/v1/admin/federations/b.example").status_code == 404:
        federate(pair.a, pair.b, "b.example")  # when run alone
    wait_for(lambda: shown(pair.a, "b.example")["bundle_sequence"] is not None)
    # World-traversable, so the workload (another user) reaches the socket.
    sockets = Path(tempfile.mkdtemp(prefix="trustd-agent-"))
    sockets.chmod(0o755)
    command = join_agent_command(pair.a, sockets)
    token = command[command.index("--join-token") + 1]
    node_id = f"spiffe://a.example/trustd/agent/join_token/{token.split('.')[0]}"
    trustd(
        pair.a,
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://a.example/web",
        "--parent-id",
        node_id,
        "--selector",
        f"unix:uid:{WORKLOAD_UID}",
        "--federates-with",
        "b.example",
    )
    with (tmp_path / "agent.log").open("w") as log:
        agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        socket = sockets / "agent.sock"
        wait_for(socket.exists, 30)
        context = workload(socket, "x509")
        assert [s["spiffe_id"] for s in context["svids"]] == ["spiffe://a.example/web"]
        assert context["bundles"] == ["a.example", "b.example"]
        held = shown(pair.a, "b.example")
        roots = sum(1 for k in held["bundle"]["keys"] if k["use"] == "x509-svid")
        assert workload(socket, "x509-bundles")["b.example"] == roots
        jwt_keys = sorted(k["kid"] for k in held["bundle"]["keys"] if k["use"] == "jwt-svid")
        assert workload(socket, "jwt-bundles")["b.example"] == jwt_keys
        # A JWT-SVID of B is validated with B's bundle (the trust domain of its subject).
        minted = trustd(
            pair.b,
            "svid",
            "jwt",
            "--spiffe-id",
            "spiffe://b.example/client",
            "--audience",
            "spiffe://a.example/web",
        )
        valid = workload(socket, "validate", minted["token"], "spiffe://a.example/web")
        assert valid["spiffe_id"] == "spiffe://b.example/client"
        # A change of B's bundle reaches the workload: pushed again on the sync channel.
        # (A next JWT key: the root rotation test above left a prepared root already.)
        cli("ca", "prepare", "--kind", "jwt", "--data-dir", str(pair.b.data_dir))
        grown = len(jwt_keys) + 1
        wait_for(lambda: len(workload(socket, "jwt-bundles").get("b.example", ())) == grown, 20)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
        shutil.rmtree(sockets, ignore_errors=True)
