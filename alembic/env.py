"""Alembic environment: migrations run against the database trustd's settings point at.

The URL comes from, in order: `config.attributes["url"]` (set by trustd itself), `-x url=...`
on the alembic command line, then `TRUSTD_DATABASE_URL` / the default SQLite file.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from trustd.settings import load_settings
from trustd.store import schema
from trustd.store.db import create_db_engine

config = context.config
target_metadata = schema.metadata


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return str(url)
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings.resolved_database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_db_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
