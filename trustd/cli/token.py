"""`trustd token`: join tokens, the one-time secrets a node attests with (the spelling of
`spire-server token generate`; admin API tokens are `trustd admin token`)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from trustd.cli.agent import DEFAULT_DATA_DIR, DEFAULT_SOCKET
from trustd.cli.context import Connection, connection
from trustd.cli.output import command_group, emit, human_time, invoked_as, progress

app = command_group(
    help="Join tokens for node attestation (admin API tokens: `trustd admin token`).",
    no_args_is_help=True,
)
SelectorOpt = Annotated[
    list[str] | None,
    typer.Option("--selector", metavar="TYPE:VALUE", help="type:value, repeatable"),
]


def agent_paths(shared: Connection) -> tuple[Path, Path]:
    """Where the agent started by the printed command keeps its socket and its state: the
    agent's own defaults as root; otherwise places this user can write, so the command
    runs as pasted from a checkout. With the server on this host (its admin socket), both
    go in the server's data directory (`var/agent.sock`, `var/agent`, as README's
    walk-through has them, and `make clean` removes them); else the state goes under
    $XDG_STATE_HOME and the socket under $XDG_RUNTIME_DIR (XDG Base Directory: the user's
    state and runtime files), or in the state directory."""
    if os.geteuid() == 0:
        return DEFAULT_SOCKET, DEFAULT_DATA_DIR
    if shared.server is None:
        return shared.data_dir / "agent.sock", shared.data_dir / "agent"
    home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    state = Path(home) / "trustd-agent"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.access(runtime, os.W_OK | os.X_OK):
        return Path(runtime) / "trustd" / "agent.sock", state
    return state / "agent.sock", state


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
        f"join token {created['id']} expires {human_time(created['expires_at'])}; "
        f"the node will be {created['spiffe_id']}"
    )
    socket, data_dir = agent_paths(shared)
    command = [
        "agent",
        "--server",
        created["server_url"],
        "--join-token",
        created["token"],
        "--ca-sha256",
        created["ca_sha256"][0],
        "--socket",
        str(socket),
        "--data-dir",
        str(data_dir),
    ]
    emit(
        shared.output,
        created,
        lambda: typer.echo(" ".join([invoked_as(), *map(shlex.quote, command)])),
    )
