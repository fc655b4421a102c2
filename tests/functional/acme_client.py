"""A thin ACME client over the in-process app, for functional tests: josepy signs, the
real app (migrated database, real CA) answers."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from pki.clock import Clock
from tests.acme_support import DnsServer, Http01Responder, Signer, TlsAlpnResponder, b64
from tests.functional.conftest import make_settings
from trustd.app import create_app
from trustd.bootstrap import initialise, migrate
from trustd.services.container import Services, build_services
from trustd.settings import Settings

JOSE = "application/jose+json"


@dataclass
class AcmeEnv:
    settings: Settings
    services: Services
    client: TestClient
    admin_token: str
    dns: DnsServer
    http01: Http01Responder
    tls_alpn: TlsAlpnResponder
    signer: Signer = field(default_factory=Signer)

    @property
    def base(self) -> str:
        return self.settings.base_url

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def url(self, path: str) -> str:
        return self.base + path

    def nonce(self) -> str:
        return str(self.client.head("/acme/new-nonce").headers["Replay-Nonce"])

    def send(self, url: str, body: bytes, content_type: str = JOSE) -> httpx.Response:
        return self.client.post(
            url.removeprefix(self.base), content=body, headers={"Content-Type": content_type}
        )

    def post(
        self,
        url: str,
        payload: dict[str, Any] | None,
        *,
        signer: Signer | None = None,
        use_jwk: bool = False,
        nonce: str | None = None,
    ) -> httpx.Response:
        signer = signer or self.signer
        return self.send(url, signer.sign(url, payload, nonce or self.nonce(), use_jwk=use_jwk))

    def new_account(self, signer: Signer | None = None, **payload: Any) -> httpx.Response:
        signer = signer or self.signer
        response = self.post(
            self.url("/acme/new-account"),
            {"termsOfServiceAgreed": True, **payload},
            signer=signer,
            use_jwk=True,
        )
        if response.status_code in (200, 201):
            signer.kid = response.headers["Location"]
        return response

    def new_order(self, *names: str, signer: Signer | None = None, **extra: Any) -> httpx.Response:
        identifiers = [
            {"type": "ip" if name[0].isdigit() or ":" in name else "dns", "value": name}
            for name in names
        ]
        return self.post(
            self.url("/acme/new-order"), {"identifiers": identifiers, **extra}, signer=signer
        )

    def authorize_http01(self, order: dict[str, Any], signer: Signer | None = None) -> None:
        """Answer every authorization's http-01 challenge through the responder."""
        signer = signer or self.signer
        for authz_url in order["authorizations"]:
            authz = self.post(authz_url, None, signer=signer).json()
            challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
            self.http01.tokens[challenge["token"]] = f"{challenge['token']}.{signer.thumbprint()}"
            answered = self.post(challenge["url"], {}, signer=signer)
            assert answered.status_code == 200, answered.text

    def issue(
        self, *names: str, signer: Signer | None = None, **extra: Any
    ) -> tuple[str, dict[str, Any], ec.EllipticCurvePrivateKey]:
        """Run a whole order; return (order URL, final order, certificate key)."""
        created = self.new_order(*names, signer=signer, **extra)
        assert created.status_code == 201, created.text
        self.authorize_http01(created.json(), signer)
        order_url = created.headers["Location"]
        order = self.post(order_url, None, signer=signer).json()
        assert order["status"] == "ready", order
        key = ec.generate_private_key(ec.SECP256R1())
        finalized = self.post(order["finalize"], {"csr": csr_b64(key, names)}, signer=signer)
        assert finalized.status_code == 200, finalized.text
        return order_url, finalized.json(), key

    def certificate(self, order: dict[str, Any], signer: Signer | None = None) -> x509.Certificate:
        response = self.post(order["certificate"], None, signer=signer)
        assert response.status_code == 200, response.text
        return x509.load_pem_x509_certificates(response.content)[0]


def csr_b64(key: ec.EllipticCurvePrivateKey, names: tuple[str, ...] | list[str]) -> str:
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return b64(csr.public_bytes(serialization.Encoding.DER))


@contextmanager
def acme_env(
    tmp_path: Path, database_url: str, clock: Clock | None = None, **overrides: Any
) -> Iterator[AcmeEnv]:
    dns_server = DnsServer()
    http01 = Http01Responder()
    tls_alpn = TlsAlpnResponder(tmp_path / "tls-alpn")
    settings = make_settings(
        tmp_path,
        database_url,
        acme_dns_resolver=dns_server.address,
        acme_http01_port=http01.port,
        acme_tlsalpn01_port=tls_alpn.port,
        acme_ip_networks=["127.0.0.0/8", "::1/128"],
        acme_validation_timeout=2,
        **overrides,
    )
    settings.data_dir.mkdir(parents=True)
    migrate(database_url)
    services = build_services(settings, clock)
    report = initialise(services)
    assert report.bootstrap_token is not None
    try:
        with TestClient(create_app(settings, services), raise_server_exceptions=False) as client:
            yield AcmeEnv(
                settings, services, client, report.bootstrap_token, dns_server, http01, tls_alpn
            )
    finally:
        services.engine.dispose()
        http01.close()
        tls_alpn.close()
        dns_server.close()


def problem(response: httpx.Response, acme_type: str, status: int) -> dict[str, Any]:
    """Assert an RFC 8555 problem document of `acme_type`, with a fresh nonce."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["type"] == f"urn:ietf:params:acme:error:{acme_type}", document
    assert response.headers.get("Replay-Nonce"), "errors carry a fresh nonce (RFC 8555 §6.5)"
    return document
