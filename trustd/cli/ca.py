"""`trustd ca`: the certificate authority and its key rotation (prepare, activate, taint,
revoke, re-issue)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pki.keys import CLASSICAL_CHAIN
from pki.keys.backends import BackendName
from pki.revocation import RevocationReason
from pki.rotation import KeyKind
from trustd.cli.cert import CERTIFICATE_COLUMNS, ReasonOpt
from trustd.cli.context import connection
from trustd.cli.output import (
    columns,
    command_group,
    emit,
    listing,
    print_table,
    progress,
    render_record,
)

app = command_group(help="The certificate authority.", no_args_is_help=True)

KEY_COLUMNS = columns(
    ("kind", "kind"),
    ("kid", "kid"),
    ("status", "status"),
    ("key type", "key_type"),
    ("chain", "chain"),
    ("not before", "not_before"),
    ("not after", "not_after"),
)
# `trustd ca keys`: where each private key lives as well.
LOCATION_COLUMNS = (
    *KEY_COLUMNS,
    *columns(("backend", "key_backend"), ("key", "key_location")),
)
ChainOpt = Annotated[
    str,
    typer.Option(
        "--chain",
        help="The CA chain: classical, or an ML-DSA key type the trust domain keeps "
        "(TRUSTD_ADDITIONAL_CA_KEY_TYPES)",
    ),
]
KindOpt = Annotated[
    KeyKind,
    typer.Option("--kind", help="x509-intermediate, x509-root (cross-signed) or jwt"),
]


def _key_change(what: str, change: dict[str, Any]) -> None:
    progress(f"{what}; bundle sequence is now {change['bundle_sequence']}")
    emit(
        connection().output,
        change,
        lambda: typer.echo(f"{change['kind']} {change['kid']} {change['status']}"),
    )


@app.command("show")
def show() -> None:
    """Show the active authorities, their expiry and the bundle sequence."""
    shared = connection()
    ca = shared.json("GET", "/v1/admin/ca")

    def text() -> None:
        typer.echo(
            render_record(ca, ("trust_domain", "bundle_sequence", "key_backend", "pkcs11_token"))
        )
        typer.echo()
        print_table(ca["authorities"], KEY_COLUMNS)

    emit(shared.output, ca, text)


@app.command("keys")
def keys() -> None:
    """Every CA key, its status and where its private key lives (file: sealed in the
    database; pkcs11: the token object's id and label; upstream), newest first."""
    shared = connection()
    listing(
        shared.output,
        shared.json("GET", "/v1/admin/ca/keys"),
        LOCATION_COLUMNS,
        "no CA keys: the server creates them on its first start (trustd init)",
    )


@app.command("migrate-keys")
def migrate_keys(
    to: Annotated[
        BackendName, typer.Option("--to", help="The backend new keys go to: pkcs11 or file")
    ],
) -> None:
    """Move the CA's keys to another backend by rotation: prepare there the next key of
    every kind held elsewhere. Rotation activates them and retires the old keys; no key is
    ever exported. trustd must already run with TRUSTD_CA_KEY_BACKEND set to the target."""
    shared = connection()
    changes = shared.json("POST", "/v1/admin/ca/migrate-keys", json={"to": to})
    if not changes:
        progress(f"every active key is in the {to} backend already")
    else:
        progress(
            f"prepared in the {to} backend; rotation activates them (or `trustd ca activate "
            "--kind KIND`), and the keys they replace retire once what they signed expires"
        )
    listing(
        shared.output,
        changes,
        columns(("kind", "kind"), ("kid", "kid"), ("status", "status")),
        f"nothing to prepare: every active key is in the {to} backend",
    )


@app.command("prepare")
def prepare(kind: KindOpt = KeyKind.X509_INTERMEDIATE, chain: ChainOpt = CLASSICAL_CHAIN) -> None:
    """Create the next key of a kind and publish it in the trust bundle (it signs nothing
    until `trustd ca activate`)."""
    progress(f"preparing the next {kind} key of the {chain} chain")
    body = {"kind": kind, "chain": chain}
    change = connection().json("POST", "/v1/admin/ca/prepare", json=body)
    _key_change("prepared and published", change)


@app.command("activate")
def activate(
    kind: KindOpt = KeyKind.X509_INTERMEDIATE,
    kid: Annotated[str | None, typer.Option(help="A prepared key; default: the oldest")] = None,
    chain: ChainOpt = CLASSICAL_CHAIN,
) -> None:
    """Make the prepared key sign from now on; the active one becomes old (it stays in the
    bundle until what it signed has expired)."""
    body: dict[str, Any] = {"kind": kind, "chain": chain}
    if kid is not None:
        body["kid"] = kid
    _key_change("activated", connection().json("POST", "/v1/admin/ca/activate", json=body))


@app.command("taint")
def taint(kid: Annotated[str, typer.Argument(help="An old key (see `trustd ca keys`)")]) -> None:
    """Mark an old key as tainted: everything it signed must be re-issued."""
    _key_change("tainted", connection().json("POST", f"/v1/admin/ca/keys/{kid}/taint"))
    progress(f"SVIDs to re-issue: trustd ca reissue {kid}; then: trustd ca revoke {kid}")


@app.command("revoke")
def revoke(
    kid: Annotated[str, typer.Argument(help="A tainted key")],
    reason: ReasonOpt = RevocationReason.KEY_COMPROMISE,
) -> None:
    """Remove a tainted key from the bundle now and revoke everything it signed."""
    path = f"/v1/admin/ca/keys/{kid}/revoke"
    change = connection().json("POST", path, json={"reason": reason.value})
    _key_change("revoked and removed from the bundle", change)


@app.command("reissue")
def reissue(
    kid: Annotated[str, typer.Argument(help="A tainted key")],
    after: Annotated[str | None, typer.Option(help="Last serial of the previous batch")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """The next batch of unexpired certificates a tainted key signed."""
    shared = connection()
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    batch = shared.json("GET", f"/v1/admin/ca/keys/{kid}/reissue", params=params)
    after_serial = f" after serial {after}" if after is not None else ""
    empty = f"no unexpired certificates signed by {kid}{after_serial}: nothing to re-issue"
    listing(shared.output, batch, CERTIFICATE_COLUMNS, empty)
    if len(batch) == limit:
        progress(f"more: trustd ca reissue {kid} --after {batch[-1]['serial']}")
