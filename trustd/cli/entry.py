"""`trustd entry`: registration entries (selectors -> SPIFFE ID)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pki.keys import KeyType
from trustd.cli.context import connection
from trustd.cli.output import (
    columns,
    command_group,
    emit,
    invoked_as,
    matching,
    nothing,
    print_table,
    progress,
    record,
    render_record,
)
from trustd.cli.token import SelectorOpt

KeyTypeOpt = Annotated[
    KeyType | None,
    typer.Option(
        "--key-type",
        help="Key type of the entry's X509-SVIDs (the agent makes the workload key of it); "
        "default: the trust domain's TRUSTD_KEY_TYPE",
    ),
]

app = command_group(help="Registration entries.", no_args_is_help=True)

ENTRY_COLUMNS = columns(
    ("id", "id"),
    ("spiffe id", "spiffe_id"),
    ("parent id", "parent_id"),
    ("selectors", "selectors"),
    ("x509 ttl", "x509_ttl"),
    ("key type", lambda e: e.get("key_type") or "default"),
    ("revision", "revision"),
)
ENTRY_FIELDS = (
    "id",
    "spiffe_id",
    "parent_id",
    "selectors",
    "dns_names",
    "x509_ttl",
    "jwt_ttl",
    "admin",
    "downstream",
    "hint",
    "ip_addresses",
    "federates_with",
    "key_type",
    "revision",
    "created_at",
    "updated_at",
)
ADDRESS_COLUMNS = columns(("address", "address"), ("node", "node_id"), ("reported", "reported_at"))


def _body(
    spiffe_id: str | None,
    parent_id: str | None,
    selector: list[str] | None,
    x509_ttl: int | None,
    jwt_ttl: int | None,
    dns_name: list[str] | None,
    hint: str | None,
    federates_with: list[str] | None = None,
    key_type: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key_type": key_type,
        "federates_with": federates_with,
        "spiffe_id": spiffe_id,
        "parent_id": parent_id,
        "selectors": selector,
        "x509_ttl": x509_ttl,
        "jwt_ttl": jwt_ttl,
        "dns_names": dns_name,
        "hint": hint,
    }
    return {k: v for k, v in body.items() if v is not None}


FederatesWithOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--federates-with",
        metavar="TD",
        help="A federated trust domain whose bundle the workload gets (repeatable)",
    ),
]


@app.command("create")
def create(
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://<td>/<path>")],
    parent_id: Annotated[str, typer.Option("--parent-id", help="Node or node alias ID")],
    selector: SelectorOpt = None,
    x509_ttl: Annotated[int | None, typer.Option("--x509-ttl", help="Seconds")] = None,
    jwt_ttl: Annotated[int | None, typer.Option("--jwt-ttl", help="Seconds")] = None,
    dns_name: Annotated[
        list[str] | None, typer.Option("--dns-name", metavar="NAME", help="Repeatable")
    ] = None,
    hint: Annotated[str | None, typer.Option()] = None,
    federates_with: FederatesWithOpt = None,
    key_type: KeyTypeOpt = None,
) -> None:
    """Create a registration entry."""
    shared = connection()
    body = _body(
        spiffe_id,
        parent_id,
        selector or [],
        x509_ttl,
        jwt_ttl,
        dns_name,
        hint,
        federates_with,
        key_type.value if key_type else None,
    )
    record(shared.output, shared.json("POST", "/v1/entries", json=body), ENTRY_FIELDS)


@app.command("list")
def list_(
    spiffe_id: Annotated[str | None, typer.Option("--spiffe-id")] = None,
    parent_id: Annotated[str | None, typer.Option("--parent-id")] = None,
    selector: Annotated[str | None, typer.Option("--selector")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """List entries, optionally filtered."""
    shared = connection()
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    for key, value in (("spiffe_id", spiffe_id), ("parent_id", parent_id), ("selector", selector)):
        if value:
            params[key] = value
    page = shared.json("GET", "/v1/entries", params=params)
    filters = matching({"spiffe_id": spiffe_id, "parent_id": parent_id, "selector": selector})

    def text() -> None:
        if page["entries"]:
            print_table(page["entries"], ENTRY_COLUMNS)
        elif page["total"]:
            nothing(f"no entries after the first {page['total']}{filters}")
        else:
            nothing(
                f"no registration entries{filters}; create one with: {invoked_as()} entry "
                "create --spiffe-id spiffe://TD/PATH --parent-id NODE_ID --selector TYPE:VALUE"
            )
        shown = offset + len(page["entries"])
        if shown < page["total"]:
            progress(f"{shown} of {page['total']}; more: trustd entry list --offset {shown}")

    emit(shared.output, page, text)


@app.command("show")
def show(entry_id: Annotated[str, typer.Argument()]) -> None:
    """Show one entry, with the workload addresses agents reported for its SPIFFE ID."""
    shared = connection()
    entry = shared.json("GET", f"/v1/entries/{entry_id}")

    def text() -> None:
        typer.echo(render_record(entry, ENTRY_FIELDS))
        if entry.get("reported_addresses"):
            typer.echo()
            print_table(entry["reported_addresses"], ADDRESS_COLUMNS)

    emit(shared.output, entry, text)


@app.command("update")
def update(
    entry_id: Annotated[str, typer.Argument()],
    spiffe_id: Annotated[str | None, typer.Option("--spiffe-id")] = None,
    parent_id: Annotated[str | None, typer.Option("--parent-id")] = None,
    selector: SelectorOpt = None,
    x509_ttl: Annotated[int | None, typer.Option("--x509-ttl")] = None,
    jwt_ttl: Annotated[int | None, typer.Option("--jwt-ttl")] = None,
    dns_name: Annotated[
        list[str] | None, typer.Option("--dns-name", metavar="NAME", help="Repeatable")
    ] = None,
    hint: Annotated[str | None, typer.Option()] = None,
    key_type: Annotated[
        str | None,
        typer.Option(
            "--key-type",
            help=f"{', '.join(KeyType)}, or `default` for the trust domain's TRUSTD_KEY_TYPE",
        ),
    ] = None,
    federates_with: FederatesWithOpt = None,
    no_federation: Annotated[
        bool,
        typer.Option("--no-federates-with", help="Federate with no trust domain any more"),
    ] = False,
) -> None:
    """Change an entry (only the options given; --federates-with replaces the list)."""
    shared = connection()
    if no_federation and federates_with:
        raise typer.BadParameter("--federates-with and --no-federates-with exclude each other")
    body = _body(
        spiffe_id,
        parent_id,
        selector,
        x509_ttl,
        jwt_ttl,
        dns_name,
        hint,
        [] if no_federation else federates_with,
        key_type,
    )
    record(shared.output, shared.json("PATCH", f"/v1/entries/{entry_id}", json=body), ENTRY_FIELDS)


@app.command("delete")
def delete(entry_id: Annotated[str, typer.Argument()]) -> None:
    """Delete an entry."""
    connection().request("DELETE", f"/v1/entries/{entry_id}")
    typer.echo(f"deleted {entry_id}")
