"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis).

A real `trustd serve` is started on a scratch data directory (its own SQLite database, CA
and bootstrap admin token, so the destructive CA and revocation operations touch nothing
else). Every operation the document lists is called with generated cases, authenticated as
the bootstrap administrator, under a fixed seed and a time budget, and each response is
checked: `not_a_server_error` (no 5xx) and `response_schema_conformance` (the body matches
the declared schema for its status and media type).

Prints the operations, the cases sent, the server errors and schema violations (with the
first few reproductions), then RESULT lines. The targets are zero of each; there is no
baseline a fuzzing run can be compared with, so the baseline is 0 and the ratio n/a.

    python bench/fuzz.py [--seed 1] [--budget 300] [--examples 25]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.errors import SerializationNotPossible

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PlainServer

CHECK_NAMES = ("not_a_server_error", "response_schema_conformance")


@schemathesis.serializer("application/ocsp-request")
def _ocsp_request(ctx: Any, value: Any) -> bytes:
    """The generated body as raw bytes: an OCSP request is DER (RFC 6960 §4.1), so whatever
    is generated is sent as it is, and must be refused as malformed, never fail."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()  # negative cases: a body of the wrong type


@dataclass
class Tally:
    operations: int = 0
    cases: int = 0
    server_errors: int = 0
    schema_violations: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)


class Server(PlainServer):
    """`trustd serve` on a scratch data directory (SQLite, no TLS) with its admin token."""

    def server_log_errors(self) -> list[str]:
        return [
            line[:300]
            for line in self.log_lines()
            if '"level": "error"' in line or "Traceback" in line
        ]


def _operations(schema: Any) -> list[Any]:
    found = []
    for result in schema.get_all_operations():
        found.append(result.ok())
    # The order is fixed so a seed reproduces a run; the admin token's own revocation and
    # the sign-out go last, so they cannot lock the fuzzer out of the operations after them.
    return sorted(found, key=lambda op: (op.path.startswith("/v1/admin/tokens"), op.label))


def fuzz(server: Server, rng_seed: int, budget: float, examples: int, tally: Tally) -> None:
    document = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = _operations(schema)
    deadline = time.monotonic() + budget
    per_operation = budget / max(len(operations), 1)
    for operation in operations:
        if time.monotonic() > deadline:
            tally.skipped.append(f"{operation.label} (out of time)")
            continue
        stop_at = min(deadline, time.monotonic() + per_operation * 2)
        try:
            _fuzz_operation(server, operation, rng_seed, examples, stop_at, tally)
            tally.operations += 1
        except SerializationNotPossible as exc:
            # A media type schemathesis cannot produce (OCSP requests): that operation is
            # covered by its own tests, and reported here as not fuzzed.
            tally.skipped.append(f"{operation.label} ({str(exc).splitlines()[0]})")
        if not server.alive():
            raise RuntimeError("trustd serve exited during the run")


def _fuzz_operation(
    server: Server, operation: Any, rng_seed: int, examples: int, stop_at: float, tally: Tally
) -> None:
    """Up to `examples` generated cases of one operation, until `stop_at`."""
    load_all_checks()
    checks = CHECKS.get_by_names(list(CHECK_NAMES))
    headers = {"Authorization": f"Bearer {server.token}"}

    @seed(rng_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        if time.monotonic() > stop_at:
            return
        tally.cases += 1
        try:
            response = case.call(base_url=server.url, headers=headers, timeout=30)
        except Exception as exc:  # a transport failure (the server hung up) is a finding
            tally.server_errors += 1
            tally.note(f"{operation.label}: {type(exc).__name__}: {exc}"[:300])
            return
        tally.statuses[response.status_code] += 1
        if response.status_code >= 500:
            tally.server_errors += 1
            tally.note(f"5xx {operation.label}: {case.as_curl_command()[:400]}")
            return
        try:
            case.validate_response(response, checks=checks)
        # schemathesis reports failures as a FailureGroup (a BaseExceptionGroup).
        except (Exception, BaseExceptionGroup) as exc:
            tally.schema_violations += 1
            tally.note(f"schema {operation.label}: {str(exc)[:400]}")

    run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", type=float, default=300, help="seconds of fuzzing")
    parser.add_argument("--examples", type=int, default=25, help="cases per operation")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trustd-fuzz-"))
    tally = Tally()
    server = Server(work)
    started = time.monotonic()
    try:
        fuzz(server, args.seed, args.budget, args.examples, tally)
        logged = server.server_log_errors()
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    print(f"seed {args.seed}, budget {args.budget:.0f} s, {args.examples} cases per operation")
    print(f"operations  {tally.operations} (not fuzzed: {len(tally.skipped)})")
    for label in tally.skipped:
        print(f"  not fuzzed: {label}")
    print(f"cases       {tally.cases} in {elapsed:.1f} s")
    print("statuses    " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items())))
    print(f"5xx         {tally.server_errors}")
    print(f"schema violations {tally.schema_violations}")
    print(f"server log errors {len(logged)}")
    for line in tally.examples:
        print("  " + line.replace("\n", " "))
    for line in logged[:5]:
        print("  log: " + line)
    shutil.rmtree(work, ignore_errors=True)

    def result(measure: str, value: int) -> None:
        verdict = "met" if value == 0 else "not met"
        print(f"RESULT {measure} {value} count baseline 0 ratio n/a target 0 {verdict}")

    # The run reached the API at all (target: at least one case); the others are maxima.
    print(
        f"RESULT fuzz_cases {tally.cases} count baseline 0 ratio n/a target 1 "
        f"{'met' if tally.cases > 0 else 'not met'}"
    )
    result("fuzz_server_errors", tally.server_errors)
    result("fuzz_schema_violations", tally.schema_violations)
    sys.exit(0 if tally.server_errors == 0 and tally.schema_violations == 0 else 1)


if __name__ == "__main__":
    main()
