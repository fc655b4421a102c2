"""`trustd node`: attested nodes (list, show, evict, ban, their enforcement scope)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustd.cli.context import Connection, connection
from trustd.cli.output import columns, command_group, fail, invoked_as, listing, record
from trustd.domain.nodes import Unmanaged

app = command_group(help="Attested nodes.", no_args_is_help=True)

NODE_ARGUMENT = typer.Argument(
    help="The node's SPIFFE ID, or its agent id as `node list` shows it", show_default=False
)
NODE_COLUMNS = columns(
    ("spiffe id", "spiffe_id"),
    ("agent id", "agent_id"),
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
    listing(
        shared.output,
        shared.json("GET", "/v1/nodes"),
        NODE_COLUMNS,
        f"no nodes attested yet; create a join token with: {invoked_as()} token create",
    )


def _find(shared: Connection, ref: str) -> dict[str, Any]:
    """The node *ref* names: a SPIFFE ID, or an agent id unique among the nodes."""
    if ref.startswith("spiffe://"):
        nodes = shared.json("GET", "/v1/nodes", params={"spiffe_id": ref})
    else:
        nodes = [n for n in shared.json("GET", "/v1/nodes") if n["agent_id"] == ref]
    if not nodes:
        fail(f"no node {ref}: `trustd node list` shows the SPIFFE IDs and agent ids")
    if len(nodes) > 1:
        fail(f"agent id {ref} names {len(nodes)} nodes: give the SPIFFE ID")
    node: dict[str, Any] = nodes[0]
    return node


@app.command("show")
def show(node: Annotated[str, NODE_ARGUMENT]) -> None:
    """Show one node."""
    shared = connection()
    record(shared.output, _find(shared, node))


@app.command("evict")
def evict(node: Annotated[str, NODE_ARGUMENT]) -> None:
    """Revoke the node's credentials; it must attest again."""
    shared = connection()
    spiffe_id = _find(shared, node)["spiffe_id"]
    shared.request("POST", "/v1/nodes/evict", json={"spiffe_id": spiffe_id})
    typer.echo(f"evicted {spiffe_id}")


@app.command("ban")
def ban(node: Annotated[str, NODE_ARGUMENT]) -> None:
    """Revoke the node's credentials and refuse it from attesting again."""
    shared = connection()
    spiffe_id = _find(shared, node)["spiffe_id"]
    shared.request("POST", "/v1/nodes/ban", json={"spiffe_id": spiffe_id})
    typer.echo(f"banned {spiffe_id}")


@app.command("scope")
def scope(
    node: Annotated[str, NODE_ARGUMENT],
    unmanaged: Annotated[
        Unmanaged,
        typer.Option(help="What packets to destinations in no entry get"),
    ] = Unmanaged.ALLOW,
    always_allow: Annotated[
        list[str] | None,
        typer.Option(
            "--always-allow",
            help="An IPv4 or IPv6 prefix always reached (DNS, the node, trustd); repeat it",
        ),
    ] = None,
) -> None:
    """Set the node's enforcement scope. A quarantined identity reaches only the
    always-allowed prefixes (and the trustd server), whatever --unmanaged says."""
    shared = connection()
    spiffe_id = _find(shared, node)["spiffe_id"]
    body = {
        "spiffe_id": spiffe_id,
        "unmanaged": unmanaged.value,
        "always_allowed": list(always_allow or []),
    }
    record(shared.output, shared.json("POST", "/v1/nodes/scope", json=body))
