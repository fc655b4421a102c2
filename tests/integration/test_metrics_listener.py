"""Who reads /metrics of a real `trustd serve`: a listener of its own (`metrics_listen`),
or the main listener with the metrics token (`metrics_token`)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port, start_server, tls

pytestmark = pytest.mark.integration

TOKEN = "m3tr1cs-" + "x" * 40


def test_metrics_listener_serves_metrics_alone(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(
        tmp_path / "var", tmp_path / "server.log", TRUSTD_METRICS_LISTEN=f"127.0.0.1:{port}"
    )
    try:
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert scraped.status_code == 200
        assert "trustd_ca_expiry_timestamp_seconds" in scraped.text
        assert scraped.headers["content-type"].startswith("text/plain")
        # Nothing else is served there, and the main listener no longer serves metrics.
        assert httpx.get(f"http://127.0.0.1:{port}/v1/bundle").status_code == 404
        main = httpx.get(f"{server.url}/metrics", verify=tls(server.bundle))
        assert main.status_code == 404
        assert main.headers["content-type"] == "application/problem+json"
        assert "metrics listener" in main.json()["detail"]
    finally:
        server.stop()


def test_main_listener_needs_the_metrics_token(tmp_path: Path) -> None:
    server = start_server(tmp_path / "var", tmp_path / "server.log", TRUSTD_METRICS_TOKEN=TOKEN)
    try:
        context = tls(server.bundle)
        url = f"{server.url}/metrics"
        assert httpx.get(url, verify=context).status_code == 401
        wrong = {"Authorization": "Bearer " + "y" * 48}
        assert httpx.get(url, verify=context, headers=wrong).status_code == 401
        right = httpx.get(url, verify=context, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200 and "trustd_svids_issued_total" in right.text
    finally:
        server.stop()
