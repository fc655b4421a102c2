"""Policy engines: one protocol, two implementations.

`EmbeddedEngine` evaluates with the `regorus` module in this process. A regorus object may
only be used on the thread that created it and it holds the GIL while it evaluates, so the
engine keeps one prepared state per thread and the service scales decisions with processes.
Each state holds the interpreter (`Engine`, cloned per evaluation so no input leaks from
one decision into the next) and, per queried path, the compiled program (`Program` + `Rvm`,
several times faster) when the path compiles; paths the compiler cannot take (a builtin that
only exists as a Python extension, a package rather than a rule) use the interpreter.

`policy.remote.RemoteEngine` asks an OPA server (or another trustd) through
`opa-python-client`: a module of its own, so processes that only evaluate locally (the agent)
do not load an HTTP client stack they never use.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

# The engine wraps its errors with a native backtrace when RUST_BACKTRACE asks for one
# (Rust std::backtrace, read once per process at the first capture): over 100 ms per failed
# decision, for a trace `first_line` drops anyway. RUST_LIB_BACKTRACE governs library
# captures only, so panics keep their backtrace for whoever debugs the engine. Set before
# the engine first runs.
os.environ["RUST_LIB_BACKTRACE"] = "0"

import regorus

from policy import json_text
from policy.builtins import ARITIES, register_extensions
from policy.errors import (
    EVAL_BUILTIN,
    EVAL_CONFLICT,
    EVAL_INTERNAL,
    EVAL_TYPE,
    REGO_TYPE,
    REGO_UNSAFE_VAR,
    PolicyCompileError,
    PolicyError,
    PolicyEvaluationError,
    UnknownPath,
)

# A data path as the Data API names it: `data` then identifiers (OPA's `ref` subset that is
# safe to splice into a query; anything else is refused before it reaches the parser).
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Queried paths an engine remembers resolving.
_RESOLVED_PATHS = 1024
# The compiled VM's marker for an undefined value (the whole result, or a part of it).
_RVM_UNDEFINED = '"<undefined>"'
# The input text for "no input": JSON `null` that no canonical input equals (they carry no
# whitespace). OPA leaves `input` undefined when a request has none (Data API: "If the
# input document is not provided, the input document is undefined"), not `null`.
NO_INPUT = " null"
# regorus messages -> OPA's error codes (topdown: conflict, type and builtin errors).
_CONFLICT = re.compile(
    r"conflict|multiple outputs|generated multiple times|must not produce multiple", re.I
)
_TYPE = re.compile(
    r"expects .*argument|expects .*(collection|keys)|requires .*argument|expects base"
    r"|operand (\d+ )?must be|must be array/set|is not an object|marshaling option"
    r"|requires path",
    re.I,
)
_UNKNOWN_FUNCTION = re.compile(r"could not find function|unknown function", re.I)
_PANIC = re.compile(r"panick?ed|PanicException", re.I)
# regorus diagnostics: `--> file.rego:3:13`, the source excerpt, then `error: message`.
_LOCATION = re.compile(r"-->\s*(\S+:\d+:\d+)")
_MESSAGE = re.compile(r"^error:\s*(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Result:
    """The value of a path: `defined` is False when the document is undefined (OPA answers
    `{}` without `result` then), which is not the same as a `null` value."""

    defined: bool
    value: Any = None


UNDEFINED = Result(False)


class PolicyEngine(Protocol):
    def evaluate(self, rule: str, input: Any) -> Any:
        """Evaluate `rule` (`data.pkg.rule`) for `input`; None when the rule is undefined.

        Raises:
            PolicyEvaluationError: the evaluation failed.
        """
        ...

    def query(self, path: str, input_json: str, *, strict: bool = False) -> Result:
        """Evaluate the document at `path` (`data.pkg[.rule]`) for a JSON-encoded input

        `strict` is OPA's `strict-builtin-errors`: a failing builtin fails the query
        instead of leaving its expression undefined.
        (`NO_INPUT`: none, `input` stays undefined).

        Raises:
            UnknownPath: no package, rule or data document lives at or under `path`.
            PolicyEvaluationError: the evaluation failed.
        """
        ...


# Policy size limits. The engine's default refuses lines over 1,024 columns, which OPA
# accepts (generated policies, embedded certificates and schemas); request bodies are
# bounded before they reach the parser, so the limits only need to stop runaway input.
MAX_COLUMNS = 1 << 16
MAX_POLICY_BYTES = 1 << 22
MAX_LINES = 1 << 17


def new_interpreter() -> Any:
    """A `regorus.Engine` with trustd's policy size limits (no modules, no extensions)."""
    engine: Any = regorus.Engine()
    engine.set_policy_length_config(
        max_col=MAX_COLUMNS, max_file_bytes=MAX_POLICY_BYTES, max_lines=MAX_LINES
    )
    return engine


