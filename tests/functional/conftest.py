"""A migrated database, an initialised CA and an HTTP client on the real app."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from trustd.app import create_app
from trustd.bootstrap import initialise, migrate
from trustd.services.container import Services, build_services
from trustd.settings import Settings, load_settings


@dataclass
class Server:
    settings: Settings
    services: Services
    client: TestClient
    admin_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data", database_url=database_url, tls=False, **overrides
    )


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[Server]:
    settings = make_settings(tmp_path, database_url)
    settings.data_dir.mkdir(parents=True)
    migrate(database_url)
    services = build_services(settings)
    report = initialise(services)
    assert report.bootstrap_token is not None
    with TestClient(create_app(settings, services), raise_server_exceptions=False) as client:
        yield Server(settings, services, client, report.bootstrap_token)
    services.engine.dispose()
