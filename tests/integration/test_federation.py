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
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki.bundle import TrustBundle
from pki.ca import certificate_pem, create_root
from pki.clock import SystemClock
from pki.errors import InvalidSvid
from pki.jwt_svid import mint_jwt_svid
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import verify_x509_svid_in_bundles
from tests.conftest import PostgresDatabase
from tests.integration.conftest import (
    Running,
    cli,
    free_port,
    join_agent_command,
    start_server,
    tls,
)
from tests.integration.test_nginx_authz import start_nginx, svid_files
from tests.unit.pki_helpers import raw_leaf
from trustd.services.ca import CaState
from trustd.services.container import build_services
from trustd.settings import load_settings

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
    # B's database, for reading B's CA keys in a test that plays a dishonest B.
    b_database: str


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
        yield Pair(a, b, database.url)
    finally:
        a.stop()
        b.stop()
        database.drop()


def trustd(server: Running, *args: str, check: bool = True) -> Any:
    done = cli(*args, "--data-dir", str(server.data_dir), "--output", "json", check=check)
    return json.loads(done.stdout) if done.returncode == 0 else done


def admin(server: Running, method: str, path: str, body: Any = None) -> httpx.Response:
    """An admin API request on the server's admin socket (quicker than a CLI process)."""
    transport = httpx.HTTPTransport(uds=str(server.data_dir / "admin.sock"))
    with httpx.Client(transport=transport, base_url="http://trustd", timeout=30) as client:
        return client.request(method, path, json=body)


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


# -- workloads in both domains, each with its own agent -------------------------------------

WORKLOAD_UID = 2011
CLIENT = str(Path(__file__).with_name("workload_client.py"))
WEB, API, DB = "spiffe://a.example/web", "spiffe://a.example/api", "spiffe://a.example/db"
B_CLIENT = "spiffe://b.example/client"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs the workload as another user")


def workload_command(socket: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        CLIENT,
        "--socket",
        str(socket),
        "--uid",
        str(WORKLOAD_UID),
        "--gid",
        str(WORKLOAD_UID),
        *args,
    ]


