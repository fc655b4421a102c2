"""CRLs and OCSP responses from a running app, checked by independent implementations:
pkilint (`lint_crl`, `lint_ocsp_response`), `openssl verify -crl_check_all` and `openssl ocsp`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from pki.ca import certificate_pem, load_pem_certificates
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.integration.test_pki_lint import _assert_no_errors, _lint, _tool
from trustd.app import create_app
from trustd.bootstrap import initialise, migrate
from trustd.services.container import build_services
from trustd.settings import load_settings

pytestmark = pytest.mark.integration


@dataclass
class App:
    client: TestClient
    auth: dict[str, str]
    root_kid: str
    kid: str
    root: x509.Certificate
    intermediate: x509.Certificate
    directory: Path

    def issue(self, name: str) -> x509.Certificate:
        csr = create_csr(generate_private_key(KeyType.EC_P256))
        response = self.client.post(
            "/v1/svid/x509",
            json={"spiffe_id": f"spiffe://example.org/{name}", "csr": csr},
            headers=self.auth,
        )
        assert response.status_code == 201, response.text
        return load_pem_certificates(response.json()["certificate"].encode())[0]

    def revoke(self, cert: x509.Certificate, reason: str) -> None:
        response = self.client.post(
            "/v1/admin/certificates/revoke",
            json={"serial": format(cert.serial_number, "x"), "reason": reason},
            headers=self.auth,
        )
        assert response.status_code == 200, response.text

    def ocsp(self, cert: x509.Certificate, issuer: Path) -> tuple[Path, Path]:
        """Have openssl build the OCSP request for *cert*, post it; returns the leaf's PEM
        file and the DER response file."""
        leaf = self.write(f"{cert.serial_number:x}.pem", certificate_pem(cert))
        request = self.directory / f"{cert.serial_number:x}.req"
        made = _openssl("ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-reqout", str(request))
        assert made.returncode == 0, made.stderr
        response = self.client.post(
            "/v1/ocsp",
            content=request.read_bytes(),
            headers={"Content-Type": "application/ocsp-request"},
        )
        return leaf, self.write(f"{cert.serial_number:x}.resp", response.content)

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.directory / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        return path


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    url = f"sqlite:///{tmp_path / 'trustd.db'}"
    settings = load_settings(data_dir=tmp_path / "data", database_url=url, tls=False)
    settings.data_dir.mkdir(parents=True)
    migrate(url)
    services = build_services(settings)
    token = initialise(services).bootstrap_token
    with TestClient(create_app(settings, services)) as client:
        state = services.ca.state
        root_kid = next(k.kid for k in state.keys if k.kind == "x509-root")
        yield App(
            client,
            {"Authorization": f"Bearer {token}"},
            root_kid,
            state.authority_kid,
            state.authority.root,
            state.authority.certificate,
            tmp_path,
        )
    services.engine.dispose()


def _crl_file(app: App, kid: str, name: str) -> Path:
    response = app.client.get(f"/v1/crl/{kid}")
    assert response.status_code == 200
    return app.write(name, response.content)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("openssl"), *args], capture_output=True, text=True, check=False, timeout=60
    )


def test_pkilint_accepts_the_crls(app: App) -> None:
    lint = _tool("lint_crl")
    _assert_no_errors(
        _lint(lint, "-t", "CRL", "-p", "PKIX", str(_crl_file(app, app.kid, "empty.crl")))
    )
    for index, reason in enumerate(("keyCompromise", "unspecified", "superseded")):
        app.revoke(app.issue(f"w{index}"), reason)
    path = _crl_file(app, app.kid, "full.crl")
    assert len(x509.load_der_x509_crl(path.read_bytes())) == 3
    _assert_no_errors(_lint(lint, "-t", "CRL", "-p", "PKIX", str(path)))
    # The root's CRL lists revoked intermediates: an ARL.
    _assert_no_errors(
        _lint(lint, "-t", "ARL", "-p", "PKIX", str(_crl_file(app, app.root_kid, "root.crl")))
    )


def test_pkilint_accepts_the_ocsp_responses(app: App) -> None:
    lint = _tool("lint_ocsp_response")
    good, bad = app.issue("good"), app.issue("bad")
    app.revoke(bad, "keyCompromise")
    issuer = app.write("issuer.pem", certificate_pem(app.intermediate))
    for cert in (good, bad):
        _, path = app.ocsp(cert, issuer)
        _assert_no_errors(_lint(lint, str(path)))


def test_openssl_verify_with_crl_check_all(app: App) -> None:
    good, bad = app.issue("good"), app.issue("bad")
    app.revoke(bad, "keyCompromise")
    crls = [
        x509.load_der_x509_crl(_crl_file(app, kid, f"{kid}.crl").read_bytes())
        for kid in (app.kid, app.root_kid)
    ]
    crl_pem = app.write(
        "crls.pem", b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls)
    )
    root = app.write("root.pem", certificate_pem(app.root))
    inter = app.write("inter.pem", certificate_pem(app.intermediate))
    chain = ("verify", "-crl_check_all", "-CAfile", str(root), "-untrusted", str(inter))
    ok = _openssl(
        *chain, "-CRLfile", str(crl_pem), str(app.write("good.pem", certificate_pem(good)))
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    revoked = _openssl(
        *chain, "-CRLfile", str(crl_pem), str(app.write("bad.pem", certificate_pem(bad)))
    )
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    # Without the CRLs openssl cannot check at all: proof the check above used them.
    missing = _openssl(*chain, str(app.directory / "good.pem"))
    assert "unable to get certificate CRL" in missing.stdout + missing.stderr


def test_openssl_ocsp_reads_the_responses(app: App) -> None:
    good, bad = app.issue("good"), app.issue("bad")
    app.revoke(bad, "keyCompromise")
    root = app.write("root.pem", certificate_pem(app.root))
    inter = app.write("inter.pem", certificate_pem(app.intermediate))
    for cert, expected in ((good, ": good"), (bad, ": revoked")):
        leaf, answer = app.ocsp(cert, inter)
        checked = _openssl(
            "ocsp",
            # The nonce echo is checked in the functional tests; openssl would compare against
            # a fresh request it builds from -cert here.
            "-no_nonce",
            "-respin",
            str(answer),
            "-issuer",
            str(inter),
            "-cert",
            str(leaf),
            "-CAfile",
            str(root),
            "-verify_other",
            str(inter),
        )
        output = checked.stdout + checked.stderr
        assert checked.returncode == 0, output
        assert "Response verify OK" in output
        assert f"{leaf}{expected}" in output
        if expected == ": revoked":
            assert "Reason: keyCompromise" in output


def test_lint_crl_reports_real_errors(tmp_path: Path) -> None:
    # Guard against a lint run that checks nothing: a CRL without CRL number and AKI
    # (RFC 5280 §5.2.1, §5.2.3) must produce errors.
    key = generate_private_key(KeyType.EC_P256)
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")]))
        .last_update(now)
        .next_update(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "bare.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    codes = {f[2] for f in _lint(_tool("lint_crl"), "-t", "CRL", "-p", "PKIX", str(path))}
    assert {"pkix.crl_number_missing", "pkix.authority_key_identifier_missing"} <= codes
