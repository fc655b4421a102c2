"""`trustd svid`: issue X509-SVIDs, JWT-SVIDs and (experimental) WIT-SVIDs as an
administrator, and check WIT-SVIDs against a bundle."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives import serialization

from pki.bundle import TrustBundle
from pki.clock import SystemClock
from pki.csr import create_csr
from pki.errors import TrustdError
from pki.keys import (
    KeyType,
    PrivateKey,
    PublicKey,
    allowed_public_key,
    generate_private_key,
    public_key_from_pem,
)
from pki.spiffe_id import TrustDomain
from pki.wit_svid import parse_workload_jwk, validate_wit_svid, validate_wpt, workload_jwk
from trustd.cli.context import connection
from trustd.cli.output import command_group, emit, fail, human_time, progress

app = command_group(help="Issue SVIDs as an administrator.", no_args_is_help=True)
wit_app = command_group(
    help="WIT-SVIDs (experimental; the server needs TRUSTD_WIT_SVID=true).",
    no_args_is_help=True,
)
app.add_typer(wit_app, name="wit")


@app.command("x509")
def x509(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://<td>/<path>")],
    out: Annotated[Path, typer.Option(help="Directory for svid.pem, key.pem, bundle.pem")],
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds")] = None,
    dns_name: Annotated[
        list[str] | None, typer.Option("--dns-name", metavar="NAME", help="Repeatable")
    ] = None,
    key_type: Annotated[KeyType, typer.Option(help="Key to generate here")] = KeyType.EC_P256,
) -> None:
    """Generate a key here, have trustd sign it as an X509-SVID, write the files.

    The private key never leaves this machine: only a CSR is sent.
    """
    shared = connection()
    key = generate_private_key(key_type)
    body: dict[str, Any] = {
        "spiffe_id": spiffe_id,
        "csr": create_csr(key),
        "dns_names": dns_name or [],
        "key_type": str(key_type),
    }
    if ttl is not None:
        body["ttl"] = ttl
    issued = shared.json("POST", "/v1/svid/x509", json=body)
    out.mkdir(parents=True, exist_ok=True)
    (out / "svid.pem").write_text(issued["certificate"] + "".join(issued["intermediates"]))
    fd = os.open(out / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    (out / "bundle.pem").write_text(issued["bundle"])
    until = human_time(issued["not_after"])
    emit(
        shared.output,
        issued,
        lambda: typer.echo(
            f"{issued['spiffe_id']} serial {issued['serial']} valid until {until}\n"
            f"wrote {out / 'svid.pem'}, {out / 'key.pem'}, {out / 'bundle.pem'}"
        ),
    )


@app.command("jwt")
def jwt(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://<td>/<path>")],
    audience: Annotated[
        list[str], typer.Option("--audience", metavar="AUDIENCE", help="Repeatable; required")
    ],
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds")] = None,
) -> None:
    """Mint a JWT-SVID and print it."""
    shared = connection()
    body: dict[str, Any] = {"spiffe_id": spiffe_id, "audience": audience}
    if ttl is not None:
        body["ttl"] = ttl
    minted = shared.json("POST", "/v1/svid/jwt", json=body)
    expires = human_time(minted["expires_at"])
    progress(f"{minted['spiffe_id']} for {', '.join(minted['audience'])}, expires {expires}")
    emit(shared.output, minted, lambda: typer.echo(minted["token"]))


def _write_private(path: Path, key: PrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _read_public_key(path: Path) -> PublicKey:
    """A public key from a PEM (SubjectPublicKeyInfo, or the private key `mint --out`
    wrote) or public JWK file."""
    try:
        text = path.read_text()
        if text.lstrip().startswith("{"):
            return parse_workload_jwk(json.loads(text))[0]
        if "PRIVATE KEY-----" in text:
            private = serialization.load_pem_private_key(text.encode(), password=None)
            return allowed_public_key(private.public_key())
        return public_key_from_pem(text)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except (TrustdError, ValueError, TypeError) as exc:
        fail(f"{path}: not a usable key (PEM or JWK): {exc}")


@wit_app.command("mint")
def wit_mint(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://<td>/<path>")],
    public_key: Annotated[
        Path | None,
        typer.Option(help="The workload's public key (PEM or JWK) to bind; else --out"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Generate the key here; write wit.jwt and key.pem (0600) there"),
    ] = None,
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds")] = None,
) -> None:
    """Mint a WIT-SVID binding a workload key to a SPIFFE ID, and print it.

    With --out the key is made here and never leaves this machine: only its public JWK is
    sent. A WIT-SVID is no bearer token: present it with a proof of the key (WIT-SVID §5).
    """
    if (public_key is None) == (out is None):
        fail("give one of --public-key or --out")
    shared = connection()
    key: PrivateKey | None = None
    if public_key is not None:
        bound = _read_public_key(public_key)
    else:
        key = generate_private_key(KeyType.EC_P256)
        bound = key.public_key()
    try:
        jwk = workload_jwk(bound)
    except TrustdError as exc:
        fail(f"the key cannot be bound to a WIT-SVID: {exc}")
    body: dict[str, Any] = {"spiffe_id": spiffe_id, "jwk": jwk}
    if ttl is not None:
        body["ttl"] = ttl
    minted = shared.json("POST", "/v1/svid/wit", json=body)
    if out is not None and key is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "wit.jwt").write_text(minted["token"] + "\n")
        _write_private(out / "key.pem", key)
        progress(f"wrote {out / 'wit.jwt'}, {out / 'key.pem'}")
    expires = human_time(minted["expires_at"])
    progress(f"{minted['spiffe_id']} (kid {minted['kid']}), expires {expires}")
    emit(shared.output, minted, lambda: typer.echo(minted["token"]))


@wit_app.command("verify")
def wit_verify(
    wit: Annotated[str, typer.Argument(metavar="TOKEN", help="The WIT-SVID; - reads stdin")],
    bundle: Annotated[
        Path, typer.Option(help="The trust domain's SPIFFE bundle (JWKS), e.g. GET /v1/bundle")
    ],
    trust_domain: Annotated[str, typer.Option(help="The bundle's trust domain")],
    key: Annotated[
        Path | None,
        typer.Option(help="The key the presenter proved it holds (PEM or JWK): must be cnf's"),
    ] = None,
    proof: Annotated[
        str | None, typer.Option(help="The Workload Proof Token presented with it (wpt+jwt)")
    ] = None,
    audience: Annotated[
        str | None, typer.Option(help="With --proof: the request's target URI")
    ] = None,
) -> None:
    """Check a WIT-SVID against the bundle's wit-svid keys, offline; exit 1 if refused.

    Without --key or --proof only the token is checked: a relying party must still check
    a proof of possession of the key in `cnf` before it accepts the token (WIT-SVID §4).
    """
    if (proof is None) != (audience is None):
        fail("--proof and --audience go together")
    shared = connection()
    if wit == "-":
        wit = sys.stdin.read().strip()
    try:
        domain = TrustDomain.parse(trust_domain)
        keys = TrustBundle.from_jwks(bundle.read_bytes(), domain).wit_authorities
        if not keys:
            # WIT-SVID §6.2: no wit-svid entry, no WIT-SVIDs in that trust domain.
            fail(f"{bundle} has no wit-svid key: {domain.name} issues no WIT-SVIDs")
        presented = _read_public_key(key) if key is not None else None
        svid = validate_wit_svid(wit, keys, SystemClock(), domain, presented_key=presented)
        if proof is not None and audience is not None:
            # draft-ietf-wimse-wpt §3: the WIT first, then the proof of its cnf key.
            validate_wpt(proof, svid, audience, SystemClock())
    except OSError as exc:
        fail(f"cannot read {bundle}: {exc.strerror}")
    except TrustdError as exc:
        fail(f"refused: {exc}")
    expires = svid.expiry.isoformat()
    document = {
        "spiffe_id": str(svid.spiffe_id),
        "kid": svid.kid,
        "jti": svid.jti,
        "expires_at": expires,
        "cnf_alg": svid.workload_alg,
        "key_checked": presented is not None,
        "proof_checked": proof is not None,
    }
    emit(
        shared.output,
        document,
        lambda: typer.echo(
            f"valid: {svid.spiffe_id} (kid {svid.kid}), expires {human_time(expires)}"
            + (
                ""
                if presented is not None or proof is not None
                else "; no key or proof given: possession not checked"
            )
        ),
    )
