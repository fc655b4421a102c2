"""`trustd bundle`: the trust bundle."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from trustd.cli.context import connection
from trustd.cli.output import Output, command_group, print_document

app = command_group(help="The trust bundle.", no_args_is_help=True)


class BundleFormat(StrEnum):
    PEM = "pem"
    JWKS = "jwks"


@app.command("show")
def show(
    format: Annotated[
        BundleFormat | None,
        typer.Option(
            help="pem, or jwks (the SPIFFE bundle); default: pem, or jwks with --output json|yaml",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print the trust bundle: PEM roots for files and TLS clients, or the SPIFFE bundle
    (JWKS) as JSON or YAML."""
    shared = connection()
    if format is None:
        format = BundleFormat.PEM if shared.output is Output.TABLE else BundleFormat.JWKS
    response = shared.request("GET", "/v1/bundle", params={"format": format.value})
    if format is BundleFormat.JWKS:
        print_document(shared.output, response.json())
    else:
        typer.echo(response.text, nl=False)
