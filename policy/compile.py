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

import functools
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy.builtins import EXTENSIONS
from policy.engine import EmbeddedEngine, first_line, new_interpreter
from policy.errors import (
    REGO_COMPILE,
    REGO_PARSE,
    REGO_TYPE,
    REGO_UNSAFE_VAR,
    PolicyCompileError,
)

__all__ = [
    "check_compiles",
    "check_query",
    "compile_errors",
    "parse_errors",
    "query_refusal",
    "refusal",
    "rule_paths",
    "set_errors",
]

# `file.rego:3:13: message` as `first_line` gives it.
_WHERE = re.compile(r"^(?P<file>.+?):(?P<row>\d+):(?P<col>\d+):\s*(?P<message>.*)$", re.S)
COMPILE_MESSAGE = "error(s) occurred while compiling module(s)"
PARSE_MESSAGE = "error(s) occurred while parsing module(s)"
# OPA's Query API (server.go, types.MsgParseQueryError and MsgCompileQueryError).
QUERY_PARSE_MESSAGE = "error(s) occurred while parsing query"
QUERY_COMPILE_MESSAGE = "error(s) occurred while compiling query"
# A query is a rule body (OPA parses it with `ParseBody`); the engine parses one only as it
# evaluates it, so it is parsed here as the body of a rule, two lines below its header.
_QUERY_MODULE = "package __query\n__query if {\n%s\n}\n"
_QUERY_HEADER_LINES = 2


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
    """`a.b.c` of a reference in the engine's AST, None past a computed part (`a[x]`)."""
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


def _ground_segments(ref: Any) -> list[str] | None:
    """`a.b["c"]` of a rule head as segments; None when any part is computed (`a[x]`)."""
    if not isinstance(ref, dict) or len(ref) != 1:
        return None
    kind, node = next(iter(ref.items()))
    if kind == "Var":
        return [str(node["value"])]
    if kind == "RefDot":
        base = _ground_segments(node["refr"])
        field = node.get("field")
        name = field[1] if isinstance(field, list) and len(field) == 2 else None
        return [*base, name] if base is not None and isinstance(name, str) else None
    if kind == "RefBrack":
        base = _ground_segments(node["refr"])
        index = node.get("index")
        literal = index.get("String") if isinstance(index, dict) else None
        if base is None or not isinstance(literal, dict):
            return None
        return [*base, str(literal["value"])]
    return None


@dataclass(frozen=True)
class _Facts:
    """What the unknown-function check needs from one module."""

    package: tuple[str, ...]
    rules: frozenset[str]  # first segment of every rule and function head
    aliases: frozenset[str]  # names imports bring into scope
    calls: tuple[tuple[str, int, int], ...]  # (dotted name, row, col)
    # (head path under the package, row) of every rule whose head is ground: the paths a
    # data document must not take (OPA's rule tree keys; a computed key cannot conflict).
    heads: tuple[tuple[tuple[str, ...], int], ...] = ()


def _calls(node: Any, found: list[tuple[str, int, int]]) -> None:
    if isinstance(node, list):
        for item in node:
            _calls(item, found)
        return
    if not isinstance(node, dict):
        return
    call = node.get("Call")
    if isinstance(call, dict):
        name = _ref_segments(call.get("fcn"))
        span = call.get("span", {})
        if name:
            found.append((".".join(name), int(span.get("line", 1)), int(span.get("col", 1))))
    for value in node.values():
        _calls(value, found)


