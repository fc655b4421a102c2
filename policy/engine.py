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

import itertools
import json
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import regorus

from policy.builtins import register_extensions
from policy.errors import PolicyCompileError, PolicyEvaluationError, UnknownPath

# A data path as the Data API names it: `data` then identifiers (OPA's `ref` subset that is
# safe to splice into a query; anything else is refused before it reaches the parser).
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The compiled VM's marker for an undefined result.
_RVM_UNDEFINED = '"<undefined>"'
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

    def query(self, path: str, input_json: str) -> Result:
        """Evaluate the document at `path` (`data.pkg[.rule]`) for a JSON-encoded input.

        Raises:
            UnknownPath: no package, rule or data document lives at or under `path`.
            PolicyEvaluationError: the evaluation failed.
        """
        ...


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


def _guard(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except BaseException as exc:
        message = _failure(exc)
    raise PolicyEvaluationError(message, rule=what)


def _on_clone(engine: Any, what: str, call: Callable[[Any], Any]) -> Any:
    """Run `call` on a clone of `engine` and drop the clone before any error leaves: a
    regorus object freed on another thread (where a traceback may end up) is an error."""
    clone = engine.clone()
    try:
        return call(clone)
    except BaseException as exc:
        message = _failure(exc)
    finally:
        clone = None
    raise PolicyEvaluationError(message, rule=what)


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

    def __init__(
        self,
        modules: Mapping[str, str],
        data: Mapping[str, Any] | None = None,
        *,
        compiled: bool = True,
    ) -> None:
        self._modules = dict(modules)
        self._data = dict(data or {})
        self._data_json = json.dumps(self._data)
        self._compiled = compiled
        self._serial = next(_SERIALS)
        # Compile once here so a broken module fails at load time, not at first decision.
        state = self._prepared()
        self.packages = frozenset(
            tuple(p.split(".")[1:]) for p in _guard("packages", state.engine.get_packages)
        )

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
        engine: Any = regorus.Engine()
        register_extensions(engine)
        failed: tuple[str, str] | None = None
        for name, source in self._modules.items():
            try:
                engine.add_policy(name, source)
            except BaseException as exc:
                failed = (name, _failure(exc))
                break
        if failed is not None:
            engine = None
            raise PolicyCompileError(failed[1], module=failed[0])
        if self._data:
            engine.add_data(self._data)
        return engine

    def evaluate(self, rule: str, input: Any) -> Any:
        def run(engine: Any) -> Any:
            engine.set_input(input)
            return engine.eval_rule(rule)

        return _on_clone(self._prepared().engine, rule, run)

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

    def query(self, path: str, input_json: str) -> Result:
        segments = parse_path(path)
        if not self.is_known(segments):
            raise UnknownPath(f"no policy or data at data.{'.'.join(segments)}")
        full = rule_path(segments)
        state = self._prepared()
        vm = self._program(state, full) if self._compiled else None
        if vm is not None:

            def run_vm() -> str:
                vm.set_input_json(input_json)
                return str(vm.execute_entry_point(full))

            out = _guard(full, run_vm)
            return UNDEFINED if out == _RVM_UNDEFINED else Result(True, json.loads(out))

        def run(engine: Any) -> Any:
            engine.set_input_json(input_json)
            return engine.eval_query(full)

        rows = _on_clone(state.engine, full, run).get("result") or []
        if not rows:
            return UNDEFINED
        return Result(True, rows[0]["expressions"][0]["value"])

    def _program(self, state: _ThreadState, full: str) -> Any:
        if full in state.programs:
            return state.programs[full]
        vm: Any = None
        try:
            program = regorus.Program.compile_from_modules(
                self._data_json, list(self._modules.items()), [full]
            )
            vm = regorus.Rvm()
            vm.load_program(program)
            vm.set_data_json(self._data_json)
        except BaseException as exc:
            _failure(exc)
            # Not compilable (a package path, an extension builtin): the interpreter answers.
            vm = None
        state.programs[full] = vm
        return vm

    def uses_program(self, path: str) -> bool:
        """Whether `path` is answered by the compiled VM on this thread."""
        full = rule_path(parse_path(path))
        return self._compiled and self._program(self._prepared(), full) is not None
