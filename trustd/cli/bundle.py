"""`trustd bundle`: the trust bundle."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from trustd.cli.context import connection
from trustd.cli.output import command_group, print_json

app = command_group(help="The trust bundle.", no_args_is_help=True)


class BundleFormat(StrEnum):
    PEM = "pem"
    JWKS = "jwks"


@app.command("show")
def show(
    format: Annotated[
        BundleFormat, typer.Option(help="pem, or jwks (SPIFFE bundle)")
    ] = BundleFormat.PEM,
) -> None:
    """Print the trust bundle (the format is the bundle's, whatever --output says)."""
    response = connection().request("GET", "/v1/bundle", params={"format": format.value})
    if format is BundleFormat.JWKS:
        print_json(response.json())
    else:
        typer.echo(response.text, nl=False)
