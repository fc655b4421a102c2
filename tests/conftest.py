"""Shared fixtures: databases on both backends, migrated with Alembic (never create_all).

Migrating from nothing costs about two seconds on PostgreSQL, so each test run migrates one
template database per backend once and every test gets a copy of it (PostgreSQL's
`CREATE DATABASE ... TEMPLATE`, a file copy for SQLite). The copies are at head already;
`migrate()` on them is the no-op check a restarted server makes.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from _pytest.reports import TestReport
from hypothesis import settings as hypothesis_settings
from hypothesis.database import DirectoryBasedExampleDatabase

from trustd.bootstrap import migrate

# Hypothesis: `ci` replays the same examples on every run, so a failure in CI is a failure
# every time, not sometimes (Hypothesis ties derandomize to no example database); `dev`
# explores anew each run and keeps what it finds in .hypothesis/examples, replayed first on
# the next run. A counterexample found either way becomes an explicit case in its test.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile(
    "dev",
    database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
    deadline=None,
    print_blob=True,
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# In CI every test runs: a skip because a peer is missing (certbot, lego, nginx, clang,
# chromium, root...) means the environment is wrong, so it fails the run instead.
REQUIRE_PEERS = os.environ.get("TRUSTD_REQUIRE_PEERS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: TestReport = outcome.get_result()
    if REQUIRE_PEERS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, but TRUSTD_REQUIRE_PEERS=1 requires every peer: {reason}\n"
            "install what it needs (make system-deps) and run as root"
        )


PG_ADMIN_DSN = os.environ.get("TRUSTD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def _pg_admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


class PostgresDatabase:
    """A throwaway database on the shared PostgreSQL server, dropped afterwards."""

    def __init__(self, template: str | None = None) -> None:
        self.name = f"trustd_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.url = _pg_url(self.name)
        self.template = template

    def create(self) -> None:
        template = f' TEMPLATE "{self.template}"' if self.template else ""
        _pg_admin(f'CREATE DATABASE "{self.name}"{template}')

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


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A database migrated to head once per run; tests get copies of it."""
    db = PostgresDatabase()
    db.create()
    try:
        migrate(db.url)
        # CREATE DATABASE ... TEMPLATE needs the template to have no other sessions.
        _pg_admin(f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS false')
        _pg_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{db.name}' AND pid <> pg_backend_pid()"
        )
        yield db.name
    finally:
        db.drop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated to head once per run; tests get copies of it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "trustd.db"
    migrate(f"sqlite:///{path}")
    # Fold the write-ahead log into the file so that a copy of the file alone is complete.
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


@pytest.fixture
def postgres_db(postgres_template: str) -> Iterator[PostgresDatabase]:
    """A database of its own, already at the newest migration."""
    db = PostgresDatabase(template=postgres_template)
    db.create()
    try:
        yield db
    finally:
        db.set_connections_allowed(True)
        db.drop()


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        path = tmp_path / "trustd.db"
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    db: PostgresDatabase = request.getfixturevalue("postgres_db")
    return db.url
