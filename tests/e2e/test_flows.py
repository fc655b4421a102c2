"""The graph from traffic and the draft-policy view in a real browser (Debian's Chromium
through Playwright) against a real `trustd serve` over TLS; flows reach the server through
the real `POST /v1/agents/flows` from attested nodes, and `trustd flows` prints them.

Node a hosts the orders API, node b the web frontend and the database. The API's
connections to the database are allowed (rule api-to-db) and reported by node a; the
frontend's attempts at the database are denied by default and reported by node b. A draft
policy without api-to-db would break the first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from pki.bundle import TrustBundle
from pki.ca import load_pem_certificates
from pki.clock import SystemClock
from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import SpiffeId, TrustDomain
from tests.e2e.test_playwright import (
    CHROMIUM,
    VIEWPORT,
    create_user,
    new_context,
    overflow,
    shot,
    sign_in,
)
from tests.integration.conftest import TRUSTD, Running, start_server, tls
from trustd.agent.client import NodeIdentity, ServerClient

TD = "spiffe://example.org"
WEB = f"{TD}/ns/web/frontend"
API = f"{TD}/ns/api/orders"
DB = f"{TD}/ns/db/postgres"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class Seeded:
    server: Running
    api: httpx.Client
    # Node b's agent credential, to report more flows.
    b_headers: dict[str, str]


def _node(api: httpx.Client) -> tuple[str, dict[str, str]]:
    """A node attested with a join token, and the headers its agent authenticates with."""
    token = api.post("/v1/join-tokens", json={"selectors": []})
    assert token.status_code == 201, token.text
    key = generate_private_key(KeyType.EC_P256)
    attested = api.post(
        "/v1/attest",
        json={
            "attestor": "join_token",
            "evidence": {"token": token.json()["token"]},
            "csr": create_csr(key),
        },
    )
    assert attested.status_code == 201, attested.text
    body = attested.json()
    pem = body["svid"]["certificate"] + "".join(body["svid"]["intermediates"])
    identity = NodeIdentity(
        SpiffeId.parse(body["spiffe_id"]), tuple(load_pem_certificates(pem.encode())), key
    )
    bundle = TrustBundle.from_jwks(api.get("/v1/bundle").json(), TrustDomain.parse("example.org"))
    credential = ServerClient("https://unused", bundle, SystemClock()).credential(identity)
    return body["spiffe_id"], {"Authorization": f"Bearer {credential}"}


def _report(api: httpx.Client, headers: dict[str, str], **flow: Any) -> None:
    now = datetime.now(UTC)
    body = {
        "flows": [
            {
                "source_address": "10.30.0.1",
                "destination_address": "10.30.0.2",
                "destination_port": 5432,
                "protocol": "tcp",
                "reason": "policy",
                "direction": "egress",
                "first_seen": (now - timedelta(seconds=3)).isoformat(),
                "last_seen": now.isoformat(),
                **flow,
            }
        ],
        "interval_start": (now - timedelta(seconds=5)).isoformat(),
        "interval_end": now.isoformat(),
    }
    reported = api.post("/v1/agents/flows", json=body, headers=headers)
    assert reported.status_code == 200, reported.text
    assert reported.json() == {"accepted": 1, "refused": 0}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    work = tmp_path_factory.mktemp("e2e-flows")
    server = start_server(work / "var", work / "server.log")
    api = httpx.Client(
        base_url=server.url,
        verify=tls(server.bundle),
        headers={"Authorization": f"Bearer {server.token}"},
    )
    try:
        assert "created alice (admin)" in create_user(server, "alice", "admin")
        (a, a_headers), (b, b_headers) = _node(api), _node(api)
        for spiffe_id, parent in ((API, a), (WEB, b), (DB, b)):
            name = spiffe_id.rsplit("/", 1)[1]
            made = api.post(
                "/v1/entries",
                json={"spiffe_id": spiffe_id, "parent_id": parent, "selectors": [f"k8s:sa:{name}"]},
            )
            assert made.status_code == 201, made.text
        _report(api, a_headers, source=API, destination=DB, verdict="allowed", count=12)
        _report(api, b_headers, source=WEB, destination=DB, verdict="denied", count=40)
        # Node a speaking for node b's frontend is refused: no edge is drawn from it.
        now = datetime.now(UTC).isoformat()
        forged = {
            "flows": [
                {
                    "source": WEB,
                    "destination": API,
                    "source_address": "10.30.0.3",
                    "destination_address": "10.30.0.1",
                    "destination_port": 8443,
                    "protocol": "tcp",
                    "verdict": "denied",
                    "reason": "policy",
                    "direction": "egress",
                    "count": 1,
                    "first_seen": now,
                    "last_seen": now,
                }
            ],
            "interval_start": now,
            "interval_end": now,
        }
        refused = api.post("/v1/agents/flows", json=forged, headers=a_headers)
        assert refused.json() == {"accepted": 0, "refused": 1}
        yield Seeded(server, api, b_headers)
    finally:
        api.close()
        server.stop()


@pytest.fixture(scope="module")
def page(seeded: Seeded) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        context = new_context(browser, seeded)  # type: ignore[arg-type]
        page = context.new_page()
        sign_in(page)
        yield page
        context.close()
        browser.close()


def test_the_graph_shows_the_denied_edge_and_links_to_its_flows(
    page: sync_api.Page, seeded: Seeded
) -> None:
    response = page.goto("/ui/graph")
    assert response is not None and response.status == 200, page.content()[:3000]
    page.click("#traffic-windows a:text('last 1h')")
    page.wait_for_url("**/ui/graph?window=1h**")
    svg = page.locator("#graph svg")
    assert svg.locator("g.edge.denied").count() == 1
    assert svg.locator("g.edge.seen").count() == 1
    # web -> api is allowed by web-to-api and unused: a least-privilege candidate.
    assert svg.locator("g.edge.unused").count() >= 1
    denied = page.locator("#traffic tr.denied")
    assert denied.count() == 1
    row = denied.first.text_content() or ""
    assert WEB in row and DB in row and "default deny" in row and "40" in row
    # The forged report drew nothing between the frontend and the API but the policy edge.
    assert page.locator("#traffic tr.denied", has_text=API).count() == 0
    assert "allow rule api-to-db" in (page.locator("#traffic tr.seen").first.text_content() or "")
    shot(page, "graph-traffic")
    document, viewport = overflow(page)
    assert document <= viewport <= VIEWPORT["width"]
    svg.locator("g.edge.denied text").first.click()
    page.wait_for_url("**/ui/flows?**")
    assert page.locator("#flows tr.flow.denied").count() == 1
    assert "default deny" in (page.text_content("#decided") or "")
    # Cross-checked through the JSON API.
    flows = seeded.api.get("/v1/flows", params={"verdict": "denied"}).json()["flows"]
    assert [(f["source"], f["destination"], f["count"]) for f in flows] == [(WEB, DB, 40)]


def test_the_draft_view_lists_the_flow_the_draft_would_break(
    page: sync_api.Page, seeded: Seeded
) -> None:
    active = seeded.api.get("/v1/admin/policy/status").json()["revision"]
    page.goto("/ui/policies/edit?module=data.json")
    data = json.loads(page.input_value("textarea[name=source]"))
    data["mesh"]["allow"] = [r for r in data["mesh"]["allow"] if r["name"] != "api-to-db"]
    page.fill("textarea[name=source]", json.dumps(data, indent=2))
    page.fill("input[name=note]", "drop api-to-db")
    page.click("#save-draft")
    page.wait_for_url("**/ui/flows/impact?revision=**")
    broken = page.locator("#broken tr.broken")
    assert broken.count() == 1
    row = broken.first.text_content() or ""
    assert API in row and DB in row and "5432/tcp" in row
    shot(page, "flows-impact")
    document, viewport = overflow(page)
    assert document <= viewport <= VIEWPORT["width"]
    # The draft is stored, not active.
    assert seeded.api.get("/v1/admin/policy/status").json()["revision"] == active
    # The active revision breaks nothing.
    page.goto(f"/ui/flows/impact?revision={active}")
    assert page.locator("#broken tr.broken").count() == 0
    assert "denies none" in (page.text_content("#impact-summary") or "")


def test_trustd_flows_prints_one_aligned_line_per_flow(seeded: Seeded) -> None:
    def run(*args: str, stderr: bool = False) -> str:
        done = subprocess.run(
            [TRUSTD, "flows", *args, "--data-dir", str(seeded.server.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")},
        )
        assert done.returncode == 0, done.stderr
        return done.stderr if stderr else done.stdout

    lines = run("--since", "10m").splitlines()
    assert lines[0].split() == [
        "TIME", "SOURCE", "DESTINATION", "VERDICT", "REASON", "COUNT", "OBSERVER"
    ]  # fmt: skip
    assert len(lines) == 3
    # Aligned: every column starts where its header does.
    at = lines[0].index("VERDICT")
    assert {line[at:].split()[0] for line in lines[1:]} == {"ALLOWED", "DENIED"}
    assert f"{WEB}  →  {DB}:5432/tcp" in lines[2]
    denied = run("--verdict", "denied", "--from", f"{TD}/ns/web/", "--output", "json")
    assert [(f["source"], f["count"]) for f in json.loads(denied)] == [(WEB, 40)]
    assert run("--to", WEB) == ""
    assert f"No flows matching --to {WEB}." in run("--to", WEB, stderr=True)


def test_trustd_flows_follow_prints_the_flows_stored_since(seeded: Seeded) -> None:
    follow = subprocess.Popen(
        [TRUSTD, "flows", "--follow", "--to", WEB, "--data-dir", str(seeded.server.data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")},
    )
    try:
        assert follow.stderr is not None and follow.stdout is not None
        # Nothing to WEB yet: it says so and waits.
        assert "waiting for new ones" in follow.stderr.readline()
        _report(
            seeded.api,
            seeded.b_headers,
            source=DB,
            destination=WEB,
            direction="ingress",
            verdict="denied",
            reason="stale",
            destination_port=443,
            count=2,
        )
        header = follow.stdout.readline().split()
        line = follow.stdout.readline()
        assert header[:2] == ["TIME", "SOURCE"]
        assert f"{DB}  →  {WEB}:443/tcp" in line and "DENIED" in line and "stale" in line
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(20) == 0
        for stream in (follow.stdout, follow.stderr):
            if stream is not None:
                stream.close()
