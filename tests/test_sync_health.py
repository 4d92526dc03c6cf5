"""A killed or failing sync is seen: abandoned runs, /health for people and monitors,
`continuity sync status` for scripts; on each roster database, with a real slapd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, insert, select, update

from portal import create_app
from roster.config import load_config
from roster.models import RunLock, SyncRun, utcnow
from tests.directory import Continuity, DirectoryTree, source_toml


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An LDAP URL whose server accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"ldap://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.fixture
def tool(tmp_path: Path, database_url: str) -> Continuity:
    """The command line on a roster that holds acme.test."""
    made = Continuity(tmp_path, database_url)
    made.configure()
    assert made.run("domain", "add", "acme.test").exit_code == 0
    return made


def point_at(tool: Continuity, directory: DirectoryTree, url: str | None = None) -> None:
    """Configure the source "corp" on ``directory``'s slapd (or on ``url``)."""
    slapd = directory.slapd
    tool.configure(
        source_toml(
            "corp",
            url or slapd.url,
            directory.base_dn,
            slapd.root_dn,
            slapd.root_password,
            read_timeout=60,
        )
    )


@contextmanager
def portal(tool: Continuity) -> Iterator[FlaskClient]:
    """A test client of the portal on the tool's configuration."""
    app = create_app({"TESTING": True}, config=load_config(tool.path, environ={}))
    try:
        yield app.test_client()
    finally:
        app.extensions["roster_engine"].dispose()


def health(tool: Continuity) -> tuple[int, dict[str, Any]]:
    """/health as a monitor reads it."""
    with portal(tool) as client:
        response = client.get("/health", headers={"Accept": "application/json"})
    assert response.json is not None
    return response.status_code, response.json


def status(tool: Continuity) -> tuple[int, dict[str, Any]]:
    """`continuity sync status --json`: exit status and body."""
    result = tool.run("sync", "status", "--json")
    return result.exit_code, json.loads(result.stdout)


