"""A short, seeded slice of `make fuzz` (bench/fuzz.py): every operation of a real
`trustd serve` is called with cases generated from its OpenAPI document, and no answer may
be a 5xx or fall outside its declared schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FUZZ = Path(__file__).parents[2] / "bench" / "fuzz.py"


@pytest.mark.timeout(240)
def test_a_seeded_fuzzing_slice_finds_no_server_error_or_schema_violation() -> None:
    env = {**os.environ, "PYTHONPATH": str(FUZZ.parents[1])}
    run = subprocess.run(
        [sys.executable, str(FUZZ), "--seed", "1", "--budget", "45", "--examples", "8"],
        capture_output=True,
        text=True,
        timeout=220,
        env=env,
        check=False,
    )
    report = run.stdout + run.stderr[-3000:]
    results = {
        line.split()[1]: int(line.split()[2])
        for line in run.stdout.splitlines()
        if line.startswith("RESULT ")
    }
    # The slice reached the operations at all (a run that sent nothing proves nothing).
    assert results.get("fuzz_cases", 0) > 200, report
    assert results.get("fuzz_server_errors") == 0, report
    assert results.get("fuzz_schema_violations") == 0, report
    assert run.returncode == 0, report
