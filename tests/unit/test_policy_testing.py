"""`trustd policy test` / `check` machinery, and the shipped rego/ policies."""

from __future__ import annotations

from pathlib import Path

from policy.testing import check, load_directory, run_tests

REGO = Path(__file__).resolve().parents[2] / "rego"


def test_shipped_policies_pass_their_tests() -> None:
    bundle = load_directory(REGO, tests=True)
    results = run_tests(bundle.modules, bundle.data)
    assert len(results) >= 20
    assert [r for r in results if r.outcome != "pass"] == []


def test_shipped_policies_check_clean() -> None:
    bundle = load_directory(REGO, tests=False)
    assert check(bundle.modules, bundle.data) == []


def test_failures_and_errors_are_reported() -> None:
    source = "package t\nimport rego.v1\ntest_ok if true\ntest_no if 1 == 2\ntest_err if 1 / 0\n"
    outcomes = {r.name: r.outcome for r in run_tests({"t_test.rego": source}, {})}
    assert outcomes == {
        "data.t.test_ok": "pass",
        "data.t.test_no": "fail",
        "data.t.test_err": "error",
    }


def test_check_names_file_and_line() -> None:
    broken = {"bad.rego": "package x\nimport rego.v1\nallow if {\n"}
    assert check(broken, {}) == ["bad.rego:4:1: expecting expression"]
    problems = check({"u.rego": "package u\nimport rego.v1\ny := nope.fn(1)\n"}, {})
    assert problems == ["u.rego:3:13: could not find function nope.fn"]


def test_test_files_are_loaded_only_when_asked(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\n")
    (tmp_path / "p_test.rego").write_text("package p\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "data.json").write_text('{"k": 1}')
    assert set(load_directory(tmp_path, tests=False).modules) == {"p.rego"}
    with_tests = load_directory(tmp_path, tests=True)
    assert set(with_tests.modules) == {"p.rego", "p_test.rego"}
    assert with_tests.data == {"cfg": {"k": 1}}
