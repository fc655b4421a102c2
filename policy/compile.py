"""Whether a set of modules compiles as a whole, answered as OPA answers a refused upload.

The engine parses a module when it is added and compiles the set only when it first
evaluates: a module that parses but does not compile (an unsafe variable, a call of an
unknown function) would be accepted and then fail every query on the server. OPA compiles
the whole set before it activates anything and refuses with 400 and `errors[]` (OPA REST
API, Policy API "Create or Update a Policy": `{"code": "invalid_parameter", "message":
"error(s) occurred while compiling module(s)", "errors": [{"code", "message",
"location": {"file", "row", "col"}}]}`). `compile_errors` gives that list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from policy.builtins import EXTENSIONS
from policy.engine import EmbeddedEngine, error_code, first_line, new_interpreter
from policy.errors import (
    REGO_COMPILE,
    REGO_PARSE,
    REGO_TYPE,
    REGO_UNSAFE_VAR,
    PolicyCompileError,
)

__all__ = ["check_compiles", "compile_errors", "parse_errors", "refusal", "set_errors"]

# `file.rego:3:13: message` as `first_line` gives it.
_WHERE = re.compile(r"^(?P<file>.+?):(?P<row>\d+):(?P<col>\d+):\s*(?P<message>.*)$", re.S)
_UNKNOWN = re.compile(r"Unknown function: '([^']+)'")
COMPILE_MESSAGE = "error(s) occurred while compiling module(s)"


def _problem(code: str, text: str, fallback_file: str | None = None) -> dict[str, Any]:
    match = _WHERE.match(text)
    if match is None:
        problem: dict[str, Any] = {"code": code, "message": text}
        if fallback_file is not None:
            problem["location"] = {"file": fallback_file, "row": 1, "col": 1}
        return problem
    return {
        "code": code,
        "message": match["message"].strip(),
        "location": {
            "file": match["file"],
            "row": int(match["row"]),
            "col": int(match["col"]),
        },
    }


def _ref_segments(ref: Any) -> list[str] | None:
    """`a.b.c` of a rule head's reference, None past a computed part (`a[x]`)."""
    if not isinstance(ref, dict) or len(ref) != 1:
        return None
    kind, node = next(iter(ref.items()))
    if kind == "Var":
        return [str(node["value"])]
    if kind == "RefDot":
        base = _ref_segments(node["refr"])
        field = node.get("field")
        name = field[1] if isinstance(field, list) and len(field) == 2 else None
        return [*base, str(name)] if base is not None and isinstance(name, str) else base
    if kind == "RefBrack":
        return _ref_segments(node["refr"])
    return None


def rule_paths(ast_json: str) -> list[str]:
    """`data.pkg.rule` of every rule that is not a function, from the engine's AST."""
    paths: set[str] = set()
    for module in json.loads(ast_json):
        ast = module.get("ast", {})
        package = _ref_segments(ast.get("package", {}).get("refr"))
        if not package:
            continue
        for rule in ast.get("rules", []):
            head = rule.get("Spec", {}).get("head", {}) if isinstance(rule, dict) else {}
            if not isinstance(head, dict) or not head or "Func" in head:
                continue
            kind = next(iter(head))
            segments = _ref_segments(head[kind].get("refr"))
            if segments:
                # A ref head (`a.b.c := 1`) is reached through its first segment.
                paths.add(".".join(["data", *package, segments[0]]))
    return sorted(paths)


def _interpreter_lacks(name: str) -> bool:
    """Whether the interpreter lacks `name` too (the compiler may know fewer builtins)."""
    import regorus

    engine: Any = regorus.Engine()
    try:
        engine.add_policy("probe.rego", f"package probe\np := {name}(0)")
        engine.eval_query_as_json("data.probe.p")
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return "could not find function" in str(exc)
    finally:
        engine = None
    return False