@functools.lru_cache(maxsize=512)
def _facts(name: str, source: str) -> _Facts | None:
    """The module's package, rule names, import aliases and calls; None if it does not
    parse (the parse check reports that)."""
    engine: Any = new_interpreter()
    try:
        engine.add_policy(name, source)
        ast = json.loads(engine.get_ast_as_json())[0]["ast"]
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return None
    finally:
        engine = None
    text = source.encode()
    aliases: set[str] = set()
    for item in ast.get("imports", []):
        alias = item.get("as")
        if isinstance(alias, dict) and "start" in alias:
            aliases.add(text[alias["start"] : alias["end"]].decode(errors="replace"))
        else:
            segments = _ref_segments(item.get("refr")) or []
            aliases.update(segments[-1:])
    rules: set[str] = set()
    heads: list[tuple[tuple[str, ...], int]] = []
    for rule in ast.get("rules", []):
        if not isinstance(rule, dict):
            continue
        # `default f(_) := v` is a rule of its own kind, a function all the same.
        head = {"Default": rule["Default"]} if "Default" in rule else rule.get("Spec", {})
        head = head.get("head", head) if "Spec" in rule else head
        for part in head.values() if isinstance(head, dict) else []:
            head_ref = _ref_segments(part.get("refr")) if isinstance(part, dict) else None
            rules.update((head_ref or [])[:1])
            ground = _ground_segments(part.get("refr")) if isinstance(part, dict) else None
            if ground is not None:
                row = int(part.get("span", {}).get("line", 1))
                heads.append((tuple(ground), row))
    found: list[tuple[str, int, int]] = []
    _calls(ast.get("rules", []), found)
    full = tuple(_ref_segments(ast.get("package", {}).get("refr")) or [])
    package = full[1:]
    return _Facts(
        package,
        frozenset(rules),
        frozenset(aliases),
        tuple(found),
        # The heads under the whole package path (`package` above drops its first
        # segment, which the unknown-function check only uses as a grouping key).
        tuple((full + path, row) for path, row in heads),
    )


def rule_paths(modules: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, int]]:
    """Every ground rule path under `data` (package + head) with its first (file, line): what
    OPA's path-conflict check compares data documents with. Modules that do not parse
    contribute nothing (the parse check reports them)."""
    paths: dict[tuple[str, ...], tuple[str, int]] = {}
    for name, source in sorted(modules.items()):
        fact = _facts(name, source)
        for path, row in fact.heads if fact is not None else ():
            paths.setdefault(path, (name, row))
    return paths


_BUILTIN_KNOWN: dict[str, bool] = {}
_BUILTIN_LOCK = threading.Lock()


def _engine_knows(name: str) -> bool:
    """Whether the engine has a builtin `name` (asked once per name and process)."""
    with _BUILTIN_LOCK:
        if name in _BUILTIN_KNOWN:
            return _BUILTIN_KNOWN[name]
    engine: Any = new_interpreter()
    known = True
    try:
        engine.add_policy("probe.rego", f"package probe\np := {name}(0)")
        engine.eval_query_as_json("data.probe.p")
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        known = "could not find function" not in str(exc)
    finally:
        engine = None
    with _BUILTIN_LOCK:
        _BUILTIN_KNOWN[name] = known
    return known


def _unknown_functions(modules: Mapping[str, str]) -> list[dict[str, Any]]:
    """Calls of functions that neither the engine, an extension nor a module defines.

    A call whose first segment is `data`, an import or a rule of its own package is a call
    of a policy function; anything else must be a builtin or an extension.
    """
    facts = {name: _facts(name, source) for name, source in modules.items()}
    rules: dict[tuple[str, ...], set[str]] = {}
    for fact in facts.values():
        if fact is not None:
            rules.setdefault(fact.package, set()).update(fact.rules)
    problems: list[dict[str, Any]] = []
    for name, fact in sorted(facts.items()):
        if fact is None:
            continue
        local = rules.get(fact.package, set()) | fact.aliases | {"data", "input"}
        for called, row, col in fact.calls:
            if called.split(".")[0] in local or called in EXTENSIONS:
                continue
            if not _engine_knows(called):
                problems.append(
                    {
                        "code": REGO_TYPE,
                        "message": f"undefined function {called}",
                        "location": {"file": name, "row": row, "col": col},
                        # The interpreter's words, as `trustd policy check` prints them.
                        "detail": f"could not find function {called}",
                    }
                )
    return problems


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


# Module sets (by digest) known to compile: a revision is compiled when it is stored, again
# when each process installs it, and again when it is activated later.
_COMPILED: OrderedDict[str, None] = OrderedDict()
_COMPILED_MAX = 64
_COMPILED_LOCK = threading.Lock()


