"""`trustd audit verify` and `export` against a real `trustd serve` on PostgreSQL and on
SQLite: the chain holds over what the server recorded, and one row edited in the database
makes verify exit non-zero naming that event, while the SIEM's earlier export still
verifies and shows what the event said."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from tests.integration.conftest import cli, start_server

pytestmark = pytest.mark.integration


def _edit_one_event(database_url: str, seq: int) -> None:
    """Rewrite one audit row as someone with write access to the database would."""
    statement = f"UPDATE audit_events SET actor = 'nobody' WHERE seq = {int(seq)}"
    url = make_url(database_url)
    if url.drivername.startswith("sqlite"):
        with sqlite3.connect(str(url.database)) as conn:
            conn.execute(statement)
        conn.close()
        return
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(False)) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def test_verify_passes_then_names_the_edited_event(
    tmp_path: Path, database_url: str, backend: str
) -> None:
    data = tmp_path / "var"
    env = {"TRUSTD_DATABASE_URL": database_url} if backend == "postgresql" else {}
    server = start_server(data, tmp_path / "server.log", **env)
    if backend == "sqlite":
        database_url = f"sqlite:///{data / 'trustd.db'}"
    try:
        admin = ("--data-dir", str(data))
        for _ in range(3):
            cli("token", "create", *admin)
        verified = cli("audit", "verify", *admin)
        assert "audit chain intact" in verified.stdout

        export = cli("audit", "export", *admin).stdout
        events = [json.loads(line) for line in export.splitlines()]
        created = [e for e in events if e["action"] == "node:join_token:created"]
        assert len(created) == 3
        siem = tmp_path / "siem.jsonl"
        siem.write_text(export)
        assert cli("audit", "verify", "--file", str(siem)).returncode == 0

        target = created[1]
        _edit_one_event(database_url, target["seq"])
        broken = cli("audit", "verify", *admin, check=False)
        assert broken.returncode == 1
        assert f"event {target['seq']} (row id {target['id']})" in broken.stderr
        assert "was changed" in broken.stderr
        assert broken.stdout == ""

        # The SIEM's copy still verifies: it holds what the event said before the edit.
        assert cli("audit", "verify", "--file", str(siem)).returncode == 0
        tampered = tmp_path / "tampered.jsonl"
        tampered.write_text(cli("audit", "export", *admin).stdout)
        refused = cli("audit", "verify", "--file", str(tampered), check=False)
        assert refused.returncode == 1
        assert f"event {target['seq']}" in refused.stderr
    finally:
        server.stop()
