"""OPA's compliance cases against a real `trustd serve`, driven over HTTP as OPA is driven.

For every case: its modules are PUT under `/v1/policies`, its data PUT under `/v1/data`
(OPA Data API "Create or Overwrite a Document"), and its query asked through
`POST /v1/data/{path}` when it is `data.<path> = <var>` (the Data API answers the binding),
otherwise through `POST /v1/query` (OPA's ad-hoc query API). The answer is compared with
the case's `want_result` bindings, or with `want_error` / `want_error_code`; a case with
`strict_error` asks with `strict-builtin-errors=true`, as OPA's own runner evaluates it.
After each case the revision that was active before it is activated again, so a case that
leaves a broken module behind does not fail the next one.

The same cases are also run on the plain engine (regorus in-process, no extensions): the
baseline a policy service built on it should never fall below.

Prints `N passed, M failed, K skipped`, a table of failure causes, the strict count (an
expected error must carry OPA's error code), the cases the plain engine passes and trustd
fails, and one line:

    RESULT opa_compliance_pass <pct> % baseline <pct> ratio <r> target 85 met|not met

Usage: python bench/opa_compliance.py --cases ../shared/opa-compliance/v1
       [--only SUBSTRING] [--failures failures.jsonl] [--data-via-bundle] [--floor N]

`--data-via-bundle` loads a case's data through the admin bundle API when `PUT /v1/data`
is refused (to measure what the engine layer answers, independent of the Data API);
`--floor N` exits 1 when fewer than N cases pass.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PlainServer

# `data.a.b = x`: the Data API answers it (`x` is the document at data.a.b).
_DATA_QUERY = re.compile(
    r"data((?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*=\s*(?!(?:input|data)\b)([A-Za-z_][A-Za-z0-9_]*)"
)
_ERROR_CODE = re.compile(r"\b(rego_[a-z_]+_error|eval_[a-z_]+_error)\b")
TARGET = 85.0


@dataclass
class Case:
    file: str
    note: str
    modules: list[str]
    query: str
    data: dict[str, Any] | None
    input: Any
    has_input: bool
    want_result: list[dict[str, Any]] | None
    want_error: str | None
    want_code: str | None
    sort_bindings: bool
    strict_error: bool
    skip: str = ""


@dataclass
class Outcome:
    """What one side answered: bindings, or an error (`code`, `message`, HTTP status)."""

    bindings: list[dict[str, Any]] | None = None
    code: str | None = None
    message: str = ""
    status: int = 0
    stage: str = "query"
    notes: list[str] = field(default_factory=list)


def load_cases(directory: Path, only: str | None) -> list[Case]:
    cases = []
    for path in sorted(directory.glob("*/*.json")):
        for raw in json.loads(path.read_text())["cases"]:
            if only and only not in raw["note"]:
                continue
            has_input = "input" in raw or "input_term" in raw
            value: Any = raw.get("input")
            skip = ""
            if "input_term" in raw:
                try:
                    value = json.loads(raw["input_term"])
                except ValueError:
                    # A Rego term (sets, trailing commas) that JSON cannot carry: OPA's
                    # HTTP API cannot be given it either.
                    skip = "input is a Rego term JSON cannot carry"
            want_code = raw.get("want_error_code")
            if want_code is None and raw.get("want_error"):
                found = _ERROR_CODE.search(raw["want_error"])
                want_code = found.group(1) if found else None
            cases.append(
                Case(
                    file=f"{path.parent.name}/{path.name}",
                    note=raw["note"],
                    modules=raw.get("modules") or [],
                    query=raw["query"],
                    data=raw.get("data"),
                    input=value,
                    has_input=has_input,
                    want_result=raw.get("want_result"),
                    want_error=raw.get("want_error"),
                    want_code=want_code,
                    sort_bindings=bool(raw.get("sort_bindings")),
                    strict_error=bool(raw.get("strict_error")),
                    skip=skip,
                )
            )
    return cases


# -- comparing ---------------------------------------------------------------------------

_RANK = {type(None): 0, bool: 1, int: 2, float: 2, str: 3, list: 4, dict: 5}


def _key(value: Any) -> Any:
    """OPA's total order of values: null < boolean < number < string < array < object < set."""
    if isinstance(value, set | frozenset):
        return (6, sorted(_key(v) for v in value))
    rank = _RANK.get(type(value), 7)
    if isinstance(value, list):
        return (rank, [_key(v) for v in value])
    if isinstance(value, dict):
        return (rank, sorted((_key(k), _key(v)) for k, v in value.items()))
    if isinstance(value, bool):
        return (rank, int(value))
    return (rank, value)


