"""The layers hold in fact, not only in name: SQL only in `trustd/store/`, the edges import
nothing from the store, `pki/` and `policy/` stay libraries, and every store module
imports on its own (no import cycles between aggregates)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRUSTD = ROOT / "trustd"
STORE = TRUSTD / "store"
# The query builders: whoever calls them writes SQL.
SQL_BUILDERS = {"select", "insert", "update", "delete", "text", "func", "col", "or_", "and_"}
SESSION_CALLS = {"exec", "execute", "get", "add", "add_all", "delete", "merge", "scalar"}
# Edges that reach the store only through services.
EDGES = ("api", "web", "cli", "attestation", "agent")


def _python_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*.py") if "proto" not in p.parts)


def _imports(path: Path) -> list[tuple[str, set[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, {a.name for a in node.names}))
        elif isinstance(node, ast.Import):
            found.extend((a.name, set()) for a in node.names)
    return found


def test_no_sql_outside_the_store() -> None:
    offenders: dict[str, list[str]] = {}
    for path in _python_files(TRUSTD):
        if STORE in path.parents:
            continue
        problems = [
            f"imports {sorted(names & SQL_BUILDERS)} from {module}"
            for module, names in _imports(path)
            if module.split(".")[0] in ("sqlmodel", "sqlalchemy") and names & SQL_BUILDERS
        ]
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in SESSION_CALLS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "session"
            ):
                problems.append(f"line {node.lineno}: session.{node.func.attr}()")
        if problems:
            offenders[str(path.relative_to(ROOT))] = problems
    assert offenders == {}


@pytest.mark.parametrize("edge", EDGES)
def test_edges_import_nothing_from_the_store(edge: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m, _ in _imports(path) if m.startswith("trustd.store")
        )
        for path in _python_files(TRUSTD / edge)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("library", ["pki", "policy"])
def test_libraries_import_no_web_framework_or_orm(library: str) -> None:
    forbidden = ("fastapi", "starlette", "sqlmodel", "sqlalchemy", "trustd")
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m, _ in _imports(path) if m.split(".")[0] in forbidden
        )
        for path in _python_files(ROOT / library)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize(
    "module", sorted(p.stem for p in STORE.glob("*.py") if p.stem != "__init__")
)
def test_each_store_module_imports_alone(module: str) -> None:
    # A fresh interpreter: an import cycle between two aggregates shows only when one of
    # them is the first imported (Alembic's env imports `schema` first, the app `db`).
    result = subprocess.run(
        [sys.executable, "-c", f"import trustd.store.{module}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
