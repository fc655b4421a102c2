"""The SQLite database and its WAL are private to trustd's user from their first byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import text

from trustd.store.db import create_db_engine


def test_sqlite_database_wal_and_shm_are_created_owner_only(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual umask, under which SQLite alone creates 0644
    try:
        engine = create_db_engine(f"sqlite:///{tmp_path}/trustd.db")
        try:
            with engine.begin() as connection:
                connection.execute(text("CREATE TABLE t (x INTEGER)"))
                connection.execute(text("INSERT INTO t VALUES (1)"))
            with engine.connect() as connection:
                assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                files = sorted(p.name for p in tmp_path.iterdir())
                assert files == ["trustd.db", "trustd.db-shm", "trustd.db-wal"]
                modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        finally:
            engine.dispose()
    finally:
        os.umask(previous)
    assert modes == {"trustd.db": 0o600, "trustd.db-shm": 0o600, "trustd.db-wal": 0o600}


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "trustd.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    engine = create_db_engine(f"sqlite:///{path}")
    engine.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
