"""How commands print: aligned tables and field lists for people, the server's documents
as JSON or YAML with `--output json|yaml` for scripts; notes and errors on stderr.

Every listing and show command goes through `listing`, `record` or `emit`, so `--output`
means the same everywhere: `table` (the default) renders dates for people and says in
words when there is nothing to show; `json` and `yaml` print the server's document as it
came, raw values included, and an empty listing as an empty list."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer._click import Context
from typer._click.formatting import HelpFormatter as ClickHelpFormatter
from typer.core import TyperCommand, TyperGroup

# -- help text ---------------------------------------------------------------------------


def _wrap(text: str, width: int, indent: str = "", preserve_paragraphs: bool = True) -> str:
    """Click's help wrapping (paragraphs, `\\b` blocks kept as written), but a line breaks
    only at spaces: never inside an option name (`--ext-authz-listen`), a path or a
    default, which click's wrapper cuts at hyphens or mid-word when the column is short."""
    wrapper = textwrap.TextWrapper(
        max(width, 10),
        initial_indent=indent,
        subsequent_indent=indent,
        replace_whitespace=False,
        break_on_hyphens=False,
        break_long_words=False,
    )
    if not preserve_paragraphs:
        return wrapper.fill(text.expandtabs())
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.expandtabs()):
        lines = block.splitlines()
        if not lines:
            continue
        if lines[0].strip() == "\b":
            out.append("\n".join(indent + line for line in lines[1:]))
            continue
        extra = " " * (len(lines[0]) - len(lines[0].lstrip()))
        wrapper.initial_indent = wrapper.subsequent_indent = indent + extra
        out.append(wrapper.fill(" ".join(line.strip() for line in lines)))
    return "\n\n".join(out)


# The bracketed notes click appends to an option's help.
_EXTRA = re.compile(r"\[[^\[\]\n]*\]")


class HelpFormatter(ClickHelpFormatter):
    """`--help` as click lays it out, wrapped by `_wrap`."""

    def write_text(self, text: str) -> None:
        self.write(_wrap(text, self.width - self.current_indent, " " * self.current_indent))
        self.write("\n")

    def write_dl(
        self, rows: Sequence[tuple[str, str]], col_max: int = 30, col_spacing: int = 2
    ) -> None:
        first_col = min(max((len(first) for first, _ in rows), default=0), col_max)
        first_col += col_spacing
        for first, second in rows:
            self.write(f"{'':>{self.current_indent}}{first}")
            if not second:
                self.write("\n")
                continue
            if len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - len(first)))
            else:
                self.write("\n" + " " * (first_col + self.current_indent))
            # click's `[default: x]`, `[env var: X; required]` stay on one line.
            kept = _EXTRA.sub(lambda m: m[0].replace(" ", "\0"), second)
            width = self.width - first_col - self.current_indent - 2
            lines = _wrap(kept, width).replace("\0", " ").splitlines()
            self.write(f"{lines[0] if lines else ''}\n")
            for line in lines[1:]:
                self.write(f"{'':>{first_col + self.current_indent}}{line}\n")


class HelpContext(Context):
    formatter_class = HelpFormatter


class Command(TyperCommand):
    context_class = HelpContext

    def get_params(self, ctx: Any) -> list[Any]:
        """The command's parameters; while the shell completes a line, also the options
        the top-level group accepts after a command's name (`trustd node list -o <Tab>`),
        so their names and values complete there too."""
        params: list[Any] = super().get_params(ctx)
        if ctx.resilient_parsing:
            root = ctx.find_root()
            after = getattr(root.command, "options_after", None)
            if after is not None:
                params += after(root, ctx.command_path)
        return params


class Group(TyperGroup):
    context_class = HelpContext


class _Typer(typer.Typer):
    """A command group whose commands all use `Command` (and so `HelpFormatter`)."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


def command_group(**options: Any) -> typer.Typer:
    """A command group whose `--help` is click's plain text wrapped only at spaces: at any
    terminal width (80 columns included) no option name, path or default is cut, where
    the rich panels and click's own wrapper cut them mid-word."""
    options.setdefault("cls", Group)
    return _Typer(rich_markup_mode=None, **options)


# -- how to print ------------------------------------------------------------------------


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def _colour() -> bool | None:
    """Colour on a terminal only (click strips it from pipes and files); none at all when
    NO_COLOR is set (https://no-color.org)."""
    return False if os.environ.get("NO_COLOR") else None


