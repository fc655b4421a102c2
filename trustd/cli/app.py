"""The `trustd` command: the shared connection options, then one command group per
concept (each in its own module)."""

from __future__ import annotations

from pathlib import Path

import typer

from trustd.cli import (
    acme,
    admin,
    agent,
    audit,
    bundle,
    ca,
    cert,
    entry,
    federation,
    flows,
    identity,
    node,
    policy,
    serve,
    svid,
    token,
)
from trustd.cli.completion import use_zsh_script
from trustd.cli.context import (
    CaBundleOpt,
    DataDirOpt,
    OutputOpt,
    ServerOpt,
    SharedOptionsGroup,
    TokenOpt,
    set_connection,
)
from trustd.cli.output import Output, command_group

use_zsh_script()
app = command_group(
    cls=SharedOptionsGroup,
    help="trustd: workload identities, the CA behind them, and who may talk to whom.\n\n"
    "The connection options (--server, --token, --ca-bundle, --data-dir, --output) apply to "
    "every command and may follow its name.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def shared_options(
    ctx: typer.Context,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca_bundle: CaBundleOpt = None,
    data_dir: DataDirOpt = Path("var"),
    output: OutputOpt = Output.TABLE,
) -> None:
    """The connection every command uses: a remote --server with --token, or this host's
    admin socket in --data-dir."""
    set_connection(ctx, server, token, ca_bundle, data_dir, output)


app.command()(serve.serve)
app.command()(serve.init)
app.command()(agent.agent)
app.add_typer(svid.app, name="svid")
app.add_typer(bundle.app, name="bundle")
app.add_typer(ca.app, name="ca")
app.add_typer(cert.app, name="cert")
app.add_typer(token.app, name="token")
app.add_typer(entry.app, name="entry")
app.add_typer(node.app, name="node")
app.add_typer(identity.app, name="identity")
app.add_typer(federation.app, name="federation")
app.add_typer(policy.app, name="policy")
app.add_typer(acme.app, name="acme")
app.add_typer(admin.app, name="admin")
app.add_typer(audit.app, name="audit")
app.command()(flows.flows)


def main() -> None:
    app()
