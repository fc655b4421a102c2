"""Real ACME clients against a real `trustd serve` over HTTPS: certbot and lego (Debian)
obtain, renew and revoke certificates solving http-01 on loopback; the Python `acme` client
runs the full flow, key rollover and EAB. Every certificate is checked with pkilint.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import josepy as jose
import pytest
from acme import client as acme_client
from acme import jws as acme_jws
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.acme_support import DnsServer, Http01Responder

pytestmark = pytest.mark.integration
TRUSTD = str(Path(sys.executable).parent / "trustd")
NAME = "svc.example.org"

# CA/B Forum BR rules pkilint applies that cannot hold for a private CA, and why:
NOT_APPLICABLE_TO_A_PRIVATE_CA = {
    # BR §7.1.2.7.9 asks for a CA/B Forum reserved policy OID (DV/OV/EV). A private CA is
    # not audited against the BRs, so asserting one would be false.
    "cabf.serverauth.subscriber.certificate_policies_extension_absent",
    # BR §7.1.2.7.12 forbids internal names and reserved addresses; internal names and
    # addresses (here loopback, and the loopback URL of the server) are what a private CA
    # certifies.
    "cabf.internal_ip_address",
    "cabf.internal_domain_name",
    # BR §7.1.2.11.2 / §7.1.2.7.7 want plain http CRL and OCSP URLs. trustd has one HTTPS
    # listener, so its CRL and OCSP URLs are https unless TRUSTD_PUBLIC_URL names an http
    # front end; with https URLs pkilint also counts the revocation information as absent.
    "cabf.serverauth.crldp_dpname_prohibited_uri_scheme",
    "cabf.serverauth.aia_location_uri_not_http",
    "msft.end_entity.revocation_information_absent",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Trustd:
    process: subprocess.Popen[str]
    data_dir: Path
    url: str
    http01_port: int
    dns: DnsServer

    @property
    def bundle(self) -> Path:
        return self.data_dir / "bundle.pem"

    @property
    def directory(self) -> str:
        return f"{self.url}/acme/directory"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TRUSTD, *args, "--data-dir", str(self.data_dir), "--output", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def trustd(tmp_path: Path) -> Iterator[Trustd]:
    dns = DnsServer()
    dns.add(NAME, "A", "127.0.0.1")
    dns.add("www.example.org", "A", "127.0.0.1")
    port, http01_port = _free_port(), _free_port()
    data_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    env |= {
        "TRUSTD_ACME_HTTP01_PORT": str(http01_port),
        "TRUSTD_ACME_DNS_RESOLVER": dns.address,
        "TRUSTD_ACME_IP_NETWORKS": '["127.0.0.0/8"]',
    }
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [TRUSTD, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        _wait_ready(url, data_dir / "bundle.pem", tmp_path / "server.log")
        yield Trustd(process, data_dir, url, http01_port, dns)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        log.close()
        dns.close()


def _wait_ready(url: str, bundle: Path, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            context = ssl.create_default_context(cafile=str(bundle))
            if httpx.get(f"{url}/readyz", verify=context).status_code == 200:
                return
        except (httpx.HTTPError, OSError):
            time.sleep(0.2)
    pytest.fail(f"trustd did not start: {log.read_text()}")


# --------------------------------------------------------------------------- pkilint


def _pkilint(tool: str, pem_file: Path, *options: str) -> list[tuple[str, str]]:
    exe = Path(sys.executable).parent / tool
    proc = subprocess.run(
        [str(exe), "lint", *options, "-f", "JSON", "-s", "NOTICE", str(pem_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.stderr == "", proc.stderr
    report = json.loads(proc.stdout)
    return [
        (finding["severity"], finding["code"])
        for result in report["results"]
        for finding in result["finding_descriptions"]
    ]


def assert_lints_clean(leaf_pem: bytes, directory: Path) -> None:
    """pkilint's RFC 5280 and CA/B Forum server-certificate lints: no errors, except the
    BR rules recorded above as not applicable to a private CA."""
    path = directory / "leaf-lint.pem"
    path.write_bytes(leaf_pem)
    pkix = [f for f in _pkilint("lint_pkix_cert", path) if f[0] in ("ERROR", "FATAL")]
    assert pkix == []
    cabf = [
        f
        for f in _pkilint("lint_cabf_serverauth_cert", path, "-t", "DV-FINAL-CERTIFICATE")
        if f[0] in ("ERROR", "FATAL") and f[1] not in NOT_APPLICABLE_TO_A_PRIVATE_CA
    ]
    assert cabf == []


def _leaf(pem_path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem_path.read_bytes())[0]


def _verify_chain(bundle: Path, chain: Path, tmp_path: Path) -> None:
    certs = chain.read_text().split("-----END CERTIFICATE-----\n")
    (tmp_path / "leaf.pem").write_text(certs[0] + "-----END CERTIFICATE-----\n")
    (tmp_path / "int.pem").write_text("-----END CERTIFICATE-----\n".join(certs[1:]))
    proc = subprocess.run(
        [
            "openssl",
            "verify",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            NAME,
            "-CAfile",
            str(bundle),
            "-untrusted",
            str(tmp_path / "int.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _admin_certificates(trustd: Trustd) -> list[dict[str, object]]:
    result = trustd.cli("acme", "certificates")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, object]] = json.loads(result.stdout)
    return listed


# --------------------------------------------------------------------------- certbot


def test_certbot_obtains_renews_and_revokes(trustd: Trustd, tmp_path: Path) -> None:
    certbot = shutil.which("certbot")
    if certbot is None:
        pytest.skip("certbot is not installed")
    base = [
        "--server",
        trustd.directory,
        "--non-interactive",
        "--config-dir",
        str(tmp_path / "config"),
        "--work-dir",
        str(tmp_path / "work"),
        "--logs-dir",
        str(tmp_path / "logs"),
    ]
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(trustd.bundle)}

    def run(*args: str) -> None:
        proc = subprocess.run(
            [certbot, *args, *base],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    run(
        "certonly",
        "--standalone",
        "--http-01-port",
        str(trustd.http01_port),
        "--http-01-address",
        "127.0.0.1",
        "--agree-tos",
        "-m",
        "ops@example.org",
        "--no-eff-email",
        "--key-type",
        "ecdsa",
        "-d",
        NAME,
    )
    live = tmp_path / "config" / "live" / NAME
    first = _leaf(live / "cert.pem")
    assert first.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == [NAME]
    _verify_chain(trustd.bundle, live / "fullchain.pem", tmp_path)
    assert_lints_clean(first.public_bytes(serialization.Encoding.PEM), tmp_path)

    run(
        "renew",
        "--force-renewal",
        "--no-random-sleep-on-renew",
        "--http-01-port",
        str(trustd.http01_port),
        "--http-01-address",
        "127.0.0.1",
    )
    second = _leaf(live / "cert.pem")
    assert second.serial_number != first.serial_number

    run(
        "revoke",
        "--cert-path",
        str(live / "cert.pem"),
        "--reason",
        "keycompromise",
        "--no-delete-after-revoke",
    )
    listed = {c["serial"]: c for c in _admin_certificates(trustd)}
    revoked = listed[format(second.serial_number, "x")]
    assert (revoked["status"], revoked["revocation_reason"]) == ("revoked", "keyCompromise")
    assert listed[format(first.serial_number, "x")]["status"] == "valid"


# --------------------------------------------------------------------------- lego


def test_lego_obtains_renews_and_revokes(trustd: Trustd, tmp_path: Path) -> None:
    lego = shutil.which("lego")
    if lego is None:
        pytest.skip("lego is not installed")
    env = {**os.environ, "LEGO_CA_CERTIFICATES": str(trustd.bundle)}
    common = [
        "--server",
        trustd.directory,
        "--accept-tos",
        "--email",
        "ops@example.org",
        "--key-type",
        "ec256",
        "--path",
        str(tmp_path / "lego"),
        "--http",
        "--http.port",
        f"127.0.0.1:{trustd.http01_port}",
        "--domains",
        NAME,
    ]

    def run(*args: str) -> None:
        proc = subprocess.run(
            [lego, *common, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    # lego keeps one certificate per first domain; revoke names only that one.
    run("--domains", "www.example.org", "run")
    crt = tmp_path / "lego" / "certificates" / f"{NAME}.crt"
    first = _leaf(crt)
    names = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == [NAME, "www.example.org"]
    _verify_chain(trustd.bundle, crt, tmp_path)
    assert_lints_clean(first.public_bytes(serialization.Encoding.PEM), tmp_path)

    run("--domains", "www.example.org", "renew", "--days", "3650", "--no-random-sleep")
    second = _leaf(crt)
    assert second.serial_number != first.serial_number

    run("revoke")
    listed = {c["serial"]: c for c in _admin_certificates(trustd)}
    assert listed[format(second.serial_number, "x")]["status"] == "revoked"


# --------------------------------------------------------------------------- Python acme


def _client(trustd: Trustd, key: jose.JWK | None = None) -> acme_client.ClientV2:
    key = key or jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(
        key, alg=jose.ES256, verify_ssl=str(trustd.bundle), user_agent="trustd-tests"
    )
    directory = acme_client.ClientV2.get_directory(trustd.directory, net)
    return acme_client.ClientV2(directory, net)


def _obtain(client: acme_client.ClientV2, responder: Http01Responder, *names: str) -> bytes:
    order = client.new_order(create_csr_for(*names))
    for authz in order.authorizations:
        challb = next(c for c in authz.body.challenges if c.chall.typ == "http-01")
        response, validation = challb.response_and_validation(client.net.key)
        responder.tokens[challb.chall.encode("token")] = validation
        client.answer_challenge(challb, response)
    # The acme client compares deadlines with naive local time.
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=30)  # noqa: DTZ005
    order = client.poll_authorizations(order, deadline)
    finished = client.finalize_order(order, deadline)
    return str(finished.fullchain_pem).encode()


def _new_account(client: acme_client.ClientV2, **extra: object) -> messages.RegistrationResource:
    return client.new_account(
        messages.NewRegistration.from_data(
            email="ops@example.org", terms_of_service_agreed=True, **extra
        )
    )


def test_python_acme_client_full_flow_ari_and_key_rollover(trustd: Trustd, tmp_path: Path) -> None:
    responder = Http01Responder(trustd.http01_port)
    try:
        client = _client(trustd)
        regr = _new_account(client)
        assert regr.body.status == "valid"
        fullchain = _obtain(client, responder, NAME)
        leaf = x509.load_pem_x509_certificates(fullchain)[0]
        assert_lints_clean(leaf.public_bytes(serialization.Encoding.PEM), tmp_path)

        # ARI (RFC 9773): the client's renewal time falls inside the certificate's life.
        renew_at, _ = client.renewal_time(leaf.public_bytes(serialization.Encoding.PEM))
        assert renew_at is not None
        assert leaf.not_valid_before_utc < renew_at < leaf.not_valid_after_utc

        # Key rollover (RFC 8555 §7.3.5): the inner JWS is signed by the new key.
        old_key = client.net.key
        new_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        inner = acme_jws.JWS.sign(
            json.dumps(
                {"account": regr.uri, "oldKey": old_key.public_key().to_partial_json()}
            ).encode(),
            new_key,
            jose.ES256,
            None,
            url=client.directory["keyChange"],
        )
        client.net.post(client.directory["keyChange"], inner)
        client.net.key = new_key
        _obtain(client, responder, NAME)
        stale = _client(trustd, old_key)
        with pytest.raises(messages.Error) as refused:
            _new_account(stale, only_return_existing=True)
        assert refused.value.code == "accountDoesNotExist"

        # Revocation by the account; ARI then asks for renewal at once.
        client.revoke(leaf, 4)
        with pytest.raises(messages.Error) as again:
            client.revoke(leaf, 4)
        assert again.value.code == "alreadyRevoked"
        renew_at, _ = client.renewal_time(leaf.public_bytes(serialization.Encoding.PEM))
        assert renew_at is not None
        assert renew_at < datetime.datetime.now(datetime.UTC)
    finally:
        responder.close()


def test_python_acme_client_external_account_binding(trustd: Trustd) -> None:
    created = trustd.cli("acme", "eab", "create", "--label", "ci", "--dns-suffix", NAME)
    assert created.returncode == 0, created.stderr
    eab_key = json.loads(created.stdout)
    client = _client(trustd)
    wrong = messages.ExternalAccountBinding.from_data(
        account_public_key=client.net.key.public_key(),
        kid=eab_key["id"],
        hmac_key=jose.b64.b64encode(b"x" * 32).decode(),
        directory=client.directory,
    )
    with pytest.raises(messages.Error) as refused:
        _new_account(client, external_account_binding=wrong)
    assert refused.value.code == "unauthorized"
    binding = messages.ExternalAccountBinding.from_data(
        account_public_key=client.net.key.public_key(),
        kid=eab_key["id"],
        hmac_key=eab_key["hmac_key"],
        directory=client.directory,
    )
    regr = _new_account(client, external_account_binding=binding)
    accounts = json.loads(trustd.cli("acme", "accounts").stdout)
    bound = next(a for a in accounts if regr.uri.endswith(a["id"]))
    assert bound["eab_key_id"] == eab_key["id"]
    # The key allows only svc.example.org: the Rego policy refuses www.example.org.
    with pytest.raises(messages.Error) as rejected:
        client.new_order(create_csr_for("www.example.org"))
    assert rejected.value.code == "rejectedIdentifier"


def create_csr_for(*names: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
