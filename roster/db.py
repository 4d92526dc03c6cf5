"""Engines, sessions and schema migrations for the roster database."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url: str, *, create: bool = False, **options: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout.

    A SQLite roster file (and its directory) is made only with ``create`` (by `db
    upgrade` and the demo): reading a roster that is not there creates nothing, and says
    so (see sqlite_file_missing). Statement parameters (addresses, names) never appear in
    error messages, which end up in logs and in the sync's run records.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            if create:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            else:
                # SQLite's URI form with mode=rw opens an existing file and never makes one.
                uri = "file:" + quote(str(Path(database).absolute()))
                parsed = parsed.set(database=uri).update_query_dict({"mode": "rw", "uri": "true"})
        engine = create_engine(
            parsed, connect_args={"timeout": 30}, hide_parameters=True, **options
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True, **options)


def sqlite_file_missing(url: str) -> Path | None:
    """The roster file a SQLite ``url`` names when that file does not exist, else None."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    path = Path(database)
    return None if path.exists() else path


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    """Start the transaction ourselves, IMMEDIATE when the caller is about to write.

    pysqlite defers BEGIN on its own; taking it over makes a transaction start where
    SQLAlchemy begins one. A read-then-write transaction that began DEFERRED can fail
    at its first write if another writer committed meanwhile, so writers ask for
    ``begin_immediate`` and take the write lock up front (waiting on busy_timeout).
    """
    immediate = connection.get_execution_options().get("begin_immediate", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


T = TypeVar("T")
CHUNK = 500  # stays under every database's bound-parameter limit


def chunks(rows: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    """Lists of at most ``size`` items drawn from ``rows`` as they come (a generator of
    100,000 rows is never held whole)."""
    batch: list[T] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def connection_of(bind: Session | Connection) -> Connection:
    """The connection of an ORM session, or the connection itself: functions on the
    sign-in path take either, since plain connections cost less than sessions there."""
    return bind.connection() if isinstance(bind, Session) else bind


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine`` that keeps objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session], *, writing: bool = False) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any error.

    ``writing`` takes SQLite's write lock at the start (see _sqlite_begin).
    """
    with factory() as session, session.begin():
        if writing:
            session.connection(execution_options={"begin_immediate": True})
        yield session


def alembic_config(engine: Engine) -> Any:
    """An Alembic configuration pointing at our migrations and ``engine``."""
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (the newest by default)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
