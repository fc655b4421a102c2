"""The embedded Rego engine wrapper: compile errors, evaluation, thread binding."""

from __future__ import annotations

import json
import threading

import pytest

from policy.engine import UNDEFINED, EmbeddedEngine, Result
from policy.errors import PolicyCompileError, PolicyEvaluationError, UnknownPath

MODULE = """
package trustd.example
import rego.v1

default allow := false
allow if input.user in data.admins
"""


def test_evaluates_rules_against_input_and_data() -> None:
    engine = EmbeddedEngine({"example.rego": MODULE}, {"admins": ["alice"]})
    assert engine.evaluate("data.trustd.example.allow", {"user": "alice"}) is True
    assert engine.evaluate("data.trustd.example.allow", {"user": "bob"}) is False


def test_broken_module_fails_at_load_with_its_location() -> None:
    with pytest.raises(PolicyCompileError, match=r"broken.rego:3"):
        EmbeddedEngine({"broken.rego": "package x\n\nallow if {"})


def test_unknown_rule_is_an_evaluation_error() -> None:
    engine = EmbeddedEngine({"example.rego": MODULE})
    with pytest.raises(PolicyEvaluationError, match="not a valid rule path") as info:
        engine.evaluate("data.nothing.here", {})
    assert "backtrace" not in info.value.detail


def test_each_thread_gets_its_own_engine() -> None:
    engine = EmbeddedEngine({"example.rego": MODULE}, {"admins": ["alice"]})
    results: list[object] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                engine.evaluate("data.trustd.example.allow", {"user": "alice"})
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4


MESH_INPUTS = [
    {
        "source": "spiffe://example.org/ns/web/a",
        "destination": "spiffe://example.org/ns/api/b",
        "port": 8443,
        "protocol": "http",
        "method": "GET",
        "path": "/v1/x",
    },
    {
        "source": "spiffe://example.org/ns/web/a",
        "destination": "spiffe://example.org/ns/api/b",
        "port": 8443,
        "protocol": "http",
        "method": "GET",
        "path": "/v1/admin/x",
    },
    {"source": "nope", "destination": "spiffe://example.org/ns/api/b"},
    {"port": 1},
]


def _rego_bundle() -> tuple[dict[str, str], dict[str, object]]:
    from pathlib import Path

    from policy.testing import load_directory

    bundle = load_directory(Path(__file__).resolve().parents[2] / "rego", tests=False)
    return bundle.modules, bundle.data


@pytest.mark.parametrize("path", ["data.trustd.mesh.allow", "data.trustd.mesh.decision"])
def test_compiled_program_answers_like_the_interpreter(path: str) -> None:
    import json

    modules, data = _rego_bundle()
    compiled = EmbeddedEngine(modules, data)
    interpreted = EmbeddedEngine(modules, data, compiled=False)
    assert compiled.uses_program(path)
    assert not interpreted.uses_program(path)
    for item in MESH_INPUTS:
        document = json.dumps(item)
        assert compiled.query(path, document) == interpreted.query(path, document)


def test_undefined_is_not_null() -> None:
    engine = EmbeddedEngine({"m.rego": "package m\nimport rego.v1\nx if input.a == 1\nn := null\n"})
    assert engine.query("data.m.x", "{}") == UNDEFINED
    assert engine.query("data.m.n", "{}") == Result(True, None)
    assert engine.query("m/x", '{"a": 1}') == Result(True, True)
    assert engine.query("data.m", "{}") == Result(True, {"n": None})


def test_unknown_paths_are_refused() -> None:
    engine = EmbeddedEngine({"m.rego": "package m\nx := 1\n"}, {"d": {"e": 1}})
    assert engine.query("data.d.e", "{}") == Result(True, 1)
    with pytest.raises(UnknownPath):
        engine.query("data.nothing", "{}")
    with pytest.raises(UnknownPath, match="identifiers"):
        engine.query("data.m.x; true", "{}")


