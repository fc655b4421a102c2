"""`opa test` and `opa check` for the embedded engine.

A test is a rule whose name starts with `test_` (OPA's convention); it passes when it
evaluates to true, fails when it is false or undefined, and errors when evaluation fails.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.bundle import Bundle
from policy.engine import EmbeddedEngine
from policy.errors import PolicyEvaluationError

_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.MULTILINE)
_RULE_HEAD = re.compile(r"^(?:default\s+)?([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()", re.MULTILINE)
_KEYWORDS = frozenset({"package", "import", "default", "else", "not", "some", "every"})


@dataclass(frozen=True)
class TestResult:
    module: str
    name: str
    outcome: str  # "pass", "fail" or "error"
    duration_ms: float
    detail: str = ""


def package_of(source: str) -> str | None:
    match = _PACKAGE.search(source)
    return match.group(1) if match else None


def discover_tests(modules: Mapping[str, str]) -> list[tuple[str, str]]:
    """`(module, data.pkg.test_name)` for every test rule, in file order, once each."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, source in sorted(modules.items()):
        package = package_of(source)
        if package is None:
            continue
        for rule in _TEST_RULE.findall(source):
            full = f"data.{package}.{rule}"
            if full not in seen:
                seen.add(full)
                found.append((name, full))
    return found


def run_tests(modules: Mapping[str, str], data: Mapping[str, Any]) -> list[TestResult]:
    """Run every test rule.

    Raises:
        PolicyCompileError: a module does not parse.
    """
    engine = EmbeddedEngine(modules, data, compiled=False)
    results = []
    for module, rule in discover_tests(modules):
        started = time.perf_counter()
        try:
            value = engine.evaluate(rule, {})
            outcome, detail = ("pass", "") if value is True else ("fail", "")
        except PolicyEvaluationError as exc:
            outcome, detail = "error", exc.detail
        elapsed = (time.perf_counter() - started) * 1000
        results.append(TestResult(module, rule, outcome, elapsed, detail))
    return results


def check(modules: Mapping[str, str], data: Mapping[str, Any]) -> list[str]:
    """Parse every module on its own (so each error names its file and line), compile the
    set (unsafe variables, unknown functions), then evaluate every rule once with an empty
    input to surface conflicts.

    Returns the problems as `file:line:col: message`; empty when all is well.
    """
    from policy.compile import compile_errors

    # Each module parsed on its own (each error names its file), then compiled as one set:
    # a module may call functions another module of its package defines.
    problems = [_where(p) for p in compile_errors(modules, data)]
    if problems:
        return problems
    engine = EmbeddedEngine(modules, data, compiled=False)
    for name, source in sorted(modules.items()):
        package = package_of(source)
        if package is None:
            problems.append(f"{name}:1:1: no package declaration")
            continue
        rules = {r for r in _RULE_HEAD.findall(source) if r not in _KEYWORDS}
        for rule in sorted(rules):
            try:
                engine.evaluate(f"data.{package}.{rule}", {})
            except PolicyEvaluationError as exc:
                if "not a valid rule path" not in exc.detail:
                    problems.append(
                        exc.detail if ":" in exc.detail.split(" ")[0] else f"{name}: {exc.detail}"
                    )
    return sorted(set(problems))


def _where(problem: dict[str, Any]) -> str:
    """An OPA error as `file:line:col: message`, in the engine's words where it has them."""
    where = problem.get("location") or {}
    text = problem.get("detail", problem.get("message"))
    return f"{where.get('file')}:{where.get('row')}:{where.get('col')}: {text}"


def load_directory(directory: Path, *, tests: bool) -> Bundle:
    """Modules (`*.rego`, `*_test.rego` only when `tests`) and `data.json` files under
    `directory`, laid out as an OPA bundle: a data file's directory is its data path.

    Raises:
        InvalidPolicyBundle: a data file is not a JSON object.
    """
    modules: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in Path(rel).parts):
            continue
        if rel.endswith(".rego") and (tests or not rel.endswith("_test.rego")):
            modules[rel] = path.read_text()
        elif path.name == "data.json":
            files[rel] = path.read_bytes()
    return Bundle.from_files(modules, files)
