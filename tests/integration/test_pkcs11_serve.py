"""`trustd serve` with its CA keys in a real PKCS#11 token (SoftHSM2, a fresh token for this
module): the X509-SVIDs, JWT-SVIDs, CRLs and OCSP answers it signs verify with openssl and
PyJWT and pass pkilint; `pkcs11-tool` shows the keys in the token, never extractable; the
data directory and its database hold no private key; start-up refuses a wrong PIN in one
line (the other start-up refusals are checked in process: `test_pkcs11_backend`).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.ca import certificate_pem, load_pem_certificates
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.hsm_support import Token, new_token
from tests.integration.conftest import Running, cli, error_line, serve_once, start_server, tls
from tests.integration.test_pki_lint import _assert_no_errors, _lint, _tool

pytestmark = pytest.mark.integration

# DER fragments that only private keys contain: PKCS#8 PrivateKeyInfo (version 0 then the
# ecPublicKey AlgorithmIdentifier, RFC 5208 §5 / RFC 5480), SEC1 ECPrivateKey (version 1
# then the P-256 or P-384 private key OCTET STRING, RFC 5915 §3) and PBES2-encrypted
# PKCS#8 (RFC 8018 §A.4), plus every PEM private-key armour.
_PRIVATE_KEY_MARKERS = (
    bytes.fromhex("020100301306072a8648ce3d0201"),
    bytes.fromhex("0201010420"),
    bytes.fromhex("0201010430"),
    bytes.fromhex("06092a864886f70d01050d"),
    b"PRIVATE KEY-----",
)


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Token:
    return new_token(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture(scope="module")
def server(token: Token, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("serve")
    running = start_server(work / "var", work / "server.log", **token.env)
    yield running
    running.stop()


def _auth(server: Running) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def _issue(server: Running, name: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """An X509-SVID for spiffe://example.org/*name* and the intermediates sent with it."""
    csr = create_csr(generate_private_key(KeyType.EC_P256))
    response = httpx.post(
        f"{server.url}/v1/svid/x509",
        json={"spiffe_id": f"spiffe://example.org/{name}", "csr": csr},
        headers=_auth(server),
        verify=tls(server.bundle),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    leaf = load_pem_certificates(body["certificate"].encode())[0]
    return leaf, [load_pem_certificates(p.encode())[0] for p in body["intermediates"]]


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("openssl"), *args], capture_output=True, text=True, check=False, timeout=60
    )


def _active(server: Running) -> dict[str, str]:
    """The active CA keys' kids by kind."""
    shown = json.loads(cli("ca", "show", "--data-dir", str(server.data_dir), "-o", "json").stdout)
    return {a["kind"]: a["kid"] for a in shown["authorities"] if a["status"] == "active"}


def test_the_token_signs_svids_crls_and_ocsp_that_verify(server: Running, tmp_path: Path) -> None:
    active = _active(server)
    root = load_pem_certificates(server.bundle.read_bytes())[0]
    good, (intermediate,) = _issue(server, "good")
    bad, _ = _issue(server, "bad")
    revoked = httpx.post(
        f"{server.url}/v1/admin/certificates/revoke",
        json={"serial": format(bad.serial_number, "x"), "reason": "keyCompromise"},
        headers=_auth(server),
        verify=tls(server.bundle),
    )
    assert revoked.status_code == 200, revoked.text

    def write(name: str, data: bytes | str) -> Path:
        path = tmp_path / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    root_pem = write("root.pem", certificate_pem(root))
    inter_pem = write("inter.pem", certificate_pem(intermediate))
    good_pem, bad_pem = (
        write("good.pem", certificate_pem(good)),
        write("bad.pem", certificate_pem(bad)),
    )
    crls = []
    for kid in (active["x509-intermediate"], active["x509-root"]):
        response = httpx.get(f"{server.url}/v1/crl/{kid}", verify=tls(server.bundle))
        assert response.status_code == 200
        crls.append(write(f"{kid}.crl", response.content))
    crl_pem = write(
        "crls.pem",
        b"".join(
            x509.load_der_x509_crl(p.read_bytes()).public_bytes(serialization.Encoding.PEM)
            for p in crls
        ),
    )
    chain = ("verify", "-x509_strict", "-crl_check_all", "-CAfile", str(root_pem))
    chain += ("-untrusted", str(inter_pem), "-CRLfile", str(crl_pem))
    ok = _openssl(*chain, str(good_pem))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = _openssl(*chain, str(bad_pem))
    assert "certificate revoked" in refused.stdout + refused.stderr

    # OCSP (RFC 6960): openssl builds the request and checks the token-signed answer.
    for leaf, expected in ((good_pem, ": good"), (bad_pem, ": revoked")):
        request = tmp_path / f"{leaf.stem}.req"
        made = _openssl(
            "ocsp", "-issuer", str(inter_pem), "-cert", str(leaf), "-reqout", str(request)
        )
        assert made.returncode == 0, made.stderr
        answer = httpx.post(
            f"{server.url}/v1/ocsp",
            content=request.read_bytes(),
            headers={"Content-Type": "application/ocsp-request"},
            verify=tls(server.bundle),
        )
        response = write(f"{leaf.stem}.resp", answer.content)
        checked = _openssl(
            "ocsp",
            "-no_nonce",
            "-respin",
            str(response),
            "-issuer",
            str(inter_pem),
            "-cert",
            str(leaf),
            "-CAfile",
            str(root_pem),
            "-verify_other",
            str(inter_pem),
        )
        output = checked.stdout + checked.stderr
        assert checked.returncode == 0 and "Response verify OK" in output, output
        assert f"{leaf}{expected}" in output
        _assert_no_errors(_lint(_tool("lint_ocsp_response"), str(response)))

    lint_cert = _tool("lint_pkix_cert")
    for path in (root_pem, inter_pem, good_pem):
        _assert_no_errors(_lint(lint_cert, str(path)))
    _assert_no_errors(_lint(_tool("lint_crl"), "-t", "CRL", "-p", "PKIX", str(crls[0])))
    _assert_no_errors(_lint(_tool("lint_crl"), "-t", "ARL", "-p", "PKIX", str(crls[1])))