def test_extension_failure_is_an_evaluation_error_not_a_crash() -> None:
    engine = EmbeddedEngine({"m.rego": "package m\nx := io.jwt.decode(input.t)\n"})
    assert not engine.uses_program("data.m.x")
    with pytest.raises(PolicyEvaluationError, match="compact JWS"):
        engine.query("data.m.x", '{"t": "not a token"}')
    # The engine is still usable afterwards.
    header = engine.query("data.m.x", '{"t": "eyJhbGciOiJFUzI1NiJ9.e30.AA"}').value[0]
    assert header == {"alg": "ES256"}


# -- OPA fidelity: conflicts, absent input, sets, builtin errors, compile refusal -------------

CONFLICTS = """
package c
import rego.v1

p := 1
p := 2

f(x) := 1
f(x) := 2
g := f(1)

obj[k] := v if { some k, v in {"a": 1} }
obj["a"] := 2
"""


@pytest.mark.parametrize("path", ["data.c.p", "data.c.g", "data.c.obj", "data.c"])
@pytest.mark.parametrize("compiled", [True, False])
def test_conflicts_are_errors_on_every_path(path: str, compiled: bool) -> None:
    # The VM answers "undefined" for the first two: never the answer given to a client.
    engine = EmbeddedEngine({"c.rego": CONFLICTS}, compiled=compiled)
    with pytest.raises(PolicyEvaluationError) as info:
        engine.query(path, "{}")
    assert info.value.opa_code == "eval_conflict_error"
    assert info.value.fields["code"] == "eval_conflict_error"


def test_absent_input_is_undefined_not_null() -> None:
    from policy.engine import NO_INPUT

    engine = EmbeddedEngine({"i.rego": "package i\nimport rego.v1\np := input\nq if not input\n"})
    assert engine.uses_program("data.i.p")
    assert engine.query("data.i.p", NO_INPUT) == UNDEFINED
    assert engine.query("data.i.p", "null") == Result(True, None)
    # `not input` holds when input is undefined, not when it is null.
    assert engine.query("data.i.q", NO_INPUT) == Result(True, True)
    assert engine.query("data.i.q", "null") == UNDEFINED


def test_sets_of_composites_come_back_as_json() -> None:
    engine = EmbeddedEngine({"s.rego": 'package s\nimport rego.v1\np := {[1], {"a": 2}, 3}\n'})
    expected = Result(True, [3, [1], {"a": 2}])
    assert engine.query("data.s.p", "{}") == expected
    # The package path has no compiled program: the interpreter answers, as JSON.
    assert not engine.uses_program("data.s")
    assert engine.query("data.s", "{}") == Result(True, {"p": [3, [1], {"a": 2}]})
    assert engine.evaluate("data.s.p", {}) == [3, [1], {"a": 2}]


def test_undefined_parts_never_leak_into_a_value() -> None:
    source = 'package u\nimport rego.v1\np := {"a": q}\nq if false\nr := "<undefined>"\n'
    engine = EmbeddedEngine({"u.rego": source})
    assert engine.query("data.u.p", "{}") == UNDEFINED
    # A value that is that string is still a value.
    assert engine.query("data.u.r", "{}") == Result(True, "<undefined>")


def test_builtin_errors_strict_and_lenient() -> None:
    source = (
        "package b\nimport rego.v1\ndefault p := false\n"
        "p if { x := to_number(input.n); x > 1 }\nq := 1 + input.n\n"
    )
    engine = EmbeddedEngine({"b.rego": source})
    # OPA by default: the failing builtin leaves its expression undefined; the default holds.
    assert engine.query("data.b.p", '{"n": "abc"}') == Result(True, False)
    with pytest.raises(PolicyEvaluationError) as info:
        engine.query("data.b.p", '{"n": "abc"}', strict=True)
    assert info.value.opa_code == "eval_builtin_error"
    with pytest.raises(PolicyEvaluationError) as typed:
        engine.query("data.b.q", '{"n": "abc"}')
    assert typed.value.opa_code == "eval_type_error"


def test_engine_errors_carry_no_native_backtrace() -> None:
    import os
    import time

    assert os.environ["RUST_LIB_BACKTRACE"] == "0"
    engine = EmbeddedEngine({"e.rego": "package e\nimport rego.v1\nq := 1 + input.n\n"})
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(PolicyEvaluationError) as info:
            engine.query("data.e.q", '{"n": "x"}')
        assert "backtrace" not in str(info.value).lower()
    assert (time.perf_counter() - started) / 20 < 0.02


