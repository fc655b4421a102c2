"""Debian nginx as the enforcement point: mutual TLS with X509-SVIDs issued by a real trustd,
and `auth_request` to a real agent's ext_authz endpoint answering from the policy the
server pushed. Everything listens on 127.0.0.1 high ports; nginx runs as a child process
with its pid, logs and temp files under tmp_path."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from pki.ca import serial_hex
from tests.integration.conftest import Running, cli, free_port, join_agent_command, start_server
from tests.integration.test_enforcement import API, BAD, WEB, until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is needed (make system-deps)"),
]
NGINX_CONF = """
daemon off;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # The workload behind the proxy.
    server {{
        listen 127.0.0.1:{backend};
        location / {{ return 200 "orders\\n"; }}
    }}
{servers}
}}
"""
# One workload's proxy: its SVID and bundle under {tmp}/{name}/ (`trustd svid x509 --out`).
NGINX_SERVER = """
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tmp}/{name}/svid.pem;
        ssl_certificate_key {tmp}/{name}/key.pem;
        ssl_client_certificate {tmp}/{name}/bundle.pem;
        ssl_verify_client on;
        ssl_verify_depth 3;
        location / {{
            auth_request /_trustd_authz;
            proxy_pass http://127.0.0.1:{backend};
        }}
        location = /_trustd_authz {{
            internal;
            proxy_pass http://127.0.0.1:{authz}/;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Client-Cert $ssl_client_escaped_cert;
            proxy_set_header X-Trustd-Destination "{destination}";
            proxy_set_header X-Trustd-Port $server_port;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Trustd-Source-Address $remote_addr;
            proxy_set_header X-Trustd-Destination-Address $server_addr;
        }}
    }}
"""


def start_nginx(
    tmp: Path, authz: int, proxies: list[tuple[int, str, str]]
) -> subprocess.Popen[str]:
    """nginx in front of one backend, a TLS server per (port, name, destination SPIFFE ID),
    each asking the agent's ext_authz on port `authz`; returns once it runs."""
    backend = free_port()
    servers = "".join(
        NGINX_SERVER.format(
            tmp=tmp, port=port, name=name, destination=destination, backend=backend, authz=authz
        )
        for port, name, destination in proxies
    )
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, backend=backend, servers=servers))
    nginx = subprocess.Popen(
        ["nginx", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx.err")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )
    until(lambda: (tmp / "nginx.pid").exists() or nginx.poll() is not None, 10)
    assert nginx.poll() is None, (tmp / "nginx-error.log").read_text()
    return nginx


@dataclass
class Proxy:
    server: Running
    url: str
    tmp: Path

    def get(self, client: str | None, path: str = "/v1/orders") -> int:
        context = ssl.create_default_context(cafile=str(self.tmp / "api" / "bundle.pem"))
        # SVIDs are checked by SPIFFE ID, not host name (X509-SVID §5).
        context.check_hostname = False
        if client is not None:
            context.load_cert_chain(self.tmp / client / "svid.pem", self.tmp / client / "key.pem")
        return httpx.get(f"{self.url}{path}", verify=context, timeout=5).status_code


def svid_files(server: Running, spiffe_id: str, out: Path) -> None:
    cli(
        "svid",
        "x509",
        "--spiffe-id",
        spiffe_id,
        "--out",
        str(out),
        "--data-dir",
        str(server.data_dir),
    )


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp_path = tmp_path_factory.mktemp("nginx")
    server = start_server(tmp_path / "var", tmp_path / "server.log")
    agent: subprocess.Popen[str] | None = None
    nginx: subprocess.Popen[str] | None = None
    try:
        # web2: a second certificate of web's identity.
        for name, spiffe_id in (("api", API), ("web", WEB), ("web2", WEB), ("bad", BAD)):
            svid_files(server, spiffe_id, tmp_path / name)
        authz = free_port()
        with (tmp_path / "agent.log").open("w") as log:
            agent = subprocess.Popen(
                join_agent_command(server, tmp_path, "--ext-authz-listen", f"127.0.0.1:{authz}"),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        port = free_port()
        nginx = start_nginx(tmp_path, authz, [(port, "api", API)])
        yield Proxy(server, f"https://127.0.0.1:{port}", tmp_path)
    finally:
        for process in (nginx, agent):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(20)
        server.stop()


def _push_policy(server: Running, allow: list[dict[str, object]]) -> None:
    modules = {"mesh.rego": (Path(__file__).parents[2] / "rego" / "mesh.rego").read_text()}
    response = httpx.post(
        f"{server.url}/v1/admin/policy/bundles",
        json={"modules": modules, "data": {"mesh": {"allow": allow, "deny": []}}},
        headers={"Authorization": f"Bearer {server.token}"},
        verify=ssl.create_default_context(cafile=str(server.bundle)),
    )
    assert response.status_code < 300, response.text


def test_nginx_auth_request_allows_denies_and_refuses(proxy: Proxy) -> None:
    _push_policy(proxy.server, [{"name": "web-reads", "source": WEB, "destination": API}])
    # The agent answers from what the server pushed: wait for it to arrive.
    until(lambda: proxy.get("web") == 200, 30)
    assert proxy.get("bad") == 403
    # nginx refuses a client with no certificate (400 "No required SSL certificate").
    assert proxy.get(None) == 400

    # A policy change reaches nginx's decisions through the agent.
    _push_policy(proxy.server, [{"name": "bad-reads", "source": BAD, "destination": API}])
    until(lambda: proxy.get("web") == 403, 10)
    assert proxy.get("bad") == 200


def test_a_revoked_serial_is_refused_and_its_identity_is_not(proxy: Proxy) -> None:
    _push_policy(proxy.server, [{"name": "web-reads", "source": WEB, "destination": API}])
    until(lambda: proxy.get("web") == 200 and proxy.get("web2") == 200, 30)
    leaf = x509.load_pem_x509_certificate((proxy.tmp / "web" / "svid.pem").read_bytes())
    response = httpx.post(
        f"{proxy.server.url}/v1/admin/certificates/revoke",
        json={"serial": serial_hex(leaf), "reason": "superseded"},
        headers={"Authorization": f"Bearer {proxy.server.token}"},
        verify=ssl.create_default_context(cafile=str(proxy.server.bundle)),
    )
    assert response.status_code == 200, response.text
    assert response.json()["quarantined"] is None
    # The agent refuses the revoked certificate as soon as the revocation reaches it...
    until(lambda: proxy.get("web") == 403, 5)
    # ...and the identity's other certificate goes on working: web is not cut off.
    assert proxy.get("web2") == 200
