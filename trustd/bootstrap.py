"""First start: migrate the database, create the CA, mint the bootstrap admin token."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import SQLAlchemyError

from trustd.errors import DatabaseUnusable
from trustd.roles import Role
from trustd.services.auth import Principal
from trustd.services.ca import SYSTEM_ACTOR
from trustd.services.container import Services
from trustd.settings import Settings
from trustd.store import db
from trustd.store.db import transaction

_MIGRATIONS = Path(__file__).resolve().parent.parent / "alembic"
BOOTSTRAP_TOKEN_TTL = timedelta(hours=24)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["url"] = url
    return config


def check_database(url: str) -> None:
    """Check that the database opens as one (see `trustd.store.db.check_database`).

    Raises:
        StoreUnavailable, DatabaseUnusable: with a one-line message saying what to do.
    """
    db.check_database(url, _redact(url))


def migrate(url: str) -> None:
    """Bring the database schema to the newest revision.

    Raises:
        DatabaseUnusable: the database refused the migration (one line, not a traceback).
    """
    try:
        command.upgrade(alembic_config(url), "head")
    except SQLAlchemyError as exc:
        raise DatabaseUnusable(db.unusable_message(_redact(url), exc)) from None


def _redact(url: str) -> str:
    """*url* without its password, to show in messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


redact_url = _redact


def earlier_deployment(settings: Settings) -> list[Path]:
    """What an earlier start left in the data directory: the bundle file clients pin, the
    key-encryption key, the TLS directory. Read before anything is created, so that a
    database that lost its CA is told apart from a first start."""
    found = [settings.bundle_path, settings.tls_dir]
    if settings.key_passphrase is None:
        found.append(settings.kek_path)
    return [path for path in found if path.exists()]


@dataclass(frozen=True)
class InitReport:
    created_ca: bool
    bootstrap_token: str | None


def prepare_data_dir(path: Path) -> None:
    # The data directory holds the admin socket and, in dev, the key-encryption key.
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def initialise(services: Services, earlier: Sequence[Path] = ()) -> InitReport:
    """Create what a new installation lacks: CA keys, and the first admin token when no
    token exists yet. Idempotent; safe on several replicas at once. *earlier* is what
    `earlier_deployment` found before start-up touched the data directory (empty to force
    a new CA).

    Raises:
        CaError: the upstream CA files are unusable, or the database lost the CA *earlier*
            shows. StoreUnavailable: the database is down.
    """
    created_ca = services.ca.initialise(earlier)
    with transaction(services.engine) as session:
        have_tokens = services.tokens.any_exist(session)
    token = None
    if not have_tokens:
        created = services.tokens.create(
            Principal(SYSTEM_ACTOR, Role.ADMIN), "bootstrap", Role.ADMIN, BOOTSTRAP_TOKEN_TTL
        )
        token = created.secret
    return InitReport(created_ca=created_ca, bootstrap_token=token)


def write_bundle_file(services: Services) -> Path:
    """Write the X.509 trust bundle where clients on this host can find it."""
    path = services.settings.bundle_path
    tmp = path.with_suffix(".tmp")
    tmp.write_text(services.ca.state.bundle.to_pem())
    tmp.replace(path)
    return path