def _dotted(ref: Any) -> str | None:
    """`a.b.c` of a `Var`/`RefDot` chain in the engine's AST, None for anything else."""
    if not isinstance(ref, dict) or len(ref) != 1:
        return None
    kind, node = next(iter(ref.items()))
    if kind == "Var":
        return str(node["value"])
    if kind == "RefDot":
        base = _dotted(node["refr"])
        field = node.get("field")
        if base is None or not (isinstance(field, list) and len(field) == 2):
            return None
        return f"{base}.{field[1]}"
    return None


def _output_calls(node: Any, arities: Mapping[str, int], found: list[Any]) -> None:
    if isinstance(node, list):
        for item in node:
            _output_calls(item, arities, found)
        return
    if not isinstance(node, dict):
        return
    literal = node.get("literal")
    if isinstance(literal, dict) and "Expr" in literal:
        call = literal["Expr"].get("expr", {}).get("Call")
        if isinstance(call, dict):
            name = _dotted(call.get("fcn"))
            if name is not None and len(call.get("params", [])) == arities.get(name, -2) + 1:
                found.append(call)
    for value in node.values():
        _output_calls(value, arities, found)


def rewrite_output_calls(name: str, source: str, arities: Mapping[str, int]) -> str:
    """`f(x, out)` -> `out = f(x)` for extension calls: Rego's output-argument form
    (OPA policy reference, "Built-in Functions": the last argument may be the output),
    which the engine supports for its own builtins only. Unchanged when no extension is
    called that way or the module does not parse (the engine then reports it)."""
    if not any(f"{n}(" in source for n in arities):
        return source
    engine = new_interpreter()
    try:
        engine.add_policy(name, source)
        modules = json.loads(engine.get_ast_as_json())
    except BaseException as exc:
        _failure(exc)
        return source
    finally:
        engine = None
    found: list[Any] = []
    for module in modules:
        _output_calls(module.get("ast"), arities, found)
    text = source.encode()
    for call in sorted(found, key=lambda c: c["span"]["start"], reverse=True):
        start, end = call["span"]["start"], call["span"]["end"]
        fcn_end = next(iter(call["fcn"].values()))["span"]["end"]
        if text[start:fcn_end].decode(errors="replace") != _dotted(call["fcn"]):
            continue  # spans are not byte offsets here (non-ASCII text before): leave it
        # Argument boundaries: the comma before each argument's own span (a string's span
        # excludes its quotes, so spans alone do not delimit the source text).
        firsts = [next(iter(p.values()))["span"]["start"] for p in call["params"]]
        opening = text.index(b"(", fcn_end) + 1
        cuts = [text.rindex(b",", opening, first) for first in firsts[1:]]
        closing = text.rindex(b")", opening, end)
        bounds = [opening, *(c + 1 for c in cuts)]
        stops = [*cuts, closing]
        pieces = [text[a:b].strip() for a, b in zip(bounds, stops, strict=True)]
        # A trailing comma after the output argument (`f(x, out,\n)`) is not part of it.
        pieces[-1] = pieces[-1].removesuffix(b",").rstrip()
        function = text[start:fcn_end]
        # No parentheses around the output term: after a newline, `(` would continue the
        # previous line's reference as a call.
        rewritten = pieces[-1] + b" = " + function + b"(" + b", ".join(pieces[:-1]) + b")"
        text = text[:start] + rewritten + text[end:]
    return text.decode()


