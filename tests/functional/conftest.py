"""A migrated database, an initialised CA and an HTTP client on the real app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
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


ServerFactory = Callable[..., Server]


@pytest.fixture
def server_factory(tmp_path: Path, database_url: str) -> Iterator[ServerFactory]:
    """Start the app with extra settings; at most one per test."""
    stack = ExitStack()

    def start(**overrides: object) -> Server:
        settings = make_settings(tmp_path, database_url, **overrides)
        settings.data_dir.mkdir(parents=True)
        migrate(database_url)
        services = build_services(settings)
        stack.callback(services.engine.dispose)
        report = initialise(services)
        assert report.bootstrap_token is not None
        client = TestClient(create_app(settings, services), raise_server_exceptions=False)
        stack.enter_context(client)
        return Server(settings, services, client, report.bootstrap_token)

    with stack:
        yield start


@pytest.fixture
def server(server_factory: ServerFactory) -> Server:
    return server_factory()