def plain(value: Any) -> Any:
    """JSON's view of an engine value: sets as sorted arrays, integral floats as ints."""
    if isinstance(value, set | frozenset):
        return [plain(v) for v in sorted(value, key=_key)]
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: plain(v) for k, v in value.items()}
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _normal(rows: list[dict[str, Any]], sort_bindings: bool) -> list[str]:
    out = []
    for row in rows:
        row = plain(row)
        if sort_bindings:
            row = {k: sorted(v, key=_key) if isinstance(v, list) else v for k, v in row.items()}
        out.append(json.dumps(row, sort_keys=True))
    return sorted(out)


def judge(case: Case, got: Outcome) -> tuple[bool, bool, str]:
    """(passed, passed with OPA's error code, failure cause)."""
    if case.want_result is not None:
        if got.bindings is None:
            where = "" if got.stage == "query" else f" at {got.stage}"
            return False, False, f"error{where} where a result was wanted: {_label(got)}"
        if _normal(got.bindings, case.sort_bindings) == _normal(
            case.want_result, case.sort_bindings
        ):
            return True, True, ""
        if not got.bindings:
            return False, False, "undefined where a result was wanted"
        if not case.want_result:
            return False, False, "a result where OPA's is undefined"
        return False, False, "a different result"
    if got.bindings is not None:
        return False, False, "a result where an error was wanted"
    strict = case.want_code is None or got.code == case.want_code
    return True, strict, "" if strict else f"error code {got.code} for {case.want_code}"


def _label(got: Outcome) -> str:
    text = got.code or "no code"
    if got.status:
        text = f"{got.status} {text}"
    return text


# -- the plain engine, in-process ----------------------------------------------------------


def run_plain(case: Case) -> Outcome:
    import regorus

    try:
        engine = regorus.Engine()
        for i, source in enumerate(case.modules):
            engine.add_policy(f"test-{i}.rego", source)
        if case.data:
            engine.add_data(case.data)
        if case.has_input:
            engine.set_input(case.input)
        # As JSON text: the engine's own serialisation (sets as arrays, OPA's key text).
        rows = json.loads(engine.eval_query_as_json(case.query)).get("result") or []
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return Outcome(message=" ".join(str(exc).split())[:300] or type(exc).__name__)
    return Outcome(bindings=[row.get("bindings") or {} for row in rows])


def run_engine(case: Case) -> Outcome:
    """trustd's engine layer in-process (extensions, compile check, OPA's error codes):
    what the HTTP API answers once the Data API stores documents."""
    from policy.engine import NO_INPUT, EmbeddedEngine
    from policy.errors import PolicyError

    match = _DATA_QUERY.fullmatch(case.query.strip())
    if match is None:
        return Outcome(message="not a data query", stage="POST /v1/query", status=404)
    modules = {f"test-{i}.rego": source for i, source in enumerate(case.modules)}
    input_json = json.dumps(case.input) if case.has_input else NO_INPUT
    try:
        engine = EmbeddedEngine(modules, case.data)
        result = engine.query(match.group(1) or "data", input_json, strict=case.strict_error)
    except PolicyError as exc:
        return Outcome(code=str(exc.fields.get("code")), message=exc.detail)
    return Outcome(bindings=[{match.group(2): result.value}] if result.defined else [])


# -- trustd over HTTP ----------------------------------------------------------------------


