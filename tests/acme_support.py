"""Real peers for ACME tests: a UDP DNS server, an http-01 responder and a tls-alpn-01
responder on loopback, and a JWS signer built on josepy (the `acme` library's JOSE
implementation) so the server is checked against someone else's signing code.

A plain module (not a conftest) so tests and benchmarks import exactly what they use.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import josepy as jose
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class DnsServer:
    """An authoritative-only UDP DNS server answering from `records`; NXDOMAIN otherwise."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), rdtype), []).extend(values)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self._sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            for question in query.question:
                name = question.name.to_text(omit_final_dot=True).lower()
                rdtype = dns.rdatatype.to_text(question.rdtype)
                values = self.records.get((name, rdtype))
                if values:
                    response.answer.append(
                        dns.rrset.from_text_list(question.name, 5, "IN", rdtype, values)
                    )
                elif not any(key[0] == name for key in self.records):
                    response.set_rcode(dns.rcode.NXDOMAIN)
            self._sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._sock.close()


class Http01Responder:
    """Serves /.well-known/acme-challenge/<token> from `tokens` on 127.0.0.1. Clearing
    `gate` holds every answer until it is set again (a slow responder)."""

    def __init__(self, port: int = 0) -> None:
        tokens: dict[str, str] = {}
        self.tokens = tokens
        self.requests: list[tuple[str, str]] = []
        requests = self.requests
        self.gate = threading.Event()
        self.gate.set()
        gate = self.gate

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append((self.path, self.headers.get("Host", "")))
                gate.wait(30)
                token = self.path.rpartition("/")[2]
                body = tokens.get(token)
                if not self.path.startswith("/.well-known/acme-challenge/") or body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def tls_alpn_certificate(
    name: x509.GeneralName, key_authz: str, *, critical: bool = True
) -> tuple[bytes, bytes]:
    """A self-signed RFC 8737 §3 certificate: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authz.encode()).digest()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([name]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"), b"\x04\x20" + digest
            ),
            critical=critical,
        )
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class TlsAlpnResponder:
    """A tls-alpn-01 responder (RFC 8737 §3) on 127.0.0.1: it completes handshakes that
    offer ALPN `alpn`, presenting the certificate in `certificates` for the SNI name the
    client sent (a handshake for any other name fails). `server_names` records the SNI of
    every handshake."""

    def __init__(self, directory: Path, alpn: str = "acme-tls/1") -> None:
        self.certificates: dict[str, tuple[bytes, bytes]] = {}
        self.server_names: list[str | None] = []
        self._directory = directory
        self._alpn = alpn
        directory.mkdir(parents=True, exist_ok=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols([alpn])
        context.sni_callback = self._select
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _select(self, sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        self.server_names.append(name)
        if name is None or name not in self.certificates:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        cert_pem, key_pem = self.certificates[name]
        cert_file, key_file = self._directory / f"{name}.pem", self._directory / f"{name}.key"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        context.set_alpn_protocols([self._alpn])
        sock.context = context
        return None

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            # Handshake only, as a tls-alpn-01 responder does.
            try:
                with self._context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        # shutdown() wakes the accept() the serving thread is blocked in; close() alone does not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """Signs ACME requests with josepy, as the `acme` client library does."""

    def __init__(self, key: jose.JWK | None = None, alg: jose.JWASignature = jose.ES256) -> None:
        self.key = key or jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        self.alg = alg
        self.kid: str | None = None

    def thumbprint(self) -> str:
        return b64(self.key.thumbprint())

    def sign(
        self,
        url: str,
        payload: dict[str, Any] | None,
        nonce: str,
        *,
        use_jwk: bool = False,
    ) -> bytes:
        body = b"" if payload is None else json.dumps(payload).encode()
        kid = None if use_jwk or self.kid is None else self.kid
        signed = acme_jws.JWS.sign(
            body, self.key, self.alg, jose.b64decode(nonce), url=url, kid=kid
        )
        return signed.json_dumps().encode()


def forge(header: dict[str, Any], payload: bytes, signature: bytes) -> bytes:
    """A flattened JWS with an arbitrary protected header and signature."""
    protected = b64(json.dumps(header).encode())
    return json.dumps(
        {"protected": protected, "payload": b64(payload), "signature": b64(signature)}
    ).encode()