def workload(socket: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        workload_command(socket, *args), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout, done.stderr
    document: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return document


@dataclass
class Node:
    """An agent of one domain, its socket, and the workload entry it serves."""

    server: Running
    socket: Path
    node_id: str
    entry_id: str
    process: subprocess.Popen[str]


@dataclass
class Agents:
    a: Node
    b: Node
    authz: int


def _agent(
    server: Running, domain: str, spiffe_id: str, peer: str, log: Path, *options: str
) -> Node:
    # World-traversable, so the workload (another user) reaches the socket.
    sockets = Path(tempfile.mkdtemp(prefix="trustd-agent-"))
    sockets.chmod(0o755)
    command = join_agent_command(server, sockets, *options)
    token = command[command.index("--join-token") + 1]
    node_id = f"spiffe://{domain}/trustd/agent/join_token/{token.split('.')[0]}"
    entry = _entry(server, spiffe_id, node_id, peer)
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
    return Node(server, sockets / "agent.sock", node_id, entry, process)


def _entry(server: Running, spiffe_id: str, node_id: str, peer: str) -> str:
    made = admin(
        server,
        "POST",
        "/v1/entries",
        {
            "spiffe_id": spiffe_id,
            "parent_id": node_id,
            "selectors": [f"unix:uid:{WORKLOAD_UID}"],
            "federates_with": [peer],
        },
    )
    assert made.status_code == 201, made.text
    entry_id: str = made.json()["id"]
    return entry_id


@pytest.fixture(scope="module")
def agents(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    """An agent in each domain, each serving one workload (uid 2011) that federates with
    the other domain; A's agent also answers ext_authz checks."""
    for here, there, domain in ((pair.a, pair.b, "b.example"), (pair.b, pair.a, "a.example")):
        if admin(here, "GET", f"/v1/admin/federations/{domain}").status_code == 404:
            federate(here, there, domain)  # when run alone
        wait_for(lambda h=here, d=domain: shown(h, d)["bundle_sequence"] is not None)
    work = tmp_path_factory.mktemp("agents")
    authz = free_port()
    a = _agent(
        pair.a,
        "a.example",
        WEB,
        "b.example",
        work / "a.log",
        "--ext-authz-listen",
        f"127.0.0.1:{authz}",
    )
    b = _agent(pair.b, "b.example", B_CLIENT, "a.example", work / "b.log")
    try:
        for node in (a, b):
            wait_for(node.socket.exists, 30)
        yield Agents(a, b, authz)
    finally:
        for node in (a, b):
            node.process.send_signal(signal.SIGTERM)
            node.process.wait(20)
            shutil.rmtree(node.socket.parent, ignore_errors=True)


@needs_root
def test_an_agent_in_a_serves_b_bundle_to_federating_workloads(pair: Pair, agents: Agents) -> None:
    socket = agents.a.socket
    context = workload(socket, "x509")
    assert [s["spiffe_id"] for s in context["svids"]] == [WEB]
    assert context["bundles"] == ["a.example", "b.example"]
    held = shown(pair.a, "b.example")
    roots = sum(1 for k in held["bundle"]["keys"] if k["use"] == "x509-svid")
    assert workload(socket, "x509-bundles")["b.example"] == roots
    jwt_keys = sorted(k["kid"] for k in held["bundle"]["keys"] if k["use"] == "jwt-svid")
    assert workload(socket, "jwt-bundles")["b.example"] == jwt_keys
    # A JWT-SVID of B is validated with B's bundle (the trust domain of its subject).
    minted = trustd(pair.b, "svid", "jwt", "--spiffe-id", B_CLIENT, "--audience", WEB)
    valid = workload(socket, "validate", minted["token"], WEB)
    assert valid["spiffe_id"] == B_CLIENT
    # A change of B's bundle reaches the workload: pushed again on the sync channel.
    cli("ca", "prepare", "--kind", "jwt", "--data-dir", str(pair.b.data_dir))
    grown = len(jwt_keys) + 1
    wait_for(lambda: len(workload(socket, "jwt-bundles").get("b.example", ())) == grown, 20)
    # The entry stops federating, and the workload loses B's bundle; then federates again.
    cleared = trustd(pair.a, "entry", "update", agents.a.entry_id, "--no-federates-with")
    assert cleared["federates_with"] == []
    wait_for(lambda: workload(socket, "x509")["bundles"] == ["a.example"], 20)
    again = trustd(pair.a, "entry", "update", agents.a.entry_id, "--federates-with", "b.example")
    assert again["federates_with"] == ["b.example"]
    wait_for(lambda: workload(socket, "x509")["bundles"] == ["a.example", "b.example"], 20)


def _mtls(agents: Agents) -> tuple[dict[str, Any], dict[str, Any]]:
    """A's workload serves, B's connects; each verifies the other with the bundle of the
    other's domain that its own agent gave it."""
    server = subprocess.Popen(
        workload_command(agents.a.socket, "mtls-server", "b.example"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline() or "{}")
        assert "port" in ready, server.stderr.read() if server.stderr else ""
        client = workload(agents.b.socket, "mtls-client", str(ready["port"]), "a.example")
        out, err = server.communicate(timeout=30)
        assert out, err
        return json.loads(out.splitlines()[-1]), client
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _roots(bundle: dict[str, Any]) -> int:
    return sum(1 for k in bundle["keys"] if k["use"] == "x509-svid")


@needs_root
def test_workloads_in_two_domains_do_mutual_tls_through_a_root_rotation_in_b(
    pair: Pair, agents: Agents
) -> None:
    served, client = _mtls(agents)
    assert served == {"peer": B_CLIENT, "said": B_CLIENT}
    assert client == {"peer": WEB, "said": WEB}

    # B rotates its root: prepare (published in B's bundle), activate, then an intermediate
    # under the new root, so B's workload's next SVID chains to it.
    data = ("--data-dir", str(pair.b.data_dir))
    keys = admin(pair.b, "GET", "/v1/admin/ca/keys").json()
    if not any(k["kind"] == "x509-root" and k["status"] == "prepared" for k in keys):
        cli("ca", "prepare", "--kind", "x509-root", *data)
    cli("ca", "activate", "--kind", "x509-root", *data)
    for action in ("prepare", "activate"):
        changed = admin(pair.b, "POST", f"/v1/admin/ca/{action}", {"kind": "x509-intermediate"})
        assert changed.status_code == 200, changed.text
    roots = _roots(served_bundle(pair.b))
    # A's workload holds every root B now publishes, through A's federation and A's agent.
    wait_for(lambda: _roots(shown(pair.a, "b.example")["bundle"]) == roots, 20)
    wait_for(lambda: workload(agents.a.socket, "x509-bundles").get("b.example") == roots, 20)
    # A new SVID for B's workload, from the new intermediate: its entry made again.
    before = workload(agents.b.socket, "x509")["svids"][0]["serial"]
    assert admin(pair.b, "DELETE", f"/v1/entries/{agents.b.entry_id}").status_code == 204
    agents.b.entry_id = _entry(pair.b, B_CLIENT, agents.b.node_id, "a.example")
    wait_for(
        lambda: (
            [s["serial"] for s in workload(agents.b.socket, "x509")["svids"]] not in ([], [before])
        ),
        20,
    )
    served, client = _mtls(agents)
    assert served == {"peer": B_CLIENT, "said": B_CLIENT}
    assert client == {"peer": WEB, "said": WEB}


# -- A's mesh policy and ext_authz for callers from B ----------------------------------------


def b_ca(pair: Pair) -> CaState:
    """B's CA keys, read from B's own database and data directory: what a dishonest (or
    compromised) B could sign with."""
    settings = load_settings(
        data_dir=pair.b.data_dir, database_url=pair.b_database, trust_domain="b.example", tls=False
    )
    services = build_services(settings)
    try:
        return services.ca.load()
    finally:
        services.engine.dispose()


def push_mesh(server: Running, allow: list[dict[str, object]]) -> httpx.Response:
    modules = {"mesh.rego": (Path(__file__).parents[2] / "rego" / "mesh.rego").read_text()}
    return httpx.post(
        f"{server.url}/v1/admin/policy/bundles",
        json={"modules": modules, "data": {"mesh": {"allow": allow, "deny": []}}},
        headers={"Authorization": f"Bearer {server.token}"},
        verify=tls(server.bundle),
    )


def _check(agents: Agents, chain_pem: str, destination: str) -> tuple[int, str]:
    """The A agent's ext_authz answer for a caller presenting `chain_pem` (leaf first) as
    Envoy forwards it: `x-forwarded-client-cert` with `Chain=` (`set_current_client_cert_
    details: {chain: true}`) and `By=` the destination's SPIFFE ID."""
    response = httpx.get(
        f"http://127.0.0.1:{agents.authz}/v1/orders",
        headers={
            "X-Forwarded-Client-Cert": f'By={destination};Chain="{quote(chain_pem)}"',
            "X-Trustd-Port": "443",
        },
    )
    reason: str = response.json()["reason"]
    return response.status_code, reason


@needs_root
@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is needed (make system-deps)")
def test_a_mesh_policy_in_a_admits_a_caller_from_b_to_one_service_only(
    pair: Pair, agents: Agents, tmp_path: Path
) -> None:
    # A rule naming a trust domain A does not federate with can never match: refused.
    refused = push_mesh(pair.a, [{"name": "z-in", "source": "spiffe://z.example/x"}])
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert (
        "mesh rule z-in names trust domain z.example, which is neither a.example nor "
        in (refused.json()["detail"])
    )
    allowed = push_mesh(
        pair.a,
        [
            {"name": "b-client-to-api", "source": B_CLIENT, "destination": API},
            {"name": "web-to-api", "source": WEB, "destination": API},
        ],
    )
    assert allowed.status_code < 300, allowed.text
    # nginx in front of api and db, trusting A's roots and B's (held from the federation).
    held = TrustBundle.from_jwks(
        shown(pair.a, "b.example")["bundle"], TrustDomain.parse("b.example")
    )
    b_roots_certs = held.x509_authorities
    b_roots = "".join(certificate_pem(c) for c in b_roots_certs)
    for name, spiffe_id in (("api", API), ("db", DB), ("web", WEB)):
        svid_files(pair.a, spiffe_id, tmp_path / name)
        with (tmp_path / name / "bundle.pem").open("a") as bundle:
            bundle.write(b_roots)
    svid_files(pair.b, B_CLIENT, tmp_path / "client")
    api_port, db_port = free_port(), free_port()
    nginx = start_nginx(tmp_path, agents.authz, [(api_port, "api", API), (db_port, "db", DB)])
    try:

        def get(port: int, client: str) -> int:
            context = ssl.create_default_context(cafile=str(pair.a.bundle))
            context.check_hostname = False  # SVIDs are checked by SPIFFE ID (X509-SVID §5)
            context.load_cert_chain(tmp_path / client / "svid.pem", tmp_path / client / "key.pem")
            url = f"https://127.0.0.1:{port}/v1/orders"
            return httpx.get(url, verify=context, timeout=5).status_code

        # The agent answers from the policy the server pushed: wait for it to arrive.
        wait_for(lambda: get(api_port, "web") == 200, 30)
        assert get(db_port, "web") == 403
        # nginx forwards the client's leaf only ($ssl_client_escaped_cert): B's
        # intermediate is unknown here, so no path to B's root is found (see README).
        assert get(api_port, "client") == 403

        # B's CA signing an ID of A (the policy allows web to reach api).
        ca = b_ca(pair)
        key = generate_private_key(KeyType.EC_P256)
        forged = raw_leaf(
            ca.authority.certificate,
            ca.authority.private_key,
            SystemClock(),
            uris=[WEB],
            key=key,
            serial=x509.random_serial_number(),
        )
        chain = certificate_pem(forged) + "".join(certificate_pem(c) for c in ca.intermediates)
        (tmp_path / "forged").mkdir()
        (tmp_path / "forged" / "svid.pem").write_text(chain)
        (tmp_path / "forged" / "key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        # B's CA is name-constrained to spiffe://b.example (RFC 5280 §4.2.1.10): even
        # nginx, pooling both domains' roots, refuses the handshake.
        assert get(api_port, "forged") == 400
    finally:
        nginx.send_signal(signal.SIGTERM)
        nginx.wait(20)
    status, reason = _check(agents, chain, API)
    assert status == 403
    assert reason.startswith("client certificate rejected: RFC 5280 §6.1: no certification path")
    genuine = (tmp_path / "client" / "svid.pem").read_text()
    assert _check(agents, genuine, API) == (200, "allowed")
    assert _check(agents, genuine, DB) == (403, "denied by policy")
    # Path validation with the bundles A holds, each for its own domain, refuses it too.
    own = TrustBundle.from_jwks(served_bundle(pair.a), TrustDomain.parse("a.example"))
    held_by_domain = {own.trust_domain: own.x509_authorities, held.trust_domain: b_roots_certs}
    with pytest.raises(InvalidSvid, match="no certification path"):
        verify_x509_svid_in_bundles(forged, ca.intermediates, held_by_domain, SystemClock())
    # A JWT-SVID signed with B's JWT key for an ID of A: ValidateJWTSVID in A refuses it.
    token = mint_jwt_svid(
        ca.jwt_signer.key,
        ca.jwt_signer.kid,
        SpiffeId.parse(WEB),
        [API],
        timedelta(minutes=5),
        SystemClock(),
    ).token
    refused_jwt = workload(agents.a.socket, "validate", token, API)
    assert (
        f"token kid {ca.jwt_signer.kid!r} is not a known JWT-SVID signing key"
        in (refused_jwt["message"])
    ), refused_jwt