class Server(PlainServer):
    """`trustd serve` (SQLite in a temporary data directory, no TLS) and its admin token."""

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )
        self.base = self._active_revision()

    def tail(self) -> str:
        """The server log's last lines (why it died)."""
        return " | ".join(line[:200] for line in self.log_lines()[-5:])

    def _active_revision(self) -> int:
        revision = self.http.get("/v1/admin/policy/status").json()["revision"]
        return int(revision)

    def stop(self) -> None:
        self.http.close()
        super().stop()

    def restore(self) -> None:
        if self._active_revision() != self.base:
            r = self.http.post(f"/v1/admin/policy/bundles/{self.base}/activate")
            r.raise_for_status()

    def load_data_via_bundle(self, data: dict[str, Any]) -> bool:
        active = self.http.get(f"/v1/admin/policy/bundles/{self._active_revision()}").json()
        merged = {**active["data"], **data}
        r = self.http.post(
            "/v1/admin/policy/bundles",
            json={"modules": active["modules"], "data": merged, "label": "case"},
        )
        return r.status_code == 201


def _error(response: httpx.Response, stage: str) -> Outcome:
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    code = body.get("code")
    message = str(body.get("message") or body.get("detail") or response.text[:200])
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        message = f"{first.get('code')}: {first.get('message')}"
    if not isinstance(code, str) or code in ("", "internal_error", "invalid_parameter"):
        found = _ERROR_CODE.search(message)
        code = found.group(1) if found else (code if isinstance(code, str) else None)
    return Outcome(code=code, message=message, status=response.status_code, stage=stage)


def run_http(server: Server, case: Case, data_via_bundle: bool) -> Outcome:
    http = server.http
    notes: list[str] = []
    # Modules go up in an order that compiles, as a user uploads a library before the
    # policy calling it: a refused module is tried again after the others.
    pending = list(enumerate(case.modules))
    refused: httpx.Response | None = None
    while pending:
        retry = []
        for i, source in pending:
            r = http.put(f"/v1/policies/cases/test-{i}.rego", content=source.encode())
            if r.status_code != 200:
                retry.append((i, source))
                refused = r
        if len(retry) == len(pending):
            assert refused is not None
            return _error(refused, "policy PUT")
        pending = retry
    if case.data:
        for key, value in case.data.items():
            r = http.put(f"/v1/data/{key}", json=value)
            if r.status_code not in (200, 204):
                notes.append(f"data PUT {r.status_code}")
                break
        if notes and data_via_bundle and server.load_data_via_bundle(case.data):
            notes = []
    body: dict[str, Any] = {"input": case.input} if case.has_input else {}
    params = {"strict-builtin-errors": "true"} if case.strict_error else {}
    match = _DATA_QUERY.fullmatch(case.query.strip())
    if match:
        path = match.group(1).lstrip(".").replace(".", "/")
        r = http.post(f"/v1/data/{path}" if path else "/v1/data", json=body, params=params)
        if r.status_code != 200:
            out = _error(r, "query")
        else:
            document = r.json()
            rows = [{match.group(2): document["result"]}] if "result" in document else []
            out = Outcome(bindings=rows)
    else:
        r = http.post("/v1/query", json={"query": case.query, **body}, params=params)
        if r.status_code != 200:
            out = _error(r, "POST /v1/query")
        else:
            out = Outcome(bindings=list(r.json().get("result") or []))
    out.notes = notes
    return out


def _cause(case: Case, got: Outcome, reason: str) -> str:
    if got.notes and case.data:
        return f"data: PUT /v1/data answered {got.notes[0].split()[-1]}"
    if got.stage == "policy PUT":
        return f"policy PUT refused: {got.status} {got.code or ''}".strip()
    if got.stage == "POST /v1/query" and got.status in (404, 405):
        return f"POST /v1/query answered {got.status}"
    return reason


