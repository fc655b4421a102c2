"""How commands print: tables and field lists for people, the server's JSON documents with
`--output json` for scripts; progress and errors on stderr."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

import typer


def command_group(**options: Any) -> typer.Typer:
    """A command group whose `--help` is click's plain text: it wraps at any terminal width,
    where the rich panels cut option names and defaults mid-word at 80 columns."""
    return typer.Typer(rich_markup_mode=None, **options)


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


def fail(message: str) -> NoReturn:
    """End the command with `message` on stderr and exit status 1."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def progress(message: str) -> None:
    """A note for the person at the terminal (stderr, so stdout stays the result)."""
    typer.secho(message, err=True, fg=typer.colors.BRIGHT_BLACK)


def print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


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
        return json.dumps(value, sort_keys=True)
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


def render_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[Column]) -> str:
    """Rows under upper-case headers, each column as wide as its widest cell."""
    cells = [[c.header.upper() for c in cols]] + [[c.cell(r) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def emit(output: Output, document: Any, text: Callable[[], None]) -> None:
    """Print `document` as JSON, or call `text` to print it for people."""
    if output is Output.JSON:
        print_json(document)
    else:
        text()


def listing(output: Output, rows: Sequence[Mapping[str, Any]], cols: Sequence[Column]) -> None:
    """A listing: a table, or the rows as a JSON array."""
    emit(output, list(rows), lambda: typer.echo(render_table(rows, cols)))


def record(output: Output, document: Mapping[str, Any], fields: Sequence[str] = ()) -> None:
    """One object: `field  value` lines (of `fields`, or of every field), or JSON."""

    def text() -> None:
        names = list(fields) or list(document)
        width = max((len(n) for n in names), default=0)
        for name in names:
            typer.echo(f"{name.ljust(width)}  {_cell(document.get(name))}".rstrip())

    emit(output, document, text)
