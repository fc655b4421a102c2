"""`trustd node`: attested nodes (list, show, evict, ban)."""

from __future__ import annotations

from typing import Annotated

import typer

from trustd.cli.context import connection
from trustd.cli.output import columns, fail, listing, record

app = typer.Typer(help="Attested nodes.", no_args_is_help=True)

NODE_COLUMNS = columns(
    ("spiffe id", "spiffe_id"),
    ("status", "status"),
    ("attestor", "attestor"),
    ("selectors", "selectors"),
    ("last seen", "last_seen"),
    ("revision", "applied_revision"),
)


@app.command("list")
def list_() -> None:
    """List attested nodes."""
    shared = connection()
    listing(shared.output, shared.json("GET", "/v1/nodes"), NODE_COLUMNS)


@app.command("show")
def show(spiffe_id: Annotated[str, typer.Argument()]) -> None:
    """Show one node."""
    shared = connection()
    nodes = shared.json("GET", "/v1/nodes", params={"spiffe_id": spiffe_id})
    if not nodes:
        fail(f"no node {spiffe_id}")
    record(shared.output, nodes[0])


@app.command("evict")
def evict(spiffe_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke the node's credentials; it must attest again."""
    connection().request("POST", "/v1/nodes/evict", json={"spiffe_id": spiffe_id})
    typer.echo(f"evicted {spiffe_id}")


@app.command("ban")
def ban(spiffe_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke the node's credentials and refuse it from attesting again."""
    connection().request("POST", "/v1/nodes/ban", json={"spiffe_id": spiffe_id})
    typer.echo(f"banned {spiffe_id}")
