"""Engine construction and the transaction boundary used by every service."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session

from trustd.errors import DatabaseUnusable, StoreUnavailable

# Every table on the one metadata before the first session: foreign keys between modules
# resolve whichever service module is imported first.
from trustd.store import schema as _schema  # noqa: F401


def create_db_engine(url: str) -> Engine:
    """Create an engine with the per-backend settings trustd relies on."""
    if url.startswith("sqlite"):
        _create_private(make_url(url).database)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=16,
            max_overflow=16,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # Bounded waits, so that a database failing over costs a request a 503 after a few
    # seconds rather than a worker thread for minutes: `connect_timeout` per connect (per
    # host of a multi-host URL); TCP keepalives and `tcp_user_timeout` (libpq "Parameter
    # Key Words") end a session whose peer vanished without a reset; `pool_timeout` for a
    # pool whose connections are all held by requests stuck on one of those waits. The
    # waits happen on worker threads (the group commit's, the thread pool's), not on the
    # event loop.
    return create_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
        pool_timeout=5,
        connect_args={
            "connect_timeout": 3,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
        },
    )


def _create_private(path: str | None) -> None:
    """Create the SQLite file owner-only (0600) before SQLite does (with 0644 under the usual
    umask): it holds CA key material and token hashes. SQLite gives the `-wal` and `-shm`
    files the main file's permissions (SQLite "Temporary Files": journals inherit them), so
    this covers all three. An existing file is left as its owner set it."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except FileNotFoundError:
        # No such directory: SQLite reports it on connect, where the error is mapped.
        return
    os.close(fd)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer; synchronous=NORMAL is durable across
    # process crashes in WAL mode, foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error.

    Raises:
        StoreUnavailable: the database could not be reached or refused the commit.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except (OperationalError, DBAPIError) as exc:
        session.rollback()
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise StoreUnavailable("the database is unavailable; retry later") from exc
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def single_read(engine: Engine) -> Iterator[Session]:
    """A session for reads that need no transaction around them: each statement runs in
    autocommit, consistent within itself only. On PostgreSQL a lone SELECT is then one round
    trip instead of three (BEGIN, SELECT, COMMIT); for a request that reads what it needs in
    one statement, that is all it asks of the database.

    Raises:
        StoreUnavailable: the database could not be reached.
    """
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            session = Session(bind=connection)
            try:
                yield session
            finally:
                session.close()
    except (OperationalError, DBAPIError) as exc:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise StoreUnavailable("the database is unavailable; retry later") from exc
        raise


def lock_for_initialisation(session: Session) -> None:
    """Serialise first-start initialisation between replicas sharing one database.

    SQLite has a single writer already; PostgreSQL uses a transaction-scoped advisory lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7427357)"))


def ping(engine: Engine) -> None:
    """Raises:
    StoreUnavailable: the database does not answer.
    """
    with transaction(engine) as session:
        session.execute(text("SELECT 1"))


def deployment_scope(trust_domain: str, engine: Engine) -> str:
    """What keys in a shared Redis are scoped by: one Redis may serve several deployments
    (and test runs), each identified by its trust domain and database."""
    return f"{trust_domain}:{engine.url.database}"


def check_database(url: str, shown_as: str) -> None:
    """Open the database at *url* and read its catalogue, so that a damaged one is reported
    in one line at start-up rather than as a driver traceback mid-migration.

    Raises:
        StoreUnavailable: the database server does not answer (*shown_as* names it).
        DatabaseUnusable: it answers but is not a readable database.
    """
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                # "file is not a database" / "database disk image is malformed" surface here.
                connection.execute(text("SELECT count(*) FROM sqlite_master")).scalar()
            else:
                connection.execute(text("SELECT 1")).scalar()
    except OperationalError as exc:
        if engine.dialect.name != "sqlite":
            raise StoreUnavailable(
                f"cannot reach the database {shown_as}: {_reason(exc)}; start it or fix "
                "database_url"
            ) from None
        raise DatabaseUnusable(unusable_message(shown_as, exc)) from None
    except SQLAlchemyError as exc:
        raise DatabaseUnusable(unusable_message(shown_as, exc)) from None
    finally:
        engine.dispose()


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0]


def unusable_message(shown_as: str, exc: SQLAlchemyError) -> str:
    """One line saying what is wrong with the database *shown_as* and what to do."""
    return (
        f"the database {shown_as} is unusable ({_reason(exc)}): restore it from a backup, "
        "or move it aside to start with an empty one"
    )