def test_the_token_signs_jwt_svids(server: Running) -> None:
    token = cli(
        "svid",
        "jwt",
        "--spiffe-id",
        "spiffe://example.org/demo",
        "--audience",
        "api",
        "--data-dir",
        str(server.data_dir),
    ).stdout.strip()
    jwks = json.loads(
        cli("bundle", "show", "--format", "jwks", "--data-dir", str(server.data_dir)).stdout
    )
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks["keys"] if k.get("kid") == kid and k.get("use") == "jwt-svid")
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["ES256"], audience="api")
    assert claims["sub"] == "spiffe://example.org/demo"


def test_the_keys_live_in_the_token_and_nowhere_else(server: Running, token: Token) -> None:
    listed = cli("ca", "keys", "--data-dir", str(server.data_dir), "-o", "json").stdout
    keys = json.loads(listed)
    assert {k["kind"] for k in keys} == {"x509-root", "x509-intermediate", "jwt"}
    assert all(k["key_backend"] == "pkcs11" for k in keys), keys
    assert all(f"token {token.label!r}" in k["key_location"] for k in keys), keys
    table = cli("ca", "keys", "--data-dir", str(server.data_dir)).stdout
    assert table.splitlines()[0].split()[-2:] == ["BACKEND", "KEY"]

    objects = token.tool("--list-objects", "--type", "privkey")
    assert objects.returncode == 0, objects.stderr
    blocks = objects.stdout.split("Private Key Object")[1:]
    assert len(blocks) == 3, objects.stdout
    ids = set()
    for block in blocks:
        assert "never extractable" in block and "sensitive" in block, block
        ids.add(re.search(r"ID:\s+([0-9a-f]+)", block).group(1))  # type: ignore[union-attr]
    assert ids == {k["key_id"] for k in keys}

    # No private key in the data directory, the database included.
    scanned = 0
    for path in server.data_dir.rglob("*"):
        if not path.is_file() or path.is_socket():
            continue
        data = path.read_bytes()
        scanned += 1
        for marker in _PRIVATE_KEY_MARKERS:
            assert marker not in data, f"{path} holds what looks like a private key"
    assert scanned >= 2 and (server.data_dir / "trustd.db").exists()


def test_start_up_refuses_a_wrong_pin(token: Token, tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    wrong_pin = error_line(serve_once(data_dir, **{**token.env, "TRUSTD_PKCS11_PIN": "0000"}))
    assert "refused the PIN" in wrong_pin
    # Nothing fell back to file keys: no CA was made.
    assert not (data_dir / "bundle.pem").exists()


def test_migrate_keys_says_what_it_did(server: Running) -> None:
    data = ("--data-dir", str(server.data_dir))
    done = cli("ca", "migrate-keys", "--to", "pkcs11", *data)
    assert "in the pkcs11 backend already" in done.stderr
    refused = cli("ca", "migrate-keys", "--to", "file", *data, check=False)
    assert refused.returncode == 1
    assert "TRUSTD_CA_KEY_BACKEND=file" in refused.stderr
