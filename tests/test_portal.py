"""The portal's application factory and health page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.script import ScriptDirectory
from flask.testing import FlaskClient

from portal import create_app
from roster.config import load_config
from roster.db import MIGRATIONS
from tests.directory import Continuity


@contextmanager
def client_for(tmp_path: Path, database_url: str) -> Iterator[FlaskClient]:
    """A test client of the portal built from a real configuration file."""
    tool = Continuity(tmp_path, database_url)
    config = load_config(tool.configure(), environ={})
    app = create_app({"TESTING": True}, config=config)
    try:
        yield app.test_client()
    finally:
        app.extensions["roster_engine"].dispose()


def test_health_reports_the_roster_and_the_last_sync(tmp_path: Path, database_url: str) -> None:
    with client_for(tmp_path, database_url) as client:
        response = client.get("/health", headers={"Accept": "application/json"})
        page = client.get("/health", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response.json == {
        "status": "ok",
        "database": "ok",
        "schema_revision": ScriptDirectory(str(MIGRATIONS)).get_current_head(),
        "last_sync": [],
    }
    assert page.status_code == 200 and b"No sync has run yet." in page.data


def test_health_fails_when_the_roster_has_no_schema(tmp_path: Path) -> None:
    with client_for(tmp_path, f"sqlite:///{tmp_path}/empty.db") as client:
        response = client.get("/health", headers={"Accept": "application/json"})
    assert response.status_code == 503
    assert response.json["status"] == "failing"