def _digest(modules: Mapping[str, str], data_json: str) -> str:
    digest = hashlib.sha256(data_json.encode())
    for name, source in sorted(modules.items()):
        digest.update(b"\0" + name.encode() + b"\0" + source.encode())
    return digest.hexdigest()


def set_errors(engine: EmbeddedEngine) -> list[dict[str, Any]]:
    """The errors of a parsed module set compiled as a whole: `rego_unsafe_var_error`,
    `rego_compile_error`, `rego_type_error` (undefined function)."""
    key = _digest(engine.modules, engine.data_json)
    with _COMPILED_LOCK:
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return []
    failure = engine.compile_failure()
    if failure is not None:
        code, text = failure
        return [_problem(code if code in (REGO_UNSAFE_VAR, REGO_TYPE) else REGO_COMPILE, text)]
    problems = _unknown_functions(engine.modules)
    if not problems:
        with _COMPILED_LOCK:
            _COMPILED[key] = None
            while len(_COMPILED) > _COMPILED_MAX:
                _COMPILED.popitem(last=False)
    return problems


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
    """The error that refuses a module set: OPA's body (`code` invalid_parameter, `message`
    OPA's summary with the first problem, `errors[]`); `detail` is the first problem as
    `file:line:col: message`."""
    first = problems[0]
    where = first.get("location")
    detail = str(first.get("detail", first["message"]))
    if isinstance(where, dict):
        detail = f"{where['file']}:{where['row']}:{where['col']}: {detail}"
    errors = [{k: v for k, v in p.items() if k != "detail"} for p in problems]
    # OPA's summary, then the first problem with its place: clients that show only
    # `message` (opa-python-client) still tell the user where to look.
    summary = PARSE_MESSAGE if first["code"] == REGO_PARSE else COMPILE_MESSAGE
    fields: dict[str, Any] = {"code": "invalid_parameter", "message": f"{summary}: {detail}"}
    if module is not None:
        fields["module"] = module
    return PolicyCompileError(detail, errors=errors, **fields)


def query_refusal(code: str, message: str) -> PolicyCompileError:
    """The error that refuses an ad-hoc query, as OPA's Query API answers (400): `code`
    invalid_parameter, `message` OPA's summary with the problem, `errors[]` with the
    problem's own code (`rego_parse_error`, `rego_type_error`, ...)."""
    problem = _problem(code, message)
    summary = QUERY_PARSE_MESSAGE if code == REGO_PARSE else QUERY_COMPILE_MESSAGE
    return PolicyCompileError(
        message, errors=[problem], code="invalid_parameter", message=f"{summary}: {message}"
    )


def check_query(query: str) -> None:
    """Refuse an ad-hoc query that does not parse, before it is evaluated.

    Raises:
        PolicyCompileError: OPA's Query API body for a `rego_parse_error`, placed in the
            query (`<query>:row:col`).
    """
    if not query.strip():
        # Wrapped in the checking module an empty query would parse (as an empty body);
        # OPA's parser refuses it.
        raise query_refusal(REGO_PARSE, "<query>:1:1: empty query")
    lines = query.count("\n") + 1
    engine: Any = new_interpreter()
    try:
        engine.add_policy("<query>", _QUERY_MODULE % query)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        text = first_line(exc)
        match = _WHERE.match(text)
        if match is not None:
            # Back to the query's own lines (an error at the closing brace is at its end).
            row = min(max(int(match["row"]) - _QUERY_HEADER_LINES, 1), lines)
            text = f"<query>:{row}:{match['col']}: {match['message'].strip()}"
        raise query_refusal(REGO_PARSE, text) from None
    finally:
        engine = None


def check_compiles(modules: Mapping[str, str], data: Mapping[str, Any] | None = None) -> None:
    """Refuse a module set that does not compile, before anything is stored or activated.

    Raises:
        PolicyCompileError: with OPA's `errors[]` in its fields (code `invalid_parameter`,
            message "error(s) occurred while compiling module(s): <first problem>").
    """
    problems = compile_errors(modules, data)
    if problems:
        raise refusal(problems)
