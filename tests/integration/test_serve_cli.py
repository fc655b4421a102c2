"""A real `trustd serve` process over TLS, driven by the real `trustd` CLI and openssl."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Running, cli, tls

pytestmark = pytest.mark.integration


def test_banner_says_where_everything_is(running: Running) -> None:
    assert running.url in running.banner
    assert "example.org" in running.banner
    assert str(running.bundle.resolve()) in running.banner
    assert running.token.startswith("trustd.")
    assert (running.data_dir / "admin.sock").stat().st_mode & 0o777 == 0o600
    assert (running.data_dir / "kek").stat().st_mode & 0o777 == 0o600


def test_workers_serve_on_uvloop_and_httptools_with_a_tuned_gc(
    running: Running, tmp_path: Path
) -> None:
    lines = (tmp_path / "server.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    started = [e for e in events if e.get("event") == "worker_started"]
    assert [(e["pid"], e["loop"], e["http"]) for e in started] == [
        (running.process.pid, "uvloop.Loop", "HttpToolsProtocol")
    ]
    # What startup built is kept out of the collector's generations, and young collections
    # wait for more than the requests in flight hold.
    assert started[0]["gc_frozen"] > 10_000
    assert started[0]["gc_threshold"] > 700


def test_tls_verifies_by_ip_and_name_against_the_bundle(running: Running) -> None:
    port = running.url.rsplit(":", 1)[1]
    for host in ("127.0.0.1", "localhost"):
        response = httpx.get(f"https://{host}:{port}/v1/bundle", verify=tls(running.bundle))
        assert response.status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/healthz", verify=True)


def test_cli_issues_svids_through_the_admin_socket(running: Running, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = cli(
        "svid",
        "x509",
        "--spiffe-id",
        "spiffe://example.org/demo",
        "--out",
        str(out),
        "--data-dir",
        str(running.data_dir),
    )
    assert "spiffe://example.org/demo" in result.stdout
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    pem = (out / "svid.pem").read_text()
    leaf, intermediate = pem.split("-----END CERTIFICATE-----\n")[:2]
    (tmp_path / "leaf.pem").write_text(leaf + "-----END CERTIFICATE-----\n")
    (tmp_path / "int.pem").write_text(intermediate + "-----END CERTIFICATE-----\n")
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(out / "bundle.pem"),
            "-untrusted",
            str(tmp_path / "int.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The key on disk is the one the certificate certifies.
    check = subprocess.run(
        ["openssl", "x509", "-noout", "-pubkey", "-in", str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    from_key = subprocess.run(
        ["openssl", "pkey", "-pubout", "-in", str(out / "key.pem")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert check == from_key

    data = ("--data-dir", str(running.data_dir))
    ca = json.loads(cli("ca", "show", *data, "--output", "json").stdout)
    assert ca["trust_domain"] == "example.org"
    shown = cli(*data, "ca", "show").stdout.splitlines()
    assert shown[0].split() == ["trust_domain", "example.org"]
    assert any(line.split()[:3] == ["KIND", "KID", "STATUS"] for line in shown)
    jwks = json.loads(
        cli("bundle", "show", "--format", "jwks", "--data-dir", str(running.data_dir)).stdout
    )
    assert jwks["spiffe_sequence"] >= 1
    pem_bundle = cli("bundle", "show", "--data-dir", str(running.data_dir)).stdout
    assert pem_bundle == running.bundle.read_text()


def test_cli_reaches_a_remote_server_with_a_token(running: Running) -> None:
    remote = ["--server", running.url, "--ca-bundle", str(running.bundle)]
    jwt = cli(
        "svid",
        "jwt",
        "--spiffe-id",
        "spiffe://example.org/demo",
        "--audience",
        "api",
        *remote,
        "--token",
        running.token,
    )
    assert jwt.stdout.count(".") == 2
    new = cli("admin", "token", "create", "--name", "ci", *remote, "--token", running.token)
    assert new.stdout.strip().startswith("trustd.")
    # Least privilege and a bounded lifetime unless asked otherwise, and the expiry is said.
    assert "(viewer, expires 20" in new.stderr
    # The shared options before the command: a table of tokens, the new one by name.
    listed = cli(*remote, "--token", running.token, "admin", "token", "list").stdout
    assert listed.splitlines()[0].split()[:3] == ["ID", "NAME", "ROLE"]
    assert any(line.split()[1:3] == ["ci", "viewer"] for line in listed.splitlines()[1:])

    refused = cli("ca", "show", *remote, "--token", "trustd.nope.nope", check=False)
    assert refused.returncode == 1
    assert "401" in refused.stderr and "admin token refused" in refused.stderr
    no_socket = cli("ca", "show", "--data-dir", "/nonexistent", check=False)
    assert no_socket.returncode == 1
    assert "no admin socket" in no_socket.stderr


def test_bad_input_through_the_cli_is_explained(running: Running, tmp_path: Path) -> None:
    result = cli(
        "svid",
        "x509",
        "--spiffe-id",
        "spiffe://other.org/x",
        "--out",
        str(tmp_path / "x"),
        "--data-dir",
        str(running.data_dir),
        check=False,
    )
    assert result.returncode == 1
    assert "error: 400" in result.stderr
    assert not (tmp_path / "x").exists()


def test_ui_users_take_their_password_from_stdin(running: Running) -> None:
    data = ("--data-dir", str(running.data_dir))
    piped = cli(
        "admin", "user", "create", "carol", *data, "--password-stdin", stdin="s3cret-enough-pw\n"
    )
    assert "created carol (viewer)" in piped.stdout
    assert "Password" not in piped.stdout + piped.stderr
    # No terminal and no --password-stdin: refused with what to do, nothing created.
    refused = cli("admin", "user", "create", "dave", *data, check=False)
    assert refused.returncode == 1
    assert "--password-stdin" in refused.stderr
    users = json.loads(cli("admin", "user", "list", *data, "--output", "json").stdout)
    assert {u["username"] for u in users} >= {"carol"}
    assert "dave" not in {u["username"] for u in users}


def test_sigterm_stops_the_server_cleanly(running: Running) -> None:
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(20) == 0
    assert not (running.data_dir / "admin.sock").exists()
