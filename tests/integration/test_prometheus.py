"""Prometheus: a real `trustd serve`'s /metrics passes `promtool check metrics` (names,
units, types, help per the exposition conventions), the alerting rules in deploy/ pass
`promtool check rules` and their unit tests (`promtool test rules`), and every metric the
rules and the Grafana dashboard read is one the server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import cli, start_server, tls

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "trustd-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "trustd-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "trustd-dashboard.json"
# A metric name inside PromQL: trustd_ followed by name characters.
NAME = re.compile(r"\btrustd_[a-z0-9_]+")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return found


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _exported(text: str) -> set[str]:
    """Every sample name a scrape can hold: each family's name, with a histogram's
    `_bucket`, `_count` and `_sum`."""
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
    return names


def _issue_one(url: str, token: str, bundle: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    response = httpx.post(
        f"{url}/v1/svid/x509",
        json={
            "spiffe_id": "spiffe://example.org/scraped",
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        },
        headers={"Authorization": f"Bearer {token}"},
        verify=tls(bundle),
    )
    assert response.status_code == 201, response.text


def test_a_real_servers_metrics_pass_promtool_and_feed_the_rules(tmp_path: Path) -> None:
    promtool()
    server = start_server(tmp_path / "var", tmp_path / "server.log")
    try:
        cli("token", "create", "--data-dir", str(server.data_dir))
        _issue_one(server.url, server.token, server.bundle)
        text = httpx.get(f"{server.url}/metrics", verify=tls(server.bundle)).text
    finally:
        server.stop()
    checked = _run("check", "metrics", stdin=text)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
    # One series per counter: no `_created` gauges beside them.
    assert "_created" not in text
    assert 'trustd_svids_issued_total{kind="x509-svid"} 1.0' in text
    assert "trustd_issuance_duration_seconds_bucket" in text

    exported = _exported(text)
    read = {name for expr in _rule_exprs() + _dashboard_exprs() for name in NAME.findall(expr)}
    assert read and read <= exported, sorted(read - exported)


def test_the_alerting_rules_check_and_pass_their_unit_tests() -> None:
    checked = _run("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = _run("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: each panel query becomes a recording rule, with
    # Grafana's variables replaced by what they expand to.
    exprs = [
        expr.replace("$__rate_interval", "5m").replace("$job", ".+") for expr in _dashboard_exprs()
    ]
    rules = [{"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = _run("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # And a broken query is caught the same way (the check can fail).
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "d", "rules": [{"record": "x:y", "expr": "sum(rate(a[5m])"}]}]}
        )
    )
    assert _run("check", "rules", str(path)).returncode != 0
