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

# A long fault run: `make test-faults` (CI runs it after `make test`).
pytestmark = [pytest.mark.integration, pytest.mark.fault]


def _current_bundle(running: Running, directory: Path) -> Path:
    """The bundle as the server holds it now, read over the admin socket (not over TLS, so
    the check does not depend on what it checks)."""
    pem = cli("bundle", "show", "--data-dir", str(running.data_dir)).stdout
    path = directory / f"bundle-{time.monotonic_ns()}.pem"
    path.write_text(pem)
    return path


def _fresh_client(
    running: Running, directory: Path, bundle: Path | None = None
) -> x509.Certificate:
    """Connect as a new client trusting only the current bundle (or *bundle*, read just
    before); return the certificate the server presented."""
    bundle = bundle or _current_bundle(running, directory)
    context = ssl.create_default_context(cafile=str(bundle))
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


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serving_certificate_follows_root_rotation_taint_and_revocation(
    tmp_path: Path, workers: str
) -> None:
    running = start_server(tmp_path / "var", tmp_path / "server.log", TRUSTD_WORKERS=workers)
    try:
        _follow_rotation(running, tmp_path, int(workers))
    finally:
        running.stop()


def _follow_rotation(running: Running, tmp_path: Path, workers: int) -> None:
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

    # Every worker re-issues its certificate under the new intermediate on its own; new
    # connections land on any worker, so several are made.
    deadline = time.monotonic() + 15
    while True:
        bundle = _current_bundle(running, tmp_path)
        presented = [_fresh_client(running, tmp_path, bundle) for _ in range(4 * workers)]
        if all(_authority_key_id(p) != _authority_key_id(first) for p in presented):
            break
        assert time.monotonic() < deadline, "still serving the certificate of the old issuer"
        time.sleep(0.2)

    cli("ca", "reissue", old_root, *data)
    _fresh_client(running, tmp_path)
    revoked = cli("ca", "revoke", old_root, *data)
    assert "removed from the bundle" in revoked.stderr
    # With several workers the admin socket may reach one that follows the change within
    # its one-second check rather than at once.
    deadline = time.monotonic() + 10
    while _current_bundle(running, tmp_path).read_text().count("BEGIN CERTIFICATE") != 1:
        assert time.monotonic() < deadline, "the revoked root is still in the bundle"
        time.sleep(0.2)
    # The old root is gone from the bundle; clients trusting only the new one connect.
    for _ in range(4 * workers):
        _fresh_client(running, tmp_path, _current_bundle(running, tmp_path))


def _key_files(data_dir: Path) -> list[Path]:
    return [
        p
        for p in data_dir.rglob("*")
        if p.is_file() and p.suffix == ".pem" and b"PRIVATE KEY" in p.read_bytes()
    ]


def test_kill_9_leaves_no_serving_key_on_disk(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    start_server(data_dir, tmp_path / "first.log").stop()
    # What releases that wrote the key to tls/ left behind after a crash.
    stale = data_dir / "tls"
    stale.mkdir()
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
