"""`trustd cert`: issued certificates and their revocation."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pki.revocation import RevocationReason
from trustd.cli.context import connection
from trustd.cli.output import (
    columns,
    command_group,
    emit,
    fail,
    listing,
    matching,
    progress,
    render_record,
)

app = command_group(help="Issued certificates and their revocation.", no_args_is_help=True)

# The choices go in the help, which wraps, not in the metavar, which does not (it would
# run past 80 columns).
ReasonOpt = Annotated[
    RevocationReason,
    typer.Option(
        metavar="REASON",
        help="RFC 5280 §5.3.1 reason: " + ", ".join(r.value for r in RevocationReason),
    ),
]
CERTIFICATE_COLUMNS = columns(
    ("serial", "serial"),
    ("kind", "kind"),
    ("spiffe id", "spiffe_id"),
    ("status", "status"),
    ("issuer", "issuer_kid"),
    ("not after", "not_after"),
)


@app.command("list")
def list_(
    spiffe_id: Annotated[str | None, typer.Option("--spiffe-id")] = None,
    status: Annotated[str | None, typer.Option(help="valid or revoked")] = None,
    after: Annotated[str | None, typer.Option(help="Last serial of the previous page")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """Issued certificates, ordered by serial, a page at a time."""
    shared = connection()
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("spiffe_id", spiffe_id), ("status", status), ("after", after)):
        if value is not None:
            params[name] = value
    page = shared.json("GET", "/v1/admin/certificates", params=params)
    filters = matching({"spiffe_id": spiffe_id, "status": status, "after": after})
    listing(shared.output, page, CERTIFICATE_COLUMNS, f"no issued certificates{filters}")
    if len(page) == limit:
        progress(f"more: trustd cert list --after {page[-1]['serial']}")


@app.command("show")
def show(serial: Annotated[str, typer.Argument(help="Hex serial")]) -> None:
    """One issued certificate, its status and PEM."""
    shared = connection()
    cert = shared.json("GET", f"/v1/admin/certificates/{serial}")

    def text() -> None:
        typer.echo(render_record({k: v for k, v in cert.items() if k != "certificate"}))
        if cert.get("certificate"):
            typer.echo()
            typer.echo(cert["certificate"], nl=False)

    emit(shared.output, cert, text)


@app.command("revoke")
def revoke(
    serial: Annotated[str | None, typer.Option(help="Hex serial of one certificate")] = None,
    spiffe_id: Annotated[
        str | None, typer.Option("--spiffe-id", help="Every unexpired SVID of this ID")
    ] = None,
    reason: ReasonOpt = RevocationReason.UNSPECIFIED,
    quarantine: Annotated[
        bool | None,
        typer.Option(
            "--quarantine/--no-quarantine",
            help="Also quarantine the identity (default: only for keyCompromise)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Revoke a certificate or every SVID of a SPIFFE ID: published in CRLs and OCSP,
    refused by proxies, replaced by the agents. The identity keeps working with its new
    SVID unless it is quarantined (by default with --reason keyCompromise)."""
    if (serial is None) == (spiffe_id is None):
        fail("give exactly one of --serial S and --spiffe-id ID")
    shared = connection()
    body: dict[str, Any] = {"reason": reason.value}
    body.update({"serial": serial} if serial is not None else {"spiffe_id": spiffe_id})
    if quarantine is not None:
        body["quarantine"] = quarantine
    result = shared.json("POST", "/v1/admin/certificates/revoke", json=body)
    progress(
        f"revoked {len(result['serials'])} certificate(s); revocation revision {result['revision']}"
    )
    made = result.get("quarantined")
    if made:
        progress(
            f"{made['spiffe_id']} is now quarantined on every node (until released: "
            f"trustd identity release {made['spiffe_id']}); --no-quarantine revokes only"
        )

    def text() -> None:
        for revoked in result["serials"]:
            typer.echo(revoked)

    emit(shared.output, result, text)
