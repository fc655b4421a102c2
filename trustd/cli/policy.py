"""`trustd policy`: Rego policies — test and check locally (like `opa test`), and the
server's revisions, bundles and decision log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from pki.errors import TrustdError
from trustd.cli.context import connection
from trustd.cli.output import (
    columns,
    command_group,
    emit,
    fail,
    invoked_as,
    listing,
    matching,
    nothing,
    print_document,
    progress,
    secho,
)

app = command_group(help="Rego policies: test, check, bundles, decisions.", no_args_is_help=True)
data_app = command_group(
    help="Data documents under data.* (OPA Data API): get, put, patch, delete.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

RegoDirArg = Annotated[
    Path, typer.Argument(help="Directory of .rego files and data.json files", exists=True)
]
REVISION_COLUMNS = columns(
    ("active", lambda row: "*" if row["active"] else ""),
    ("revision", "revision"),
    ("created", "created_at"),
    ("created by", "created_by"),
    ("modules", lambda row: len(row["modules"])),
    ("note", "note"),
)
DECISION_COLUMNS = columns(
    ("time", "timestamp"),
    ("path", "path"),
    ("caller", "caller"),
    ("verdict", lambda row: row.get("verdict") or "-"),
    ("result", "result"),
    ("revision", "revision"),
    ("id", "decision_id"),
)


def _load_rego(directory: Path, tests: bool) -> Any:
    from policy.testing import load_directory

    try:
        return load_directory(directory, tests=tests)
    except TrustdError as exc:
        fail(str(exc))


@app.command("test")
def run_policy_tests(
    directory: RegoDirArg = Path("rego"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List passing tests")] = False,
) -> None:
    """Run the test_* rules of the *_test.rego files, like `opa test`."""
    from policy.testing import run_tests

    bundle = _load_rego(directory, tests=True)
    try:
        results = run_tests(bundle.modules, bundle.data)
    except TrustdError as exc:
        fail(f"{exc}; run `trustd policy check {directory}` for every problem")
    if not results:
        fail(f"no test_* rules in {directory}; tests live in *_test.rego files")
    for result in results:
        if result.outcome != "pass" or verbose:
            colour = typer.colors.GREEN if result.outcome == "pass" else typer.colors.RED
            line = f"{result.outcome.upper():5} {result.name} ({result.duration_ms:.1f} ms)"
            typer.secho(line + (f": {result.detail}" if result.detail else ""), fg=colour)
    passed = sum(r.outcome == "pass" for r in results)
    failed = len(results) - passed
    typer.echo(f"PASS: {passed}/{len(results)}" + (f", FAIL: {failed}" if failed else ""))
    if failed:
        raise typer.Exit(1)


@app.command("check")
def check_policy(directory: RegoDirArg = Path("rego")) -> None:
    """Report parse errors and unknown functions with file:line:col."""
    from policy.testing import check

    bundle = _load_rego(directory, tests=True)
    problems = check(bundle.modules, bundle.data)
    for problem in problems:
        typer.secho(problem, fg=typer.colors.RED, err=True)
    if problems:
        fail(f"{len(problems)} problem(s) in {directory}")
    typer.echo(f"{len(bundle.modules)} module(s) in {directory}: no problems")


def _revision(row: dict[str, Any], text: str) -> None:
    emit(connection().output, row, lambda: typer.echo(text))


@app.command("push")
def push(
    directory: RegoDirArg,
    activate: Annotated[bool, typer.Option(help="Activate the new revision")] = True,
    note: Annotated[str, typer.Option(help="Why this revision exists")] = "",
) -> None:
    """Upload a directory (modules without tests, data.json files) as a new revision."""
    bundle = _load_rego(directory, tests=False)
    progress(f"uploading {len(bundle.modules)} module(s) from {directory}")
    body = {"modules": bundle.modules, "data": bundle.data, "activate": activate, "note": note}
    row = connection().json("POST", "/v1/admin/policy/bundles", json=body)
    state = "active" if row["active"] else "stored, not active"
    _revision(row, f"revision {row['revision']} ({state}), digest {row['digest'][:16]}")


@app.command("list")
def list_() -> None:
    """Policy revisions, newest first; the active one is marked."""
    shared = connection()
    listing(
        shared.output,
        shared.json("GET", "/v1/admin/policy/bundles"),
        REVISION_COLUMNS,
        f"no policy revisions; upload one with: {invoked_as()} policy push DIRECTORY",
    )


@app.command("activate")
def activate(
    revision: Annotated[int, typer.Argument(help="Revision number (see `policy list`)")],
) -> None:
    """Activate a revision on every replica."""
    row = connection().json("POST", f"/v1/admin/policy/bundles/{revision}/activate")
    _revision(row, f"revision {row['revision']} is active")


@app.command("rollback")
def rollback() -> None:
    """Re-activate the revision that was active before the current one."""
    row = connection().json("POST", "/v1/admin/policy/rollback")
    _revision(row, f"rolled back: revision {row['revision']} is active")


def _diff_style(line: str) -> dict[str, Any]:
    """git diff's colours: file headers bold, hunk ranges cyan, removals red, additions
    green."""
    if line.startswith(("--- ", "+++ ")):
        return {"bold": True}
    if line.startswith("@@"):
        return {"fg": typer.colors.CYAN}
    if line.startswith("-"):
        return {"fg": typer.colors.RED}
    if line.startswith("+"):
        return {"fg": typer.colors.GREEN}
    return {}


@app.command("diff")
def diff(
    old: Annotated[int, typer.Argument(help="From revision")],
    new: Annotated[int, typer.Argument(help="To revision")],
) -> None:
    """Show what changed between two revisions: a unified diff of the modules and of the
    data (as sorted, indented JSON), coloured on a terminal."""
    shared = connection()
    changes = shared.json("GET", "/v1/admin/policy/diff", params={"from": old, "to": new})

    def text() -> None:
        if not changes["files"]:
            nothing(f"revisions {old} and {new} have the same modules and data")
            return
        summary = ", ".join(f"{f['path']} {f['status']}" for f in changes["files"])
        progress(f"revision {old} -> {new}: {summary}")
        for line in changes["patch"].splitlines():
            secho(line, **_diff_style(line))

    emit(shared.output, changes, text)


@app.command("export")
def export(
    revision: Annotated[int, typer.Argument(help="Revision number")],
    out: Annotated[Path, typer.Option(help="Where to write the OPA bundle (.tar.gz)")],
) -> None:
    """Write a revision as an OPA bundle."""
    path = f"/v1/admin/policy/bundles/{revision}/export"
    out.write_bytes(connection().request("GET", path).content)
    typer.echo(f"wrote {out}")


@app.command("import")
def import_(
    bundle: Annotated[Path, typer.Argument(help="OPA bundle (.tar.gz)", exists=True)],
    activate: Annotated[bool, typer.Option(help="Activate the new revision")] = True,
) -> None:
    """Import an OPA bundle; its signature is verified by the server."""
    progress(f"uploading {bundle} ({bundle.stat().st_size} bytes)")
    row = connection().json(
        "POST",
        "/v1/admin/policy/bundles/import",
        params={"activate": activate},
        content=bundle.read_bytes(),
        headers={"Content-Type": "application/gzip"},
    )
    _revision(
        row, f"revision {row['revision']} imported" + (" and active" if row["active"] else "")
    )


@app.command("decisions")
def decisions(
    path: Annotated[str | None, typer.Option(help="e.g. trustd/mesh/allow")] = None,
    caller: Annotated[str | None, typer.Option(help="Who asked")] = None,
    result: Annotated[
        str | None,
        typer.Option(help='JSON result; true/false match the verdict, even in {"allowed": ...}'),
    ] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 50,
) -> None:
    """Logged decisions, newest first."""
    shared = connection()
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("path", path), ("caller", caller), ("result", result), ("since", since)):
        if value is not None:
            params[name] = value
    rows = shared.json("GET", "/v1/admin/policy/decisions", params=params)
    filters = matching({"path": path, "caller": caller, "result": result, "since": since})
    listing(shared.output, rows, DECISION_COLUMNS, f"no decisions logged{filters}")


# -- data documents ----------------------------------------------------------------------

DataPathArg = Annotated[str, typer.Argument(help="Data path, e.g. mesh/allow or mesh.allow")]
# `get` reads the active revision's stored document through the admin API (so it needs
# admin:policy:read, whatever `policy_api_auth` says); writes go through OPA's Data API.


def _segments(path: str) -> list[str]:
    """`mesh/allow`, `mesh.allow` or `data.mesh.allow` -> `["mesh", "allow"]`."""
    text = path.strip().replace(".", "/")
    segments = [s for s in text.split("/") if s]
    return segments[1:] if segments[:1] == ["data"] else segments


def _data_url(path: str) -> str:
    joined = "/".join(quote(s, safe="") for s in _segments(path))
    return f"/v1/data/{joined}"


def _document(value: str | None, file: Path | None) -> Any:
    """The JSON given as an argument, in a file, or on stdin (`-`)."""
    if (value is None) == (file is None):
        fail("give the JSON document as an argument or with --file (- for stdin)")
    if value is not None:
        text = value
    elif str(file) == "-":
        text = typer.get_text_stream("stdin").read()
    else:
        try:
            text = Path(str(file)).read_text()
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}")
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"not JSON: {exc}")


DocumentArg = Annotated[str | None, typer.Argument(help="JSON document")]
FileOption = Annotated[
    Path | None, typer.Option("--file", "-f", help="Read the JSON from a file (- for stdin)")
]


@data_app.command("get")
def data_get(path: Annotated[str, typer.Argument(help="Data path; empty for all")] = "") -> None:
    """The stored data document at PATH in the active revision (base documents only)."""
    shared = connection()
    revision = shared.json("GET", "/v1/admin/policy/status")["revision"]
    node: Any = shared.json("GET", f"/v1/admin/policy/bundles/{revision}")["data"]
    for segment in _segments(path):
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            fail(f"no data document at {path} in revision {revision}")
    # A data document has no table form: JSON, or YAML when asked.
    print_document(shared.output, node)


@data_app.command("put")
def data_put(
    path: DataPathArg,
    value: DocumentArg = None,
    file: FileOption = None,
    if_absent: Annotated[
        bool, typer.Option("--if-absent", help="Leave an existing document alone")
    ] = False,
) -> None:
    """Create or overwrite the document at PATH (a new policy revision)."""
    document = _document(value, file)
    headers = {"If-None-Match": "*"} if if_absent else {}
    response = connection().request("PUT", _data_url(path), json=document, headers=headers)
    written = response.status_code != 304
    state = "written" if written else "exists, left alone"
    emit(
        connection().output,
        {"path": path, "written": written},
        lambda: typer.echo(f"data.{path.replace('/', '.')}: {state}"),
    )


@data_app.command("patch")
def data_patch(path: DataPathArg, value: DocumentArg = None, file: FileOption = None) -> None:
    """Apply a JSON Patch (RFC 6902: add, remove, replace) under PATH, all or nothing."""
    operations = _document(value, file)
    connection().request(
        "PATCH",
        _data_url(path),
        content=json.dumps(operations),
        headers={"Content-Type": "application/json-patch+json"},
    )
    emit(
        connection().output,
        {"path": path, "written": True},
        lambda: typer.echo(f"data.{path.replace('/', '.')}: patched"),
    )


@data_app.command("delete")
def data_delete(path: DataPathArg) -> None:
    """Remove the document at PATH (a new policy revision)."""
    connection().request("DELETE", _data_url(path))
    emit(
        connection().output,
        {"path": path, "deleted": True},
        lambda: typer.echo(f"data.{path.replace('/', '.')}: deleted"),
    )