def outcomes(engine: Engine) -> list[tuple[str, str | None]]:
    """(outcome, error) of every recorded run, oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(select(SyncRun.outcome, SyncRun.error).order_by(SyncRun.id))
        return [(outcome, error) for outcome, error in rows]


def test_a_killed_run_is_abandoned_not_running(
    tool: Continuity, directory: DirectoryTree, engine: Engine, silent_server: str
) -> None:
    """Regression: kill -9ed syncs kept outcome 'running' for ever and /health said ok."""
    directory.add_person("ana", "ana@acme.test")
    point_at(tool, directory)
    assert tool.sync()[0] == 0
    assert health(tool) == (200, health(tool)[1]) and health(tool)[1]["status"] == "ok"
    assert status(tool)[0] == 0

    point_at(tool, directory, silent_server)  # the next run hangs in its bind
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "continuity", "--config", str(tool.path), "sync"]
    running = subprocess.Popen(command, env=env)  # noqa: S603 - our own command line
    try:
        deadline = time.monotonic() + 30
        while outcomes(engine)[-1][0] != "running":
            assert time.monotonic() < deadline and running.poll() is None
            time.sleep(0.05)
        code, body = health(tool)
        assert (code, body["status"], body["last_sync"][0]["outcome"]) == (200, "ok", "running")
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait()
    assert outcomes(engine)[-1] == ("running", None)  # nobody could write anything else

    code, body = health(tool)
    assert (code, body["status"], body["last_sync"][0]["outcome"]) == (200, "degraded", "abandoned")
    assert body["reasons"] == [
        f"corp: the last sync was abandoned (started {body['last_sync'][0]['started_at']})"
    ]
    exit_status, shown = status(tool)
    assert exit_status == 1 and shown["status"] == "degraded"
    assert shown["last_sync"][0]["outcome"] == "abandoned"
    with portal(tool) as client:
        page = client.get("/health", headers={"Accept": "text/html", "Accept-Language": "es"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "la sincronización del directorio necesita atención" in text
    assert "corp: la última sincronización del directorio se detuvo antes de terminar" in text

    point_at(tool, directory)
    assert tool.sync()[0] == 0
    (killed_outcome, killed_error), (last, _) = outcomes(engine)[-2:]
    assert killed_outcome == "abandoned" and "killed" in (killed_error or "")
    assert last == "success"
    assert health(tool)[1]["status"] == "ok" and status(tool)[0] == 0


def test_a_run_held_on_another_host_is_running_until_its_lease_lapses(
    tool: Continuity, engine: Engine
) -> None:
    tool.configure(source_toml("corp", "ldap://127.0.0.1:1", "dc=acme,dc=test", "cn=x", "y"))
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            insert(SyncRun).values(
                source="corp", mode="full", started_at=now - timedelta(hours=3), outcome="success"
            )
        )
        connection.execute(
            insert(SyncRun).values(source="corp", mode="full", started_at=now, outcome="running")
        )
        connection.execute(
            insert(RunLock).values(
                name="sync",
                holder="another-host:4242:beef",
                acquired_at=now,
                expires_at=now + timedelta(minutes=5),
            )
        )
    code, body = health(tool)
    assert body["last_sync"][0]["outcome"] == "running"
    assert body["reasons"][0].startswith("corp: no sync has succeeded since")  # 3 h ago
    with engine.begin() as connection:
        connection.execute(update(RunLock).values(expires_at=now - timedelta(seconds=1)))
    assert health(tool)[1]["last_sync"][0]["outcome"] == "abandoned"


def test_a_failed_run_is_degraded_but_the_portal_still_answers_200(
    tool: Continuity, directory: DirectoryTree
) -> None:
    directory.add_person("ana", "ana@acme.test")
    point_at(tool, directory)
    assert tool.sync()[0] == 0
    point_at(tool, directory, "ldap://127.0.0.1:1")
    assert tool.sync()[0] == 1

    code, body = health(tool)
    assert (code, body["status"]) == (200, "degraded")
    assert body["reasons"][0].startswith("corp: the last sync failed (started ")
    assert "error" not in json.dumps(body["last_sync"])  # public: outcomes, not messages
    result = tool.run("sync", "status")
    assert result.exit_code == 1
    assert "status=degraded" in result.stdout and "reason corp: the last sync failed" in (
        result.stdout
    )


def test_no_success_within_stale_after_minutes_is_degraded(
    tool: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    directory.add_person("ana", "ana@acme.test")
    point_at(tool, directory)
    assert tool.sync()[0] == 0
    with engine.begin() as connection:
        connection.execute(update(SyncRun).values(started_at=utcnow() - timedelta(minutes=61)))
    code, body = health(tool)
    assert (code, body["status"]) == (200, "degraded")
    assert body["reasons"][0].startswith("corp: no sync has succeeded since ")
    assert status(tool)[0] == 1

    text = tool.path.read_text(encoding="utf-8")
    tool.path.write_text(text.replace("\n\n", "\n\n[sync]\nstale_after_minutes = 120\n\n", 1))
    assert health(tool)[1]["status"] == "ok" and status(tool)[0] == 0


def test_a_configured_source_that_never_succeeded_is_degraded(tool: Continuity) -> None:
    tool.configure(source_toml("corp", "ldap://127.0.0.1:1", "dc=acme,dc=test", "cn=x", "y"))
    assert health(tool)[1]["reasons"] == ["corp: no sync has succeeded yet"]
    result = tool.run("sync", "status")
    assert result.exit_code == 1 and result.stdout.splitlines()[0] == "status=degraded"


def test_stale_after_minutes_is_checked_when_the_file_is_read(tool: Continuity) -> None:
    tool.path.write_text(tool.path.read_text() + '\n[sync]\nstale_after_minutes = "soon"\n')
    result = tool.run("sync", "status")
    assert result.exit_code == 2
    assert "[sync].stale_after_minutes" in result.stderr


def test_health_page_for_people_and_json_for_monitors(
    tool: Continuity, directory: DirectoryTree
) -> None:
    directory.add_person("ana", "ana@acme.test")
    point_at(tool, directory)
    assert tool.sync()[0] == 0
    with portal(tool) as client:
        english = client.get("/health", headers={"Accept": "text/html"})
        spanish = client.get("/health", headers={"Accept": "text/html", "Accept-Language": "es"})
        forced = client.get("/health?format=json", headers={"Accept": "text/html"})
        monitor = client.get("/health", headers={"Accept": "*/*"})
    page = english.get_data(as_text=True)
    assert "Continuity is working" in page and "succeeded" in page and "whole directory" in page
    assert "seconds ago (" in page or "second ago (" in page
    assert " UTC)" in page
    página = spanish.get_data(as_text=True)
    assert "Continuity funciona" in página and "correcta" in página and "hace " in página
    for response in (forced, monitor):
        assert response.is_json and response.json is not None
        assert response.json["status"] == "ok"
        assert response.json["last_sync"][0]["outcome"] == "success"
