"""The `trustd` command line's shape: one shared connection context, options before or
after the command, tables for people and JSON for scripts."""

from __future__ import annotations

import os
from pathlib import Path

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
    # While the shell completes the line, the option waiting for its value stays put.
    assert hoist_shared_options(["ca", "show", "--token"], lenient=True) == [
        "ca",
        "show",
        "--token",
    ]


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


def _help_pages() -> list[tuple[tuple[str, ...], object]]:
    root = typer.main.get_command(app)
    pages: list[tuple[tuple[str, ...], object]] = [((), root)]

    def walk(group: object, path: tuple[str, ...]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            pages.append(((*path, name), command))
            walk(command, (*path, name))

    walk(root, ())
    return pages


def _words(command: object) -> set[str]:
    """What a help page must show unbroken: the words of the command's help and of each
    option's help, the option names, and each `default: X` and `env var: X`."""
    words = set((getattr(command, "help", None) or "").split("\f")[0].split())
    for param in getattr(command, "params", ()):
        words |= set(param.opts) | set(getattr(param, "secondary_opts", ()))
        words |= set((getattr(param, "help", None) or "").split())
        shown = getattr(param, "show_default", None) is not False
        if shown and isinstance(param.default, str) and param.default:
            # The default whole, on the line of its label.
            words.add(f"default: {param.default}")
        if isinstance(getattr(param, "envvar", None), str):
            words.add(f"env var: {param.envvar}")
    return words


def test_help_at_80_columns_cuts_no_option_name_or_default_mid_word() -> None:
    pages = _help_pages()
    assert len(pages) > 60
    for path, command in pages:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, path
        cut = sorted(w for w in _words(command) if not any(w in line for line in lines))
        assert cut == [], (path, cut, result.output)


def test_help_keeps_unwrapped_blocks_and_breaks_only_at_spaces() -> None:
    from trustd.cli.output import _wrap

    text = "Attach on --ext-authz-listen and /var/lib/trustd-agent.\n\n\b\nkeep   this\n  as is"
    wrapped = _wrap(text, 20)
    assert wrapped.splitlines() == [
        "Attach on",
        "--ext-authz-listen",
        "and",
        "/var/lib/trustd-agent.",
        "",
        "keep   this",
        "  as is",
    ]


def test_dates_read_as_utc_to_the_second_for_people() -> None:
    from trustd.cli.output import human_time

    assert human_time("2026-12-03T14:40:00.659076Z") == "2026-12-03 14:40:00 UTC"
    assert human_time("2026-12-03T16:40:00+02:00") == "2026-12-03 14:40:00 UTC"
    # Not a time: left as it is.
    assert human_time("2026-12-03") == "2026-12-03"
    assert human_time("spiffe://example.org/2026-12-03T14:40:00Z") == (
        "spiffe://example.org/2026-12-03T14:40:00Z"
    )
    rows = [{"at": "2026-12-03T14:40:00.5Z", "n": 1}]
    assert render_table(rows, columns(("at", "at"), ("n", "n"))).splitlines()[1] == (
        "2026-12-03 14:40:00 UTC  1"
    )


def test_yaml_is_the_json_document_with_text_blocks_kept_readable() -> None:
    import yaml

    from trustd.cli.output import Output, print_document

    document = {"pem": "-----BEGIN X-----\nAAAA\n-----END X-----\n", "at": "2026-12-03T14:40:00Z"}
    with_output = CliRunner()
    app_output = typer.Typer()
    app_output.command()(lambda: print_document(Output.YAML, document))
    printed = with_output.invoke(app_output, []).stdout
    assert "pem: |\n  -----BEGIN X-----\n" in printed
    # Times stay strings, as in the JSON.
    assert yaml.safe_load(printed) == document


def test_the_agent_command_names_places_the_user_can_write(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from trustd.cli.context import Connection
    from trustd.cli.output import Output
    from trustd.cli.token import agent_paths

    local = Connection(None, None, None, Path("var"), Output.TABLE)
    remote = Connection("https://trustd:8443", "t", None, Path("var"), Output.TABLE)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert agent_paths(local) == (Path("/run/trustd/agent.sock"), Path("/var/lib/trustd-agent"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    # In the server's data directory when it runs here, as README's walk-through has it.
    assert agent_paths(local) == (Path("var/agent.sock"), Path("var/agent"))
    # Else the user's XDG state (and runtime, when there is one) directory.
    assert agent_paths(remote) == (
        tmp_path / "state" / "trustd-agent" / "agent.sock",
        tmp_path / "state" / "trustd-agent",
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert agent_paths(remote) == (
        tmp_path / "trustd" / "agent.sock",
        tmp_path / "state" / "trustd-agent",
    )
    assert agent_paths(local) == (Path("var/agent.sock"), Path("var/agent"))


def test_agent_tpm_options_are_checked_before_the_agent_starts() -> None:
    base = ["agent", "--server", "https://s", "--data-dir", "/nonexistent"]
    refusals = {
        ("--attestor", "x509"): "--attestor must be join_token or tpm, not 'x509'",
        ("--attestor", "tpm"): "--attestor tpm needs --tpm-device",
        ("--node-key", "tpm"): "--node-key tpm needs --tpm-device",
        ("--node-key", "hsm", "--tpm-device", "/dev/tpmrm0"): "--node-key must be file or tpm",
        ("--tpm-pcrs", "0,x"): "--tpm-pcrs must be comma-separated PCR numbers",
        ("--tpm-pcrs", "0,24"): "--tpm-pcrs are 0 to 23",
    }
    for options, message in refusals.items():
        result = runner.invoke(app, [*base, *options])
        assert result.exit_code == 1, (options, result.output)
        assert message in result.output, (options, result.output)
