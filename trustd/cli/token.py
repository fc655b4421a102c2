"""`trustd token`: join tokens, the one-time secrets a node attests with (the spelling of
`spire-server token generate`; admin API tokens are `trustd admin token`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustd.cli.context import connection
from trustd.cli.output import command_group, emit, progress

app = command_group(
    help="Join tokens for node attestation (admin API tokens: `trustd admin token`).",
    no_args_is_help=True,
)
SelectorOpt = Annotated[list[str] | None, typer.Option("--selector", help="type:value, repeatable")]


@app.command("create")
def create(
    ttl: Annotated[int | None, typer.Option(help="Seconds until it expires [3600]")] = None,
    selector: SelectorOpt = None,
) -> None:
    """Create a single-use join token and print the command to run on the node."""
    shared = connection()
    body: dict[str, Any] = {"selectors": selector or []}
    if ttl is not None:
        body["ttl"] = ttl
    created = shared.json("POST", "/v1/join-tokens", json=body)
    progress(
        f"join token {created['id']} expires {created['expires_at']}; "
        f"the node will be {created['spiffe_id']}"
    )
    emit(
        shared.output,
        created,
        lambda: typer.echo(
            f"trustd agent --server {created['server_url']} --join-token {created['token']} "
            f"--ca-sha256 {created['ca_sha256'][0]} "
            "--socket /run/trustd/agent.sock --data-dir /var/lib/trustd-agent"
        ),
    )
