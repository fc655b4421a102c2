"""First start: migrate the database, create the CA, mint the bootstrap admin token."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config

from trustd.roles import Role
from trustd.services.auth import Principal
from trustd.services.ca import SYSTEM_ACTOR
from trustd.services.container import Services
from trustd.store.db import transaction

_MIGRATIONS = Path(__file__).resolve().parent.parent / "alembic"
BOOTSTRAP_TOKEN_TTL = timedelta(hours=24)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["url"] = url
    return config


def migrate(url: str) -> None:
    """Bring the database schema to the newest revision."""
    command.upgrade(alembic_config(url), "head")


@dataclass(frozen=True)
class InitReport:
    created_ca: bool
    bootstrap_token: str | None


def prepare_data_dir(path: Path) -> None:
    # The data directory holds the admin socket and, in dev, the key-encryption key.
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def initialise(services: Services) -> InitReport:
    """Create what a new installation lacks: CA keys, and the first admin token when no
    token exists yet. Idempotent; safe on several replicas at once.

    Raises:
        CaError: the upstream CA files are unusable. StoreUnavailable: the database is down.
    """
    created_ca = services.ca.initialise()
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
