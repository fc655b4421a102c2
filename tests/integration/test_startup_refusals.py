"""`trustd serve` refuses, in one line that says what to do, to start over a data directory
whose database lost its CA, whose key-encryption key is missing, or whose database is
corrupt; and never writes a new CA or key over what an earlier start left."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    Running,
    cli,
    error_line,
    serve_once,
    start_server,
    tls,
)

# A long fault run: `make test-faults` (CI runs it after `make test`).
pytestmark = [pytest.mark.integration, pytest.mark.fault]


def _serve(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return serve_once(data_dir, **{k: v for k, v in os.environ.items() if k.startswith("TRUSTD_")})


_error_line = error_line


def _remove_database(data_dir: Path) -> None:
    for path in data_dir.glob("trustd.db*"):
        path.unlink()


@pytest.fixture
def stopped(tmp_path: Path) -> Running:
    server = start_server(tmp_path / "var", tmp_path / "server.log")
    server.stop()
    return server


def test_lost_database_is_refused_until_init_force_new_ca(stopped: Running, tmp_path: Path) -> None:
    data_dir = stopped.data_dir
    bundle = stopped.bundle.read_text()
    _remove_database(data_dir)

    line = _error_line(_serve(data_dir))
    assert "holds no CA" in line and "trustd init --force-new-ca" in line
    assert stopped.bundle.read_text() == bundle, "bundle.pem was overwritten"
    # `trustd init` without the flag refuses the same way.
    refused = cli("init", "--data-dir", str(data_dir), check=False)
    assert "trustd init --force-new-ca" in _error_line(refused)
    assert stopped.bundle.read_text() == bundle

    cli("init", "--data-dir", str(data_dir), "--force-new-ca")
    assert stopped.bundle.read_text() != bundle
    server = start_server(data_dir, tmp_path / "again.log")
    try:
        assert httpx.get(f"{server.url}/readyz", verify=tls(server.bundle)).status_code == 200
    finally:
        server.stop()


def test_empty_data_dir_still_starts_a_new_ca(tmp_path: Path) -> None:
    # The refusal must not catch a first start: nothing earlier, nothing to protect.
    server = start_server(tmp_path / "fresh", tmp_path / "server.log")
    try:
        assert "created the CA" in (tmp_path / "server.log").read_text()
    finally:
        server.stop()


def test_missing_kek_is_refused_and_not_replaced(stopped: Running) -> None:
    kek = stopped.data_dir / "kek"
    kek.unlink()

    line = _error_line(_serve(stopped.data_dir))
    assert f"key-encryption key {kek} is missing" in line and "restore" in line
    assert not kek.exists(), "a new key-encryption key was written over the old keys"


def test_corrupt_database_is_one_line(stopped: Running) -> None:
    database = stopped.data_dir / "trustd.db"
    _remove_database(stopped.data_dir)
    database.write_bytes(b"this is not an SQLite database\n" * 512)

    line = _error_line(_serve(stopped.data_dir))
    assert "is unusable" in line and "restore it from a backup" in line