def parse_path(path: str) -> list[str]:
    """`data.a.b`, `a/b` or `a.b` -> `["a", "b"]`.

    Raises:
        UnknownPath: a segment is not a Rego identifier.
    """
    text = path.strip().strip("/").replace("/", ".")
    segments = [s for s in text.split(".") if s]
    if segments and segments[0] == "data":
        segments = segments[1:]
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise UnknownPath(f"{path!r} is not a data path: segments must be identifiers")
    return segments


def rule_path(segments: list[str]) -> str:
    return ".".join(["data", *segments])


def first_line(exc: BaseException) -> str:
    """The useful part of a regorus message as `file:line:col: message`, without the
    source excerpt and native stack trace regorus appends."""
    text = str(exc).split("Stack backtrace", 1)[0]
    where = _LOCATION.search(text)
    messages = _MESSAGE.findall(text)
    if where and messages:
        return f"{where.group(1)}: {messages[0].strip()}"
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(kept) or type(exc).__name__


def _failure(exc: BaseException) -> str:
    # A Rust panic surfaces as `PanicException`, a BaseException: it is caught at this
    # boundary so a hostile input costs one decision, never the worker.
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc
    return first_line(exc)


def error_code(exc: BaseException, message: str) -> str:
    """OPA's code for an engine failure: conflicts, type errors, unknown functions and
    unsafe variables by their message; a panic is internal; any other failure while
    evaluating is a builtin's (`eval_builtin_error`: division by zero, a malformed
    argument, an extension that raised)."""
    if type(exc).__name__ == "PanicException" or _PANIC.search(message):
        return EVAL_INTERNAL
    if _CONFLICT.search(message):
        return EVAL_CONFLICT
    if _TYPE.search(message):
        return EVAL_TYPE
    if _UNKNOWN_FUNCTION.search(message):
        return REGO_TYPE
    if "use of undefined variable" in message:
        return REGO_UNSAFE_VAR
    return EVAL_BUILTIN


def _evaluation_error(exc: BaseException, what: str) -> PolicyEvaluationError:
    message = _failure(exc)
    return PolicyEvaluationError(message, rule=what, code=error_code(exc, message))