@pytest.mark.parametrize(
    ("source", "code", "message", "row", "col"),
    [
        ("package x\nimport rego.v1\np if { y }\n", "rego_unsafe_var_error", "unsafe", 3, 8),
        ("package x\nimport rego.v1\np := nope.fn(1)\n", "rego_type_error", "nope.fn", 3, 13),
        (
            "package x\nimport rego.v1\nf(a) := nope.g(a)\np := f(1)\n",
            "rego_type_error",
            "undefined function nope.g",
            3,
            15,
        ),
        ("package x\nimport rego.v1\np :=\n", "rego_parse_error", "expecting", 4, 1),
    ],
)
def test_a_set_that_does_not_compile_is_refused_with_opa_errors(
    source: str, code: str, message: str, row: int, col: int
) -> None:
    from policy.compile import compile_errors

    healthy = "package ok\nimport rego.v1\nallow := true\n"
    with pytest.raises(PolicyCompileError) as info:
        EmbeddedEngine({"ok.rego": healthy, "x.rego": source})
    assert info.value.fields["code"] == "invalid_parameter"
    summary = "parsing" if code == "rego_parse_error" else "compiling"
    assert info.value.fields["message"] == (
        f"error(s) occurred while {summary} module(s): {info.value.detail}"
    )
    assert info.value.detail.startswith(f"x.rego:{row}:{col}: ")
    errors = info.value.fields["errors"]
    assert isinstance(errors, list) and errors[0]["code"] == code
    assert message in errors[0]["message"]
    assert errors[0]["location"] == {"file": "x.rego", "row": row, "col": col}
    assert compile_errors({"ok.rego": healthy, "x.rego": source})[0]["code"] == code
    assert compile_errors({"ok.rego": healthy}) == []


def test_extensions_conflicts_and_long_lines_compile() -> None:
    from policy.compile import compile_errors

    modules = {
        # Extensions are unknown to the compiler, not to the engine.
        "j.rego": "package j\nimport rego.v1\np := io.jwt.decode(input.t)\n",
        # A conflict is an evaluation error in OPA, not a compile error.
        "c.rego": CONFLICTS,
        # A function defined by its default alone.
        "d.rego": "package d\nimport rego.v1\ndefault f(_) := 1\np if f(2) == 1\n",
        # OPA accepts lines of any length; the engine's default stops at 1,024 columns.
        "l.rego": f'package l\nimport rego.v1\np := "{"x" * 5000}"\n',
    }
    assert compile_errors(modules) == []
    assert len(EmbeddedEngine(modules).query("data.l.p", "{}").value) == 5000


def test_extensions_take_the_output_argument_form() -> None:
    from policy.builtins import ARITIES
    from policy.engine import rewrite_output_calls

    source = (
        "package o\nimport rego.v1\n"
        'p contains h if { crypto.sha256("a,b", h) }\n'
        "q := d if {\n\tx := input.t\n\tio.jwt.decode(\n\t\tx,\n\t\t[d, _, _],\n\t)\n}\n"
    )
    rewritten = rewrite_output_calls("o.rego", source, ARITIES)
    assert 'h = crypto.sha256("a,b")' in rewritten
    assert "[d, _, _] = io.jwt.decode(x)" in rewritten
    engine = EmbeddedEngine({"o.rego": source})
    digest = "b2db4fbbd3d6d4e7ffe5cb1e3a3c5ed6c86e23b4bb2e5b3d9f8bdd6ba5fae8f4"
    assert len(engine.query("data.o.p", "{}").value[0]) == len(digest)
    token = "eyJhbGciOiJFUzI1NiJ9.e30.AA"
    assert engine.query("data.o.q", json.dumps({"t": token})) == Result(True, {"alg": "ES256"})
    # The module is stored as written; only the engine sees the rewritten form.
    assert engine.modules["o.rego"] == source


