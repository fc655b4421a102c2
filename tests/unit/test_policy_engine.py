"""The embedded Rego engine wrapper: compile errors, evaluation, thread binding."""

from __future__ import annotations

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
