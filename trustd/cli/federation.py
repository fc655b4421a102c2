"""`trustd federation`: relationships with other trust domains (SPIFFE Federation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from trustd.cli.context import connection
from trustd.cli.output import columns, command_group, fail, invoked_as, listing, record

app = command_group(
    help="Federation with other trust domains: whose bundles this deployment fetches.",
    no_args_is_help=True,
)

TRUST_DOMAIN = typer.Argument(help="The federated trust domain", show_default=False)
FEDERATION_COLUMNS = columns(
    ("trust domain", "trust_domain"),
    ("profile", "profile"),
    ("endpoint", "bundle_endpoint_url"),
    ("sequence", "bundle_sequence"),
    ("last success", lambda f: f["status"]["last_success_at"]),
    ("last error", lambda f: f["status"]["last_error"]),
    ("next refresh", lambda f: f["status"]["next_refresh_at"]),
)
FEDERATION_FIELDS = (
    "trust_domain",
    "bundle_endpoint_url",
    "profile",
    "endpoint_spiffe_id",
    "bundle_sequence",
    "bundle_refresh_hint",
    "x509_authorities",
    "jwt_authorities",
    "revision",
    "created_by",
    "created_at",
    "last_success_at",
    "last_error",
    "last_error_at",
    "failures",
    "next_refresh_at",
)


def _flat(federation: dict[str, Any]) -> dict[str, Any]:
    """The relationship with its status fields alongside, for `field  value` lines."""
    return {**federation, **federation["status"]}


@app.command("create")
def create(
    trust_domain: Annotated[str, typer.Option("--trust-domain", help="e.g. other.org")],
    bundle_endpoint: Annotated[
        str, typer.Option("--bundle-endpoint", help="https URL of its bundle endpoint")
    ],
    profile: Annotated[
        str, typer.Option("--profile", help="https_spiffe or https_web")
    ] = "https_spiffe",
    endpoint_spiffe_id: Annotated[
        str | None,
        typer.Option("--endpoint-spiffe-id", help="The endpoint's SPIFFE ID (https_spiffe)"),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="Bootstrap bundle (SPIFFE JWKS or PEM): authenticates the first fetch",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Federate with a trust domain."""
    shared = connection()
    body: dict[str, Any] = {
        "trust_domain": trust_domain,
        "bundle_endpoint_url": bundle_endpoint,
        "profile": profile,
    }
    if endpoint_spiffe_id:
        body["endpoint_spiffe_id"] = endpoint_spiffe_id
    if bundle is not None:
        try:
            body["bundle"] = bundle.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--bundle {bundle}: {exc}")
    made = shared.json("POST", "/v1/admin/federations", json=body)
    record(shared.output, _flat(made), FEDERATION_FIELDS)


@app.command("list")
def list_() -> None:
    """List the federation relationships and how their last fetches went."""
    shared = connection()
    rows = shared.json("GET", "/v1/admin/federations")
    listing(
        shared.output,
        rows,
        FEDERATION_COLUMNS,
        f"no federation; create one with: {invoked_as()} federation create --trust-domain TD "
        "--bundle-endpoint URL --profile https_spiffe --endpoint-spiffe-id ID --bundle FILE",
    )


@app.command("show")
def show(trust_domain: Annotated[str, TRUST_DOMAIN]) -> None:
    """One relationship, with its status."""
    shared = connection()
    found = shared.json("GET", f"/v1/admin/federations/{trust_domain}")
    record(shared.output, _flat(found), FEDERATION_FIELDS)


@app.command("refresh")
def refresh(trust_domain: Annotated[str, TRUST_DOMAIN]) -> None:
    """Fetch the trust domain's bundle now."""
    shared = connection()
    found = shared.json("POST", f"/v1/admin/federations/{trust_domain}/refresh")
    record(shared.output, _flat(found), FEDERATION_FIELDS)


@app.command("delete")
def delete(trust_domain: Annotated[str, TRUST_DOMAIN]) -> None:
    """End the relationship: agents stop serving its bundle."""
    shared = connection()
    gone = shared.json("DELETE", f"/v1/admin/federations/{trust_domain}")
    record(shared.output, _flat(gone), FEDERATION_FIELDS)
