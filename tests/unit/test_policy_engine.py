"""The embedded Rego engine wrapper: compile errors, evaluation, thread binding."""

from __future__ import annotations

import threading

import pytest

from policy.engine import EmbeddedEngine
from policy.errors import PolicyCompileError, PolicyEvaluationError

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