def _unknown_functions(
    modules: Mapping[str, str], data_json: str, entrypoints: Iterable[str]
) -> list[dict[str, Any]]:
    """Calls of functions neither the engine, a module nor an extension defines.

    The compiler (regorus `Program`) resolves every call an entrypoint reaches and stops at
    the first it cannot; extensions are unknown to it, so an entrypoint that calls one is
    compiled on its own and only other names count.
    """
    import regorus

    items = list(modules.items())

    def attempt(points: list[str]) -> str | None:
        try:
            regorus.Program.compile_from_modules(data_json, items, points)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return first_line(exc)
        return None

    points = list(entrypoints)
    failure = attempt(points) if points else None
    if failure is None:
        return []
    # One at a time: which entrypoint fails, and for which name.
    singles = [attempt([p]) for p in points] if len(points) > 1 else [failure]
    found: dict[str, dict[str, Any]] = {}
    for text in singles:
        name = _UNKNOWN.search(text or "")
        if text and name and name.group(1) not in EXTENSIONS:
            if not _interpreter_lacks(name.group(1)):
                continue
            problem = _problem(REGO_TYPE, text)
            problem["message"] = f"undefined function {name.group(1)}"
            # The interpreter's words, as `trustd policy check` has always printed them.
            problem["detail"] = f"could not find function {name.group(1)}"
            found.setdefault(name.group(1), problem)
    return list(found.values())


def parse_errors(modules: Mapping[str, str]) -> list[dict[str, Any]]:
    """`rego_parse_error` for every module that does not parse on its own."""

    problems: list[dict[str, Any]] = []
    for name, source in sorted(modules.items()):
        engine: Any = new_interpreter()
        try:
            engine.add_policy(name, source)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            problems.append(_problem(REGO_PARSE, first_line(exc), name))
        engine = None
    return problems


def set_errors(engine: EmbeddedEngine) -> list[dict[str, Any]]:
    """The errors of a parsed module set compiled as a whole: `rego_unsafe_var_error`,
    `rego_compile_error`, `rego_type_error` (undefined function)."""
    failure = engine.compile_failure()
    if failure is not None:
        exc, text = failure
        code = error_code(exc, text)
        return [_problem(code if code in (REGO_UNSAFE_VAR, REGO_TYPE) else REGO_COMPILE, text)]
    return _unknown_functions(engine.modules, engine.data_json, rule_paths(engine.ast_json()))


def compile_errors(
    modules: Mapping[str, str], data: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """OPA's `errors[]` for a module set that does not compile; empty when it does.

    Each module is parsed on its own first (every module's `rego_parse_error`), then the
    set is compiled together and every call resolved (`set_errors`).
    """
    problems = parse_errors(modules)
    if problems:
        return problems
    try:
        whole = EmbeddedEngine(modules, data, compiled=False, check=False)
    except PolicyCompileError as exc:
        return [_problem(REGO_COMPILE, exc.detail, str(exc.fields.get("module")))]
    return set_errors(whole)


def refusal(problems: list[dict[str, Any]], module: str | None = None) -> PolicyCompileError:
    """The error that refuses a module set: OPA's body (`code` invalid_parameter, `message`,
    `errors[]`); `detail` is the first problem as `file:line:col: message`."""
    first = problems[0]
    where = first.get("location")
    detail = str(first.get("detail", first["message"]))
    if isinstance(where, dict):
        detail = f"{where['file']}:{where['row']}:{where['col']}: {detail}"
    errors = [{k: v for k, v in p.items() if k != "detail"} for p in problems]
    fields: dict[str, Any] = {"code": "invalid_parameter", "message": COMPILE_MESSAGE}
    if module is not None:
        fields["module"] = module
    return PolicyCompileError(detail, errors=errors, **fields)


def check_compiles(modules: Mapping[str, str], data: Mapping[str, Any] | None = None) -> None:
    """Refuse a module set that does not compile, before anything is stored or activated.

    Raises:
        PolicyCompileError: with OPA's `errors[]` in its fields (code `invalid_parameter`,
            message "error(s) occurred while compiling module(s)").
    """
    problems = compile_errors(modules, data)
    if problems:
        raise refusal(problems)