def fail(message: str) -> NoReturn:
    """End the command with `message` on stderr and exit status 1."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True, color=_colour())
    raise typer.Exit(1)


def progress(message: str) -> None:
    """A note for the person at the terminal (stderr, so stdout stays the result)."""
    typer.secho(message, err=True, fg=typer.colors.BRIGHT_BLACK, color=_colour())


def nothing(message: str) -> None:
    """Say that a listing is empty, and what to do about it (stderr, as kubectl says "No
    resources found", so a script reading stdout sees no rows)."""
    typer.echo(message, err=True)


def secho(text: str, **style: Any) -> None:
    """One line of the result on stdout, styled on a terminal only."""
    typer.secho(text, color=_colour(), **style)


def print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


def _yaml_dumper() -> Any:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        # PEM certificates and policy modules read as block scalars, not "\n"-escaped.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


def print_yaml(document: Any) -> None:
    import yaml

    typer.echo(
        yaml.dump(
            document,
            Dumper=_yaml_dumper(),
            sort_keys=True,
            default_flow_style=False,
            allow_unicode=True,
            width=10_000,
        ),
        nl=False,
    )


def print_document(output: Output, document: Any) -> None:
    """A document for scripts: YAML when asked, JSON otherwise."""
    if output is Output.YAML:
        print_yaml(document)
    else:
        print_json(document)


# RFC 3339 §5.6 date-times, as the API writes every timestamp.
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def human_time(value: str) -> str:
    """An RFC 3339 time as people read it in a table: UTC, to the second
    (`2026-12-03 14:40:00 UTC`); anything else unchanged."""
    if not _TIMESTAMP.fullmatch(value):
        return value
    at = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        # ACME identifiers: {"type": "dns", "value": "a.example"} reads as its value.
        if "value" in value:
            return str(value["value"])
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, str):
        return human_time(value)
    return str(value)


@dataclass(frozen=True)
class Column:
    """One column of a table: its header and the document field it shows (or a function
    of the row)."""

    header: str
    field: str | Callable[[Mapping[str, Any]], Any]

    def cell(self, row: Mapping[str, Any]) -> str:
        value = row.get(self.field) if isinstance(self.field, str) else self.field(row)
        return _cell(value)


def columns(*spec: tuple[str, str | Callable[[Mapping[str, Any]], Any]]) -> tuple[Column, ...]:
    return tuple(Column(header, field) for header, field in spec)


# Trailing blanks of a rendered line, before the style reset that may end it.
_TRAILING = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")


def render_table(
    rows: Sequence[Mapping[str, Any]], cols: Sequence[Column], styled: bool = False
) -> str:
    """Rows under upper-case headers (bold when `styled`), each column as wide as its
    widest cell (rich's table layout, so wide characters align too). Rows never wrap or
    get cut: an ID is copied whole from the terminal, and `awk`/`grep` see one line per
    row."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(
        box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold"
    )
    for col in cols:
        table.add_column(col.header.upper(), no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*(Text(col.cell(row)) for col in cols))
    console = Console(
        file=io.StringIO(),
        width=1_000_000,
        force_terminal=styled,
        color_system="standard" if styled else None,
        highlight=False,
        markup=False,
        emoji=False,
    )
    with console.capture() as captured:
        console.print(table, soft_wrap=False)
    return "\n".join(_TRAILING.sub(r"\1", line) for line in captured.get().splitlines())


def print_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[Column]) -> None:
    # click strips the bold header's escape codes when stdout is not a terminal.
    typer.echo(render_table(rows, cols, styled=True), color=_colour())


def emit(output: Output, document: Any, text: Callable[[], None]) -> None:
    """Print `document` as JSON or YAML, or call `text` to print it for people."""
    if output is Output.TABLE:
        text()
    else:
        print_document(output, document)


def listing(
    output: Output,
    rows: Sequence[Mapping[str, Any]],
    cols: Sequence[Column],
    empty: str,
    document: Any = None,
) -> None:
    """A listing: a table, or `empty` (what to do next) when there are no rows; for
    scripts the rows as a JSON or YAML list (or `document`, the page they came in)."""

    def text() -> None:
        if rows:
            print_table(rows, cols)
        else:
            nothing(empty)

    emit(output, list(rows) if document is None else document, text)


def render_record(document: Mapping[str, Any], fields: Sequence[str] = ()) -> str:
    """`field  value` lines (of `fields`, or of every field), values as in a table."""
    names = list(fields) or list(document)
    width = max((len(n) for n in names), default=0)
    return "\n".join(f"{n.ljust(width)}  {_cell(document.get(n))}".rstrip() for n in names)


def record(output: Output, document: Mapping[str, Any], fields: Sequence[str] = ()) -> None:
    """One object: `field  value` lines, or the whole document as JSON or YAML."""
    emit(output, document, lambda: typer.echo(render_record(document, fields)))


def matching(filters: Mapping[str, Any]) -> str:
    """` matching --a x --b y` for the filters given, to say what an empty listing was
    narrowed by."""
    given = [f"--{k.replace('_', '-')} {v}" for k, v in filters.items() if v is not None]
    return f" matching {' '.join(given)}" if given else ""


# -- the next command ----------------------------------------------------------------------


def invoked_as() -> str:
    """How to run `trustd` again from where the user is: `trustd` when that name on PATH
    is this program, else the path this one was started by (`.venv/bin/trustd` from a
    checkout), so a printed next command runs when pasted (the banner of `trustd serve`
    and `token create` use it)."""
    argv0 = sys.argv[0] if sys.argv else ""
    on_path = shutil.which("trustd")
    if argv0.endswith("trustd"):
        if os.sep not in argv0 or (on_path and Path(on_path).resolve() == Path(argv0).resolve()):
            return "trustd"
        return shlex.quote(argv0)
    if on_path:
        return "trustd"
    # Not started as `trustd` (python -m, a test runner): the one installed beside Python.
    beside = Path(sys.executable).parent / "trustd"
    return shlex.quote(str(beside)) if beside.exists() else "trustd"
