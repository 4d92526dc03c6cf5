"""Shared fixtures: the roster database on SQLite and, when configured, PostgreSQL; the
session's slapd and Samba DC; a portal on a real configuration and directory."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from continuity.localslapd import Slapd
from roster.db import make_engine, upgrade
from roster.models import Base
from tests.directory import DirectoryTree
from tests.portal_support import Portal
from tests.servers.samba import SambaDC

POSTGRES_URL = os.environ.get("CONTINUITY_TEST_DATABASE_URL", "")
DATABASES = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite roster migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "roster.db"
    engine = make_engine(f"sqlite:///{path}", create=True)
    upgrade(engine)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, migrated once, dropped at the end."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"continuity_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated roster database for one test."""
    if request.param == "sqlite":
        path = tmp_path / "roster.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's roster database."""
    created = make_engine(database_url)
    yield created
    created.dispose()


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """One real slapd for the whole test session; each test works in its own subtree."""
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def directory(slapd: Slapd) -> DirectoryTree:
    """A fresh organisational unit of the session's slapd, for one test."""
    return DirectoryTree.create(slapd)


@pytest.fixture(scope="session")
def samba(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    """One Samba AD DC for the test session (it needs root and port 389)."""
    reason = SambaDC.unavailable_reason()
    if reason is not None:
        pytest.fail(f"the Active Directory tests need a Samba DC: {reason}")
    dc = SambaDC(tmp_path_factory.mktemp("samba"))
    dc.start()
    yield dc
    dc.stop()


@pytest.fixture
def portal(tmp_path: Path, database_url: str, directory: DirectoryTree) -> Iterator[Portal]:
    """The portal on the session's slapd (a fresh subtree) and the test's roster."""
    built = Portal.on(tmp_path, database_url, directory)
    yield built
    built.close()


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A slapd of this test's own, which the test may stop."""
    server = Slapd(tmp_path / "slapd")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_portal(tmp_path: Path, database_url: str, own_slapd: Slapd) -> Iterator[Portal]:
    """The portal on a slapd of the test's own."""
    built = Portal.on(tmp_path, database_url, DirectoryTree.create(own_slapd))
    yield built
    built.close()