def _record(case: Case, got: Outcome, reason: str) -> dict[str, Any]:
    """A failed case as one JSON line: what was asked, wanted and answered."""
    want: Any = case.want_result if case.want_result is not None else case.want_error
    answered: Any = got.bindings
    if answered is None:
        answered = {"status": got.status, "code": got.code, "message": got.message}
    return {
        "note": case.note,
        "file": case.file,
        "cause": _cause(case, got, reason),
        "query": case.query,
        "want": want if want is not None else case.want_code,
        "got": answered,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=Path, required=True)
    parser.add_argument("--only", help="only cases whose note contains this")
    parser.add_argument("--failures", type=Path, help="write failed cases as JSON lines")
    parser.add_argument("--data-via-bundle", action="store_true")
    parser.add_argument("--floor", type=int, default=0)
    parser.add_argument("--plain-only", action="store_true", help="only the plain engine")
    parser.add_argument("--engine-only", action="store_true", help="only in-process runs")
    args = parser.parse_args()

    cases = load_cases(args.cases, args.only)
    started = time.monotonic()
    baseline = {id(c): judge(c, run_plain(c))[0] for c in cases if not c.skip}
    plain_passed = sum(baseline.values())
    plain_s = time.monotonic() - started
    if args.plain_only:
        print(f"plain engine in-process: {plain_passed} of {len(cases)} passed ({plain_s:.0f} s)")
        return
    engine_causes: Counter[str] = Counter()
    engine_passed = 0
    for case in cases:
        if case.skip:
            continue
        ok, _, reason = judge(case, got := run_engine(case))
        engine_passed += ok
        if not ok:
            engine_causes[_cause(case, got, reason)] += 1
            if args.failures and args.engine_only:
                with args.failures.open("a") as out:
                    out.write(json.dumps(_record(case, got, reason), default=str) + "\n")
    print(f"trustd engine in-process: {engine_passed} passed")
    if args.engine_only:
        for cause, count in engine_causes.most_common():
            print(f"  {count:5d}  {cause}")
        return

    passed = strict = skipped = 0
    causes: Counter[str] = Counter()
    lost: list[str] = []
    crashes: list[str] = []
    failures = args.failures.open("w") if args.failures else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trustd-opa-") as work:
        server = Server(Path(work))
        try:
            for case in cases:
                if case.skip:
                    skipped += 1
                    continue
                try:
                    got = run_http(server, case, args.data_via_bundle)
                    server.restore()
                except httpx.HTTPError as exc:
                    # The server died (or hung) on this case: count it, start another.
                    got = Outcome(message=str(exc), stage="transport")
                    crashes.append(f"{case.note}: {type(exc).__name__} {server.tail()}")
                    server.stop()
                    server = Server(Path(work))
                    causes["the server died or hung"] += 1
                    if baseline[id(case)]:
                        lost.append(case.note)
                    continue
                ok, ok_strict, reason = judge(case, got)
                passed += ok
                strict += ok_strict
                if not ok:
                    causes[_cause(case, got, reason)] += 1
                    if baseline[id(case)]:
                        lost.append(case.note)
                    if failures:
                        record = _record(case, got, reason)
                        failures.write(json.dumps(record, default=str) + "\n")
        finally:
            server.stop()
    http_s = time.monotonic() - started
    if failures:
        failures.close()

    total = len(cases)
    failed = total - passed - skipped
    print(f"{passed} passed, {failed} failed, {skipped} skipped ({total} cases, {http_s:.0f} s)")
    print(f"strict (an expected error carries OPA's code): {strict} passed")
    print(f"plain engine in-process: {plain_passed} passed ({plain_s:.0f} s)")
    print(f"lost against the plain engine: {len(lost)}")
    print("\nfailure causes:")
    for cause, count in causes.most_common():
        print(f"  {count:5d}  {cause}")
    for note in lost[:40]:
        print(f"  lost: {note}")
    for crash in crashes:
        print(f"  crash: {crash}")
    pct = 100.0 * passed / total if total else 0.0
    base_pct = 100.0 * plain_passed / total if total else 0.0
    ratio = pct / base_pct if base_pct else 0.0
    met = "met" if pct >= TARGET else "not met"
    print(
        f"RESULT opa_compliance_pass {pct:.1f} % baseline {base_pct:.1f} "
        f"ratio {ratio:.2f} target {TARGET:.0f} {met}"
    )
    if passed < args.floor:
        print(f"below the recorded floor of {args.floor} passing cases")
        sys.exit(1)


if __name__ == "__main__":
    main()