def test_ad_hoc_queries_bind_variables_like_opa() -> None:
    from policy.engine import NO_INPUT

    engine = EmbeddedEngine({"q.rego": "package q\nimport rego.v1\nxs := [1, 2, 3]\n"})
    rows = engine.ad_hoc("some i; data.q.xs[i] > 1; x := data.q.xs[i]", NO_INPUT)
    assert sorted(r["x"] for r in rows) == [2, 3]
    assert engine.ad_hoc("data.q.xs[_] > 5") == []
    assert engine.ad_hoc("y := input.a", '{"a": {"b": 1}}') == [{"y": {"b": 1}}]
    with pytest.raises(PolicyEvaluationError) as info:
        engine.ad_hoc("x := 1 / 0")
    assert info.value.opa_code == "eval_builtin_error"


def test_functions_of_a_package_may_live_in_another_module() -> None:
    from policy.testing import check

    modules = {
        "lib.rego": "package p\nimport rego.v1\ndouble(x) := x * 2\n",
        "use.rego": "package p\nimport rego.v1\nanswer := double(21)\n",
        "other.rego": "package q\nimport rego.v1\nimport data.p\nv := p.double(1)\n",
    }
    assert check(modules, {}) == []
    assert EmbeddedEngine(modules).query("data.p.answer", "{}") == Result(True, 42)


def test_errors_may_be_freed_on_another_thread() -> None:
    import gc

    errors: list[Exception] = []

    def work() -> None:
        engine = EmbeddedEngine({"e.rego": "package e\nimport rego.v1\nq := 1 + input.n\n"})
        try:
            engine.query("data.e", '{"n": "x"}')
        except PolicyEvaluationError as exc:
            errors.append(exc)
        try:
            EmbeddedEngine({"x.rego": "package x\nimport rego.v1\np if { y }\n"})
        except PolicyCompileError as exc:
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert len(errors) == 2
    for error in errors:
        # No frame below the method boundary (they hold the worker's regorus objects).
        tb = error.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        assert tb is not None and tb.tb_frame.f_code.co_name == "bound"
        assert error.__context__ is None
    # Freed here, on another thread: an engine freed here would be an unraisable error.
    errors.clear()
    gc.collect()


def test_error_paths_leave_no_cycle_holding_a_threads_regorus_objects() -> None:
    """Every error the engine raises or handles is freed by reference counting on its own
    thread. One caught in a reference cycle (an error held by a local of a frame in its
    own traceback) kept this thread's prepared state alive after the thread ended, and the
    collector, on whichever thread it ran, then freed its regorus objects there."""
    import gc
    import weakref

    from policy.engine import _thread_states

    states: list[weakref.ref[object]] = []
    errors: list[weakref.ref[BaseException]] = []
    answers: list[Result] = []
    module = "package s\nimport rego.v1\nnumber := to_number(input.text)\nsum := 1 + input.n\n"

    def work() -> None:
        engine = EmbeddedEngine({"s.rego": module})
        assert engine.uses_program("data.s.number")
        # The VM answers undefined, the interpreter fails with a builtin error the engine
        # handles itself (OPA's lenient builtins): no error leaves.
        answers.append(engine.query("data.s.number", '{"text": "x"}'))
        calls = [
            lambda: engine.query("data.s.number", '{"text": "x"}', strict=True),
            lambda: engine.query("data.s.sum", '{"n": "x"}'),
            lambda: engine.evaluate("data.s.sum", {"n": "x"}),
            lambda: engine.ad_hoc("x := 1 / 0"),
            lambda: EmbeddedEngine({"x.rego": "package x\nimport rego.v1\np if { y }\n"}),
        ]
        for call in calls:
            try:
                call()
            except (PolicyEvaluationError, PolicyCompileError) as exc:
                errors.append(weakref.ref(exc))
        states.extend(weakref.ref(state) for _, state in _thread_states().values())

    # The collector stays off until the checks are made: it would otherwise free what a
    # cycle holds at its next run, on this thread or the worker's, hiding the cycle.
    enabled = gc.isenabled()
    gc.disable()
    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        assert answers == [UNDEFINED]
        assert len(errors) == 5 and states
        # Freed as each was dropped, and the states with their thread.
        alive_errors = [ref() is not None for ref in errors]
        alive_states = [ref() is not None for ref in states]
    finally:
        if enabled:
            gc.enable()
    assert alive_errors == [False] * 5
    assert alive_states == [False] * len(states)
    # Had anything survived, the collector would free it here, on another thread: an
    # unraisable error, which fails the test.
    gc.collect()
