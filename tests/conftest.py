"""Shared fixtures: databases on both backends, migrated with Alembic (never create_all)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_ADMIN_DSN = os.environ.get("TRUSTD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def _pg_admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


class PostgresDatabase:
    """A throwaway database on the shared PostgreSQL server, dropped afterwards."""

    def __init__(self) -> None:
        self.name = f"trustd_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.url = _pg_url(self.name)

    def create(self) -> None:
        _pg_admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        _pg_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
        )
        _pg_admin(f'DROP DATABASE IF EXISTS "{self.name}"')

    def set_connections_allowed(self, allowed: bool) -> None:
        """Simulate an outage: refuse new connections and cut the open ones."""
        _pg_admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            _pg_admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
            )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def postgres_db() -> Iterator[PostgresDatabase]:
    db = PostgresDatabase()
    db.create()
    try:
        yield db
    finally:
        db.set_connections_allowed(True)
        db.drop()


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'trustd.db'}"
    db: PostgresDatabase = request.getfixturevalue("postgres_db")
    return db.url
