"""A workload, for the Workload API tests: py-spiffe's WorkloadApiClient in its own process.

Started as root, it drops to ``--uid``/``--gid`` before it connects, so the agent sees those
credentials through SO_PEERCRED (the interpreter may live where other users cannot reach,
such as /root, so it cannot simply be exec'd as them). Prints one JSON document per result;
on a Workload API error prints ``{"error": ...}`` and exits 3.

    workload_client.py --socket PATH [--uid N --gid N] COMMAND [ARGS]

Commands: x509, x509-pem, x509-bundles, jwt AUDIENCE [SPIFFE_ID], jwt-bundles, validate
TOKEN AUDIENCE, stream COUNT, mtls-server [PEER_TD], mtls-client PORT [PEER_TD] (PEER_TD:
the peer's trust domain, whose bundle verifies it; default the workload's own).
"""

from __future__ import annotations

import argparse

# Loaded now, while still root: after the uid drop the interpreter's own library may be
# out of reach, and socket.create_connection imports this codec lazily.
import encodings.idna  # noqa: F401
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import SpiffeId, TrustDomain, WorkloadApiClient
from spiffe.errors import PySpiffeError
from spiffe.workloadapi.x509_context import X509Context


def emit(doc: object) -> None:
    print(json.dumps(doc), flush=True)


def spiffe_id_of(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    [uri] = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uri


def tls_context(ctx: X509Context, server: bool, peer_domain: TrustDomain) -> ssl.SSLContext:
    """Mutual TLS from the SVID and bundle: chain to the roots of the peer's trust domain
    only (its federated bundle for a foreign peer), and (below) the peer's SPIFFE ID read
    from its URI SAN, which must be of that domain; host names play no part (X509-SVID §5,
    Trust Domain and Bundle §3)."""
    svid = ctx.default_svid
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(peer_domain)
    if bundle is None:
        raise SystemExit(f"no bundle of trust domain {peer_domain} from the agent")
    work = Path(tempfile.mkdtemp())
    chain = work / "chain.pem"
    key = work / "key.pem"
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain))
    key.write_bytes(
        svid.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(chain, key)
    roots = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle.x509_authorities)
    context.load_verify_locations(cadata=roots.decode())
    for path in (chain, key):
        path.unlink()
    work.rmdir()
    return context


def peer_of(tls: ssl.SSLSocket, domain: TrustDomain) -> str:
    peer = spiffe_id_of(tls.getpeercert(binary_form=True) or b"")
    if SpiffeId(peer).trust_domain != domain:
        raise SystemExit(f"peer {peer} is not of trust domain {domain}")
    return peer


def peer_domain(ctx: X509Context, args: list[str]) -> TrustDomain:
    return TrustDomain(args[0]) if args else ctx.default_svid.spiffe_id.trust_domain


def mtls_server(client: WorkloadApiClient, args: list[str]) -> None:
    ctx = client.fetch_x509_context()
    domain = peer_domain(ctx, args)
    context = tls_context(ctx, True, domain)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        emit({"port": listener.getsockname()[1], "me": str(ctx.default_svid.spiffe_id)})
        listener.settimeout(30)
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            peer = peer_of(tls, domain)
            tls.sendall(str(ctx.default_svid.spiffe_id).encode() + b"\n")
            emit({"peer": peer, "said": tls.recv(4096).decode().strip()})


def mtls_client(client: WorkloadApiClient, port: int, args: list[str]) -> None:
    ctx = client.fetch_x509_context()
    domain = peer_domain(ctx, args)
    context = tls_context(ctx, False, domain)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw) as tls,
    ):
        peer = peer_of(tls, domain)
        said = tls.recv(4096).decode().strip()
        tls.sendall(str(ctx.default_svid.spiffe_id).encode() + b"\n")
        emit({"peer": peer, "said": said})


def stream(client: WorkloadApiClient, count: int) -> None:
    done = threading.Event()
    seen: list[object] = []

    def on_update(ctx: X509Context) -> None:
        seen.append(1)
        emit(
            {
                "update": len(seen),
                "svids": [
                    {"spiffe_id": str(s.spiffe_id), "serial": str(s.leaf.serial_number)}
                    for s in ctx.x509_svids
                ],
            }
        )
        if len(seen) >= count:
            done.set()

    def on_error(exc: Exception) -> None:
        emit({"error": type(exc).__name__, "message": str(exc)})
        done.set()

    handle = client.stream_x509_contexts(on_update, on_error, retry_connect=False)
    done.wait(60)
    handle.cancel()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("command")
    parser.add_argument("args", nargs="*")
    opts = parser.parse_args()
    if opts.gid is not None:
        os.setgroups([])
        os.setgid(opts.gid)
    if opts.uid is not None:
        os.setuid(opts.uid)
    client = WorkloadApiClient(socket_path=f"unix://{opts.socket}", default_timeout=20)
    try:
        if opts.command == "x509":
            ctx = client.fetch_x509_context()
            emit(
                {
                    "svids": [
                        {
                            "spiffe_id": str(s.spiffe_id),
                            "chain": len(s.cert_chain),
                            "serial": str(s.leaf.serial_number),
                        }
                        for s in ctx.x509_svids
                    ],
                    "bundles": sorted(str(b.trust_domain) for b in ctx.x509_bundle_set.bundles),
                }
            )
        elif opts.command == "x509-pem":
            # The default SVID's chain and the trust domain's X.509 bundle as py-spiffe
            # parsed them, for the caller to verify; the key's type, never the key.
            ctx = client.fetch_x509_context()
            svid = ctx.default_svid
            bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
            assert bundle is not None
            pem = serialization.Encoding.PEM
            emit(
                {
                    "spiffe_id": str(svid.spiffe_id),
                    "key": type(svid.private_key).__name__,
                    "chain": [c.public_bytes(pem).decode() for c in svid.cert_chain],
                    "bundle": [c.public_bytes(pem).decode() for c in bundle.x509_authorities],
                }
            )
        elif opts.command == "x509-bundles":
            bundles = client.fetch_x509_bundles()
            emit({str(b.trust_domain): len(b.x509_authorities) for b in bundles.bundles})
        elif opts.command == "jwt":
            subject = SpiffeId(opts.args[1]) if len(opts.args) > 1 else None
            svid = client.fetch_jwt_svid(audience={opts.args[0]}, subject=subject)
            emit({"spiffe_id": str(svid.spiffe_id), "token": svid.token})
        elif opts.command == "jwt-bundles":
            jwt_bundles = client.fetch_jwt_bundles()
            emit({str(b.trust_domain): sorted(b.jwt_authorities) for b in jwt_bundles.bundles})
        elif opts.command == "validate":
            svid = client.validate_jwt_svid(opts.args[0], opts.args[1])
            emit({"spiffe_id": str(svid.spiffe_id), "audience": sorted(svid.audience)})
        elif opts.command == "stream":
            stream(client, int(opts.args[0]))
        elif opts.command == "mtls-server":
            mtls_server(client, opts.args)
        elif opts.command == "mtls-client":
            mtls_client(client, int(opts.args[0]), opts.args[1:])
        else:
            parser.error(f"unknown command {opts.command}")
    except PySpiffeError as exc:
        emit({"error": type(exc).__name__, "message": str(exc)})
        return 3
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
