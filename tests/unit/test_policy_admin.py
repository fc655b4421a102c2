"""The admin RBAC decision over the shipped `rego/admin.rego`."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.admin import checked_permission, evaluate, is_permission
from policy.engine import EmbeddedEngine
from policy.errors import UnknownPath

ADMIN_REGO = (Path(__file__).resolve().parents[2] / "rego" / "admin.rego").read_text()


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine({"admin.rego": ADMIN_REGO})


def test_roles_and_reasons(engine: EmbeddedEngine) -> None:
    assert evaluate(engine, "viewer", "admin:entry:read").allowed
    refused = evaluate(engine, "viewer", "admin:entry:write")
    assert not refused.allowed
    assert refused.reason == "role viewer lacks admin:entry:write"
    assert evaluate(engine, "operator", "admin:entry:write").allowed
    assert not evaluate(engine, "operator", "admin:token:write").allowed
    assert evaluate(engine, "admin", "admin:token:write").allowed
    assert evaluate(engine, "nobody", "admin:entry:read").reason == "nobody is not a known role"


def test_an_undefined_answer_refuses() -> None:
    silent = EmbeddedEngine({"a.rego": "package trustd.admin\nimport rego.v1\nother := 1\n"})
    verdict = evaluate(silent, "admin", "admin:entry:read")
    assert not verdict.allowed
    assert verdict.reason == "the admin policy gives no answer"


def test_an_engine_without_the_admin_package_is_an_unknown_path() -> None:
    with pytest.raises(UnknownPath):
        evaluate(EmbeddedEngine({"m.rego": "package m\n"}), "admin", "admin:entry:read")


@pytest.mark.parametrize(
    "name",
    ["admin:entry", "admin:entry:write:x", "user:entry:read", "admin:Entry:read", "admin::read"],
)
def test_malformed_permissions_are_refused_when_declared(name: str) -> None:
    assert not is_permission(name)
    with pytest.raises(ValueError, match="not an admin:<resource>:<action> permission"):
        checked_permission(name)
    assert checked_permission("admin:join-token:write") == "admin:join-token:write"
