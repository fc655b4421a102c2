"""The `trustd ca` and `trustd cert` commands against a real `trustd serve`, and openssl's
OCSP client and CRL check against what that server publishes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Running, cli, tls

pytestmark = pytest.mark.integration


def _split_chain(pem: str, directory: Path) -> tuple[Path, Path]:
    leaf, intermediate = pem.split("-----END CERTIFICATE-----\n")[:2]
    (directory / "leaf.pem").write_text(leaf + "-----END CERTIFICATE-----\n")
    (directory / "int.pem").write_text(intermediate + "-----END CERTIFICATE-----\n")
    return directory / "leaf.pem", directory / "int.pem"


def _openssl_ocsp(running: Running, leaf: Path, issuer: Path) -> str:
    # openssl's own OCSP client, over HTTPS, verifying the server against the bundle.
    proc = subprocess.run(
        [
            "openssl", "ocsp",
            "-issuer", str(issuer),
            "-cert", str(leaf),
            "-url", f"{running.url}/v1/ocsp",
            "-CAfile", str(running.bundle),
            "-verify_other", str(issuer),
        ],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Response verify OK" in proc.stdout + proc.stderr
    return proc.stdout


def test_cert_revoke_list_show_and_openssl_ocsp(running: Running, tmp_path: Path) -> None:
    data = ("--data-dir", str(running.data_dir))
    out = tmp_path / "svid"
    cli("svid", "x509", "--spiffe-id", "spiffe://example.org/web", "--out", str(out), *data)
    leaf, issuer = _split_chain((out / "svid.pem").read_text(), tmp_path)
    assert f"{leaf}: good" in _openssl_ocsp(running, leaf, issuer)

    # The shared options go before the command, or after it as the old spelling had them.
    listed = json.loads(
        cli(*data, "-o", "json", "cert", "list", "--spiffe-id", "spiffe://example.org/web").stdout
    )
    serial = listed[0]["serial"]
    revoked = cli("cert", "revoke", "--serial", serial, "--reason", "keyCompromise", *data)
    assert revoked.stdout.split() == [serial]
    assert "revocation revision" in revoked.stderr
    shown = json.loads(cli("cert", "show", serial, *data, "--output", "json").stdout)
    assert shown["status"] == "revoked"
    answer = _openssl_ocsp(running, leaf, issuer)
    assert f"{leaf}: revoked" in answer and "keyCompromise" in answer

    # The CRL at the URL in the certificate makes openssl refuse the SVID.
    dp = subprocess.run(
        ["openssl", "x509", "-in", str(leaf), "-noout", "-ext", "crlDistributionPoints"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    url = dp.split("URI:")[1].strip()
    crl = httpx.get(url, verify=tls(running.bundle))
    assert crl.headers["content-type"] == "application/pkix-crl"
    (tmp_path / "crl.der").write_bytes(crl.content)
    subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"),
         "-out", str(tmp_path / "crl.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    verify = subprocess.run(
        ["openssl", "verify", "-crl_check", "-CAfile", str(running.bundle), "-untrusted",
         str(issuer), "-CRLfile", str(tmp_path / "crl.pem"), str(leaf)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode != 0 and "certificate revoked" in verify.stdout + verify.stderr

    again = cli("cert", "revoke", "--serial", serial, *data, check=False)
    assert again.returncode == 1 and "already revoked" in again.stderr
    both = cli("cert", "revoke", *data, check=False)
    assert both.returncode == 1 and "exactly one of --serial" in both.stderr


def test_ca_prepare_activate_taint_revoke(running: Running, tmp_path: Path) -> None:
    data = ("--data-dir", str(running.data_dir))
    keys = json.loads(cli("ca", "keys", *data, "--output", "json").stdout)
    first = next(k["kid"] for k in keys if k["kind"] == "x509-intermediate")

    never = cli("ca", "activate", "--kind", "jwt", *data, check=False)
    assert never.returncode == 1 and "prepare one first" in never.stderr
    only = cli("ca", "taint", first, *data, check=False)
    assert only.returncode == 1 and "activate a replacement first" in only.stderr

    prepared = cli("ca", "prepare", "--kind", "x509-intermediate", *data)
    assert "prepared and published" in prepared.stderr
    activated = cli("ca", "activate", "--kind", "x509-intermediate", *data)
    assert activated.stdout.split()[2] == "active"
    tainted = cli("ca", "taint", first, *data)
    assert "tainted" in tainted.stdout and "trustd ca reissue" in tainted.stderr
    # The serving certificate, at least; a table for people, JSON for scripts.
    assert json.loads(cli("ca", "reissue", first, *data, "--output", "json").stdout)
    table = cli("ca", "reissue", first, *data).stdout.splitlines()
    assert table[0].split()[:2] == ["SERIAL", "KIND"] and "NOT AFTER" in table[0]
    assert len(table) >= 2
    revoked = cli("ca", "revoke", first, *data)
    assert "removed from the bundle" in revoked.stderr
    keys = json.loads(cli("--output", "json", *data, "ca", "keys").stdout)
    statuses = {k["kid"]: k["status"] for k in keys}
    assert statuses[first] == "revoked"

    # Root rotation by cross-signing: both roots are published while they overlap.
    cli("ca", "prepare", "--kind", "x509-root", *data)
    bundle = httpx.get(f"{running.url}/v1/bundle", verify=tls(running.bundle)).json()
    assert len([k for k in bundle["keys"] if k["use"] == "x509-svid"]) == 2
    # The bundle file clients on the host read follows, so they trust the new root too.
    deadline = time.monotonic() + 10
    while running.bundle.read_text().count("BEGIN CERTIFICATE") != 2:
        assert time.monotonic() < deadline, "bundle.pem still holds one root"
        time.sleep(0.1)
