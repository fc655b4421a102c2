"""The serving certificate of a real `trustd serve` over TLS: it follows every rotation,
taint and revocation of its issuer, and its key never reaches the disk."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.integration.conftest import Running, cli, start_server, tls

pytestmark = pytest.mark.integration


def _current_bundle(running: Running, directory: Path) -> Path:
    """The bundle as the server holds it now, read over the admin socket (not over TLS, so
    the check does not depend on what it checks)."""
    pem = cli("bundle", "show", "--data-dir", str(running.data_dir)).stdout
    path = directory / f"bundle-{time.monotonic_ns()}.pem"
    path.write_text(pem)
    return path


def _fresh_client(running: Running, directory: Path) -> x509.Certificate:
    """Connect as a new client trusting only the current bundle; return the certificate the
    server presented."""
    context = ssl.create_default_context(cafile=str(_current_bundle(running, directory)))
    assert httpx.get(f"{running.url}/readyz", verify=context).status_code == 200
    with (
        socket.create_connection(("127.0.0.1", running.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _authority_key_id(certificate: x509.Certificate) -> bytes | None:
    ext = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    return ext.value.key_identifier


def _keys(running: Running) -> list[dict[str, str]]:
    out = cli("ca", "keys", "--data-dir", str(running.data_dir), "--output", "json").stdout
    keys: list[dict[str, str]] = json.loads(out)
    return keys


def _active(running: Running, kind: str) -> str:
    return next(k["kid"] for k in _keys(running) if k["kind"] == kind and k["status"] == "active")


def test_serving_certificate_follows_root_rotation_taint_and_revocation(
    running: Running, tmp_path: Path
) -> None:
    data = ("--data-dir", str(running.data_dir))
    old_root = _active(running, "x509-root")
    old_int = _active(running, "x509-intermediate")
    first = _fresh_client(running, tmp_path)

    cli("ca", "prepare", "--kind", "x509-root", *data)
    _fresh_client(running, tmp_path)
    cli("ca", "activate", "--kind", "x509-root", *data)
    _fresh_client(running, tmp_path)
    cli("ca", "taint", old_root, *data)
    _fresh_client(running, tmp_path)
    cli("ca", "prepare", "--kind", "x509-intermediate", *data)
    _fresh_client(running, tmp_path)
    cli("ca", "activate", "--kind", "x509-intermediate", *data)
    new_int = _active(running, "x509-intermediate")
    assert new_int != old_int

    # The server re-issues its certificate under the new intermediate on its own.
    deadline = time.monotonic() + 15
    while True:
        presented = _fresh_client(running, tmp_path)
        if presented.serial_number != first.serial_number:
            break
        assert time.monotonic() < deadline, "still serving the certificate of the old issuer"
        time.sleep(0.2)
    assert _authority_key_id(presented) != _authority_key_id(first)

    cli("ca", "reissue", old_root, *data)
    _fresh_client(running, tmp_path)
    revoked = cli("ca", "revoke", old_root, *data)
    assert "removed from the bundle" in revoked.stderr
    bundle = _current_bundle(running, tmp_path).read_text()
    assert bundle.count("BEGIN CERTIFICATE") == 1
    # The old root is gone from the bundle; a client trusting only the new one connects.
    assert _fresh_client(running, tmp_path).serial_number == presented.serial_number


def _key_files(data_dir: Path) -> list[Path]:
    return [
        p
        for p in data_dir.rglob("*")
        if p.is_file() and p.suffix == ".pem" and b"PRIVATE KEY" in p.read_bytes()
    ]


def test_kill_9_leaves_no_serving_key_on_disk(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    # What releases that wrote the key to tls/ left behind after a crash.
    stale = data_dir / "tls"
    stale.mkdir(parents=True)
    (stale / "server-4242.pem").write_text("stale")
    (stale / "server-4242-key.pem").write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    server = start_server(data_dir, tmp_path / "server.log")
    try:
        assert not list(stale.glob("server-*")), "stale serving files were not removed"
        assert httpx.get(f"{server.url}/readyz", verify=tls(server.bundle)).status_code == 200
        assert _key_files(data_dir) == []
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        assert _key_files(data_dir) == []
        assert not list(stale.glob("server-*"))
    finally:
        server.stop()