def _guard(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except BaseException as exc:
        error = _evaluation_error(exc, what)
    try:
        raise error
    finally:
        # The error's traceback holds this frame, whose local would hold the error: a
        # cycle only the collector frees, on whichever thread it runs. The frames of the
        # engine's methods hold their thread's regorus objects (its prepared state, a
        # VM), which the binding refuses to free on another thread.
        del error


def _on_clone(engine: Any, what: str, call: Callable[[Any], Any]) -> Any:
    """Run `call` on a clone of `engine` and drop the clone before any error leaves: a
    regorus object freed on another thread (where a traceback may end up) is an error."""
    clone = engine.clone()
    try:
        return call(clone)
    except BaseException as exc:
        error = _evaluation_error(exc, what)
    finally:
        clone = None
    try:
        raise error
    finally:
        del error  # see `_guard`


P = ParamSpec("P")
R = TypeVar("R")


def _thread_bound(method: Callable[P, R]) -> Callable[P, R]:
    """Raise the method's policy errors without their tracebacks and chained errors: their
    frames hold this thread's regorus objects, and an error may be handled, and freed, on
    another thread (a regorus object freed there is an error of its own)."""

    @functools.wraps(method)
    def bound(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except PolicyError as exc:
            error = exc
        error.__context__ = error.__cause__ = None
        try:
            raise error.with_traceback(None)
        finally:
            del error  # see `_guard`

    return bound


@dataclass
class _ThreadState:
    engine: Any
    # Per path: the loaded VM, or None when the path does not compile (interpreter only).
    programs: dict[str, Any] = field(default_factory=dict)


# Per thread: prepared states by engine serial, with a weak reference to their engine.
# States live here rather than on the engine so that they are always freed on their own
# thread: when an engine is discarded, each thread drops its state the next time it
# prepares one (a regorus object must not be freed on another thread).
_THREAD = threading.local()
_SERIALS = itertools.count()


def _thread_states() -> dict[int, tuple[weakref.ref[EmbeddedEngine], _ThreadState]]:
    states: dict[int, tuple[weakref.ref[EmbeddedEngine], _ThreadState]] | None = getattr(
        _THREAD, "states", None
    )
    if states is None:
        states = _THREAD.states = {}
    return states


class EmbeddedEngine:
    """Rego modules and data evaluated in-process, one prepared state per thread."""

    @_thread_bound
    def __init__(
        self,
        modules: Mapping[str, str],
        data: Mapping[str, Any] | None = None,
        *,
        compiled: bool = True,
        check: bool = True,
    ) -> None:
        """Parse `modules` and, with `check`, compile them as a whole set as OPA does
        before it activates one, so a broken set fails here, not at every decision.

        Raises:
            PolicyCompileError: a module does not parse, or the set does not compile
                (`errors` holds OPA's list: code, message, location).
        """
        self._modules = dict(modules)
        self._data = dict(data or {})
        self.data_json = json.dumps(self._data)
        self._compiled = compiled
        self._serial = next(_SERIALS)
        # Queried paths as the engine names them (`data.a.b`), once each is known to exist.
        self._resolved: dict[str, str] = {}
        self.packages = frozenset(
            tuple(p.split(".")[1:])
            for p in _guard("packages", self._prepared().engine.get_packages)
        )
        if check:
            from policy.compile import refusal, set_errors

            problems = set_errors(self)
            if problems:
                # Free this thread's prepared engine here: the error may travel to another
                # thread, and a regorus object must be freed on the thread that made it.
                _thread_states().pop(self._serial, None)
                raise refusal(problems)

    @property
    def modules(self) -> dict[str, str]:
        return dict(self._modules)

    def _prepared(self) -> _ThreadState:
        states = _thread_states()
        found = states.get(self._serial)
        if found is not None:
            return found[1]
        for serial in [k for k, (ref, _) in states.items() if ref() is None]:
            del states[serial]
        state = _ThreadState(self._new_engine())
        states[self._serial] = (weakref.ref(self), state)
        return state

    def _new_engine(self) -> Any:
        engine = new_interpreter()
        register_extensions(engine)
        failed: tuple[str, str] | None = None
        for name, source in self._modules.items():
            try:
                engine.add_policy(name, rewrite_output_calls(name, source, ARITIES))
            except BaseException as exc:
                failed = (name, _failure(exc))
                break
        if failed is not None:
            engine = None
            from policy.compile import parse_errors, refusal

            problems = parse_errors({failed[0]: self._modules[failed[0]]})
            if problems:
                raise refusal(problems, module=failed[0])
            raise PolicyCompileError(failed[1], module=failed[0])
        if self._data:
            engine.add_data(self._data)
        return engine

    @_thread_bound
    def evaluate(self, rule: str, input: Any) -> Any:
        """The value of `rule` as JSON gives it (a set is a sorted array); None when the
        rule is undefined.

        Raises:
            PolicyEvaluationError: the evaluation failed, or `rule` is no rule.
        """

        def run(engine: Any) -> str:
            engine.set_input(input)
            return str(engine.eval_rule_as_json(rule))

        out = _on_clone(self._prepared().engine, rule, run)
        return None if out == _RVM_UNDEFINED else json.loads(out)

    def is_known(self, segments: list[str]) -> bool:
        """Whether a package, a rule in one, or a data document lives at `segments`."""
        key = tuple(segments)
        for package in self.packages:
            # A package at, above or below the path: its rules or subtree can answer.
            if package[: len(key)] == key or key[: len(package)] == package:
                return True
        node: Any = self._data
        for segment in segments:
            if not isinstance(node, dict) or segment not in node:
                return False
            node = node[segment]
        return True

    @_thread_bound
    def query(self, path: str, input_json: str, *, strict: bool = False) -> Result:
        """The document at `path` for a JSON-encoded input (`NO_INPUT`: none).

        `strict` is OPA's `strict-builtin-errors`: a failing builtin fails the query.
        Otherwise, as OPA does by default, it leaves its expression undefined; the compiled
        VM evaluates that way, the interpreter cannot, so where only the interpreter
        answers a failing builtin is still an error (refused, never a different answer).

        Raises:
            UnknownPath: no package, rule or data document lives at or under `path`.
            PolicyEvaluationError: the evaluation failed (`code` is OPA's).
        """
        full = self._resolved.get(path)
        if full is None:
            segments = parse_path(path)
            if not self.is_known(segments):
                raise UnknownPath(f"no policy or data at data.{'.'.join(segments)}")
            full = rule_path(segments)
            # Modules and data never change in an engine: a path's answer is kept (for a
            # bounded number of paths: any path below a package is known).
            if len(self._resolved) < _RESOLVED_PATHS:
                self._resolved[path] = full
        state = self._prepared()
        # The VM takes an absent input for `null`, and evaluates builtins leniently.
        use_vm = self._compiled and not strict and input_json != NO_INPUT
        vm = self._program(state, full) if use_vm else None
        if vm is None:
            return self._interpret(state, full, input_json)

        def run_vm() -> str:
            vm.set_input_json(input_json)
            return str(vm.execute_entry_point(full))

        try:
            out = _guard(full, run_vm)
        except PolicyEvaluationError:
            # The interpreter is the reference: it reports the error OPA reports, or
            # answers what the VM could not.
            return self._interpret(state, full, input_json)
        if _RVM_UNDEFINED not in out:
            return Result(True, json_text.loads(out))
        # The VM also answers "undefined" for a conflict (two values for one complete
        # rule or function call), and marks undefined parts inside a value that OPA
        # leaves undefined as a whole: the interpreter decides.
        try:
            return self._interpret(state, full, input_json)
        except PolicyEvaluationError as exc:
            if out == _RVM_UNDEFINED and exc.opa_code == EVAL_BUILTIN:
                return UNDEFINED
            raise

    def _interpret(self, state: _ThreadState, full: str, input_json: str) -> Result:
        def run(engine: Any) -> str:
            if input_json != NO_INPUT:
                engine.set_input_json(input_json)
            return str(engine.eval_query_as_json(full))

        # As JSON text: a set of arrays or objects has no Python form (unhashable).
        rows = json_text.loads(_on_clone(state.engine, full, run)).get("result") or []
        if not rows:
            return UNDEFINED
        return Result(True, rows[0]["expressions"][0]["value"])

    def _program(self, state: _ThreadState, full: str) -> Any:
        if full in state.programs:
            return state.programs[full]
        vm: Any = None
        try:
            program = regorus.Program.compile_from_modules(
                self.data_json, list(self._modules.items()), [full]
            )
            vm = regorus.Rvm()
            vm.load_program(program)
            vm.set_data_json(self.data_json)
        except BaseException as exc:
            _failure(exc)
            # Not compilable (a package path, an extension builtin): the interpreter answers.
            vm = None
        state.programs[full] = vm
        return vm

    @_thread_bound
    def ad_hoc(self, query: str, input_json: str = NO_INPUT) -> list[dict[str, Any]]:
        """OPA's ad-hoc query (`POST /v1/query`): the variable bindings of every way
        `query` holds, `[]` when it does not (the interpreter: strict builtin errors).

        Raises:
            PolicyEvaluationError: the query does not parse or its evaluation failed.
        """

        def run(engine: Any) -> str:
            if input_json != NO_INPUT:
                engine.set_input_json(input_json)
            return str(engine.eval_query_as_json(query))

        rows = json.loads(_on_clone(self._prepared().engine, "query", run)).get("result") or []
        # The engine reports an expression that evaluated to false as a row; in Rego (and
        # OPA's Query API) the query does not hold for it, so it yields no bindings.
        return [
            dict(row.get("bindings") or {})
            for row in rows
            if all(e.get("value") is not False for e in row.get("expressions") or ())
        ]

    def compile_failure(self) -> tuple[str, str] | None:
        """Compile the whole module set (the engine does so at its first evaluation): OPA's
        code and `file:line:col: message` of the failure, None when the set compiles."""
        clone = self._prepared().engine.clone()
        failure: tuple[str, str] | None = None
        try:
            clone.eval_query_as_json("1")
        except BaseException as exc:
            # Only text leaves: the exception's frames hold the clone, which must be
            # freed on this thread.
            message = _failure(exc)
            failure = (error_code(exc, message), message)
        finally:
            clone = None
        return failure

    def uses_program(self, path: str) -> bool:
        """Whether `path` is answered by the compiled VM on this thread."""
        full = rule_path(parse_path(path))
        return self._compiled and self._program(self._prepared(), full) is not None
