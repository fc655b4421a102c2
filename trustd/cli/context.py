"""The one connection context every command shares: which server, which credentials,
how to print. Declared once as the top-level options of `trustd` (as `step` and
`spire-server` share their flags), given before or after the command:

    trustd --server https://trustd:8443 --token T entry list
    trustd entry list --server https://trustd:8443 --token T
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from pki.errors import TrustdError
from trustd.cli.output import Group, Output, fail
from trustd.client import AdminClient

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server", envvar="TRUSTD_SERVER", help="Server URL; default: this host's admin socket"
    ),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="TRUSTD_ADMIN_TOKEN", help="Admin token")
]
CaBundleOpt = Annotated[
    Path | None,
    typer.Option("--ca-bundle", envvar="TRUSTD_CA_BUNDLE", help="PEM roots to verify --server"),
]
DataDirOpt = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="TRUSTD_DATA_DIR",
        help="Data directory: where the admin socket is; `serve` and `init` keep their state there",
    ),
]
OutputOpt = Annotated[
    Output,
    typer.Option(
        "--output", "-o", envvar="TRUSTD_OUTPUT", help="table for people; json or yaml for scripts"
    ),
]

# The options above, each taking a value; they may also follow the command's name.
SHARED_OPTIONS = frozenset({"--server", "--token", "--ca-bundle", "--data-dir", "--output", "-o"})
# Commands whose own options of the same names mean something else (the agent's server
# URL and state directory).
OWN_OPTIONS = frozenset({"agent"})


@dataclass(frozen=True)
class Connection:
    """How to reach the admin API and how to print what it answers."""

    server: str | None
    token: str | None
    ca_bundle: Path | None
    data_dir: Path
    output: Output
    # Whether --data-dir (or TRUSTD_DATA_DIR) was given rather than defaulted.
    data_dir_given: bool = False

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One admin request; any failure ends the command with the server's explanation."""
        try:
            with AdminClient(
                self.server, self.token, self.ca_bundle, self.data_dir / "admin.sock"
            ) as client:
                return client.request(method, path, **kwargs)
        except TrustdError as exc:
            fail(str(exc))

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON document an admin request answers with."""
        return self.request(method, path, **kwargs).json()


_current: ContextVar[Connection] = ContextVar("trustd_cli_connection")


def connection() -> Connection:
    """The connection of the running command (set by the top-level callback, which runs
    before every command)."""
    return _current.get()


def set_connection(
    ctx: typer.Context,
    server: str | None,
    token: str | None,
    ca_bundle: Path | None,
    data_dir: Path,
    output: Output,
) -> None:
    """Make the shared options the running command's connection."""
    source = ctx.get_parameter_source("data_dir")
    given = source is not None and source.name != "DEFAULT"
    _current.set(Connection(server, token, ca_bundle, data_dir, output, given))


def hoist_shared_options(args: list[str], lenient: bool = False) -> list[str]:
    """Move the shared options that follow the command's name in front of it, so
    `trustd entry list --data-dir X` means `trustd --data-dir X entry list`. With
    `lenient` (a line the shell is completing), one that ends the line without its value
    stays where it is.

    Raises:
        ValueError: a shared option ends the line without its value.
    """
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        takes_value = args[i] in SHARED_OPTIONS
        i += 2 if takes_value else 1
    if i >= len(args) or args[i] in OWN_OPTIONS:
        return args
    hoisted: list[str] = []
    kept: list[str] = []
    rest = args[i + 1 :]
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg == "--":
            kept += rest[j:]
            break
        name = arg.split("=", 1)[0]
        if name in SHARED_OPTIONS and "=" in arg:
            hoisted.append(arg)
            j += 1
        elif name in SHARED_OPTIONS:
            if j + 1 == len(rest):
                if lenient:
                    kept.append(arg)
                    break
                raise ValueError(f"{arg} needs a value")
            hoisted += rest[j : j + 2]
            j += 2
        else:
            kept.append(arg)
            j += 1
    return [*args[:i], *hoisted, args[i], *kept]


class SharedOptionsGroup(Group):
    """The top-level group: accepts the shared options after a command's name too."""

    # `Any`: the context type is the one Typer's own click copy defines.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            hoisted = hoist_shared_options(list(args), lenient=ctx.resilient_parsing)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), ctx=ctx) from None
        return super().parse_args(ctx, hoisted)

    def options_after(self, ctx: Any, command_path: str) -> list[Any]:
        """The shared options, for the shell to complete after a command's name (not
        after the commands whose own options have those names)."""
        words = command_path.split()
        if len(words) > 1 and words[1] in OWN_OPTIONS:
            return []
        return [p for p in self.get_params(ctx) if set(p.opts) & SHARED_OPTIONS]
