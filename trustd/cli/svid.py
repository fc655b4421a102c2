"""`trustd svid`: issue X509-SVIDs and JWT-SVIDs as an administrator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives import serialization

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from trustd.cli.context import connection
from trustd.cli.output import command_group, emit, human_time, progress

app = command_group(help="Issue SVIDs as an administrator.", no_args_is_help=True)


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
