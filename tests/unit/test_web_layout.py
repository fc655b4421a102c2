"""The admin UI package keeps its layers: no store imports, one confirmation helper, and
every page under /ui answers with the UI's route class."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

from fastapi.routing import APIRoute

import trustd.web.views
from trustd.web.routing import UiRoute

WEB = Path(trustd.web.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_web_imports_nothing_from_the_store() -> None:
    offenders = {
        str(path.relative_to(WEB)): sorted(
            n for n in _imports(path) if n.startswith("trustd.store")
        )
        for path in WEB.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_confirmation_helper_renders_the_confirmation_page() -> None:
    users = [
        str(path.relative_to(WEB))
        for path in WEB.rglob("*.py")
        if "confirm.html" in path.read_text()
    ]
    assert users == ["confirm.py"]


def test_every_page_uses_the_ui_route_class() -> None:
    routes = [
        route
        for info in pkgutil.iter_modules(trustd.web.views.__path__)
        for route in importlib.import_module(f"trustd.web.views.{info.name}").router.routes
    ]
    pages = [r for r in routes if isinstance(r, APIRoute) and r.path.startswith("/ui")]
    assert len(pages) == 47  # and the 3 JSON routes of the accounts API
    assert [r.path for r in pages if not isinstance(r, UiRoute)] == []
