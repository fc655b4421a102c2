"""The `trustd` command line's shape: one shared connection context, options before or
after the command, tables for people and JSON for scripts."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from trustd.cli import app
from trustd.cli.context import SHARED_OPTIONS, hoist_shared_options
from trustd.cli.output import Column, columns, render_table

runner = CliRunner()


def _commands(group: object, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    found: dict[tuple[str, ...], object] = {}
    for name, command in getattr(group, "commands", {}).items():
        if hasattr(command, "commands"):
            found.update(_commands(command, (*path, name)))
        else:
            found[(*path, name)] = command
    return found


def test_the_connection_options_are_declared_once() -> None:
    root = typer.main.get_command(app)
    commands = _commands(root)
    assert len(commands) >= 45
    shared = {opt for param in root.params for opt in getattr(param, "opts", ())}
    assert shared >= SHARED_OPTIONS
    repeated = {
        " ".join(path): sorted(set(opts) & SHARED_OPTIONS)
        for path, command in commands.items()
        for opts in [[o for p in getattr(command, "params", ()) for o in p.opts]]
        if set(opts) & SHARED_OPTIONS
    }
    # Only the agent keeps its own --server and --data-dir: they are the agent's, not the
    # admin connection's.
    assert repeated == {"agent": ["--data-dir", "--server"]}


def test_shared_options_after_the_command_move_in_front_of_it() -> None:
    assert hoist_shared_options(["entry", "list", "--data-dir", "d", "--limit", "5"]) == [
        "--data-dir",
        "d",
        "entry",
        "list",
        "--limit",
        "5",
    ]
    assert hoist_shared_options(["-o", "json", "ca", "keys", "--server=https://s"]) == [
        "-o",
        "json",
        "--server=https://s",
        "ca",
        "keys",
    ]
    # The agent's own --server stays the agent's; `--` ends the options.
    agent = ["agent", "--server", "https://s", "--data-dir", "/var/lib/a"]
    assert hoist_shared_options(agent) == agent
    after = ["policy", "test", "--", "--data-dir"]
    assert hoist_shared_options(after) == after
    with pytest.raises(ValueError, match="--token needs a value"):
        hoist_shared_options(["ca", "show", "--token"])


def test_either_spelling_reaches_the_same_admin_socket() -> None:
    for args in (
        ["ca", "show", "--data-dir", "/nonexistent"],
        ["--data-dir", "/nonexistent", "ca", "show"],
        ["--output", "json", "entry", "list", "--data-dir", "/nonexistent"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert "no admin socket at /nonexistent/admin.sock" in result.output


def test_a_bad_or_missing_output_format_is_refused() -> None:
    result = runner.invoke(app, ["node", "list", "--output", "xml"])
    assert result.exit_code == 2
    assert "'xml' is not one of 'table', 'json', 'yaml'" in result.output
    result = runner.invoke(app, ["node", "list", "--output"])
    assert result.exit_code == 2
    assert "--output needs a value" in result.output


def test_tables_align_columns_and_render_values_for_people() -> None:
    rows = [
        {"id": "a1", "selectors": ["unix:uid:1", "k8s:ns:x"], "admin": True, "hint": None},
        {"id": "b22222", "selectors": [], "admin": False, "hint": "db"},
    ]
    cols = (*columns(("id", "id"), ("selectors", "selectors"), ("admin", "admin")),)
    cols = (*cols, Column("hint", lambda row: row["hint"]))
    assert render_table(rows, cols).splitlines() == [
        "ID      SELECTORS            ADMIN  HINT",
        "a1      unix:uid:1,k8s:ns:x  yes",
        "b22222                       no     db",
    ]
