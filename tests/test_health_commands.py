"""`continuity gateway health` and `continuity sync health` against a running stack: exit 0
while things are well, 1 when the gateway stops, its primary has been down for long or
the sync failed, 2 when the roster cannot be read. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, insert, update
from sqlalchemy.orm import Session

from continuity import health_command
from roster.metrics import MONITOR_LEASE
from roster.models import ContinuityEvent, RunLock, utcnow
from tests.directory import Continuity, DirectoryTree, source_toml
from tests.test_metrics import Stack, stack, wait_for  # noqa: F401 - the fixture, by name


def health(tool: Continuity, *args: str) -> tuple[int, dict[str, Any]]:
    """`continuity ... health --json ARGS`: exit status and body."""
    result = tool.run(*args, "--json")
    return result.exit_code, json.loads(result.stdout)


def failing(body: dict[str, Any]) -> list[str]:
    """The names of the checks that failed."""
    return [check["check"] for check in body["checks"] if not check["ok"]]


def test_gateway_health_follows_the_gateway_and_its_primary(
    stack: Stack,  # noqa: F811
    tmp_path: Path,
    database_url: str,
) -> None:
    """Healthy with the gateway running and the primary answering; an outage just begun
    is no alarm, one of two hours is (the limit is an option); a stopped gateway is."""
    tool = Continuity(tmp_path, database_url)
    port = stack.mail.gateway.settings.port
    tool.configure(f'[gateway]\nlisten = "127.0.0.1:{port}"\n')
    wait_for(lambda: stack.domain().last_check_ok is True)

    code, body = health(tool, "gateway", "health")
    assert (code, body["status"], failing(body)) == (0, "healthy", [])
    assert {c["check"] for c in body["checks"]} >= {"gateway", "listener", "primary acme.test"}
    text = tool.run("gateway", "health")
    assert text.exit_code == 0 and text.stdout.startswith("gateway: healthy\n")

    stack.mail.primary.stop()
    wait_for(lambda: stack.event() is not None)
    code, body = health(tool, "gateway", "health")
    assert (code, failing(body)) == (0, [])
    code, body = health(tool, "gateway", "health", "--max-primary-down", "0")
    assert (code, failing(body)) == (1, ["primary acme.test"])
    with Session(stack.engine) as session, session.begin():
        session.execute(update(ContinuityEvent).values(started_at=utcnow() - timedelta(hours=2)))
    code, body = health(tool, "gateway", "health")
    assert (code, body["status"], failing(body)) == (1, "unhealthy", ["primary acme.test"])
    assert "failing for about 2 hours" in json.dumps(body)
    text = tool.run("gateway", "health")
    assert (
        text.exit_code == 1 and "FAIL  primary acme.test: failing for about 2 hours" in text.stdout
    )

    stack.stop_gateway()
    code, body = health(tool, "gateway", "health", "--no-listener")
    assert code == 1 and "gateway" in failing(body)
    code, body = health(tool, "gateway", "health")
    assert code == 1 and {"gateway", "listener"} <= set(failing(body))


def test_gateway_health_counts_deferred_mail(
    stack: Stack,  # noqa: F811
    tmp_path: Path,
    database_url: str,
) -> None:
    """Recipients the primary defers count against --max-deferred."""
    tool = Continuity(tmp_path, database_url)
    tool.configure()
    wait_for(lambda: stack.domain().last_check_ok is True)
    stack.mail.primary.handler.replies["ana@acme.test"] = "451 4.2.0 try later"
    stack.mail.send(["ana@acme.test"])
    wait_for(lambda: any(r.status == "deferred" for r in stack.mail.recipients()))

    assert health(tool, "gateway", "health")[0] == 0
    code, body = health(tool, "gateway", "health", "--max-deferred", "0")
    assert (code, failing(body)) == (1, ["deferred"])
    assert body["queue"] == [
        {
            "domain": "acme.test",
            "state": "deferred",
            "recipients": 1,
            "oldest_received_at": body["queue"][0]["oldest_received_at"],
            "overdue": 0,
        }
    ]


def test_sync_health_follows_the_last_run(
    tmp_path: Path, database_url: str, directory: DirectoryTree
) -> None:
    """0 after a good run, 1 after a run that could not reach the directory."""
    tool = Continuity(tmp_path, database_url)
    tool.configure()
    assert tool.run("domain", "add", "acme.test").exit_code == 0
    slapd = directory.slapd
    tool.configure(
        source_toml("corp", slapd.url, directory.base_dn, slapd.root_dn, slapd.root_password)
    )
    directory.add_person("ana", "ana@acme.test")
    code, _ = health(tool, "sync", "health")
    assert code == 1  # never ran
    assert tool.sync()[0] == 0
    code, body = health(tool, "sync", "health")
    assert (code, body["status"], failing(body)) == (0, "healthy", [])

    tool.configure(source_toml("corp", "ldap://127.0.0.1:9", directory.base_dn, slapd.root_dn, "x"))
    assert tool.sync()[0] == 1
    code, body = health(tool, "sync", "health")
    assert (code, failing(body)) == (1, ["source corp"])
    text = tool.run("sync", "health")
    assert text.exit_code == 1
    assert "FAIL  source corp: corp: the last sync failed" in text.stdout


def test_health_cannot_tell_without_the_roster(tmp_path: Path, database_url: str) -> None:
    """A roster that cannot be read: exit 2, "unknown", for both commands."""
    if database_url.startswith("sqlite"):
        unreachable = f"sqlite:///{tmp_path / 'nowhere.db'}"
    else:
        unreachable = database_url.rsplit("/", 1)[0] + "/no_such_roster_database"
    tool = Continuity(tmp_path, unreachable)
    tool.configure(source_toml("corp", "ldap://127.0.0.1:9", "dc=x", "cn=x", "x"))
    for command in (("gateway", "health"), ("sync", "health")):
        code, body = health(tool, *command)
        assert (code, body["status"]) == (2, "unknown")
        assert "roster database" in body["reason"]


def test_an_unexpected_error_is_cannot_tell(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure nobody foresaw (here: the roster's reads raising something that is no
    database error) is exit 2 "unknown" with one line saying what, not a traceback with
    exit status 1, which a monitor would take for "unhealthy"."""
    tool = Continuity(tmp_path, database_url)
    tool.configure()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("something nobody expected\non two lines")

    monkeypatch.setattr(health_command, "primaries", broken)
    monkeypatch.setattr(health_command, "sync_health", broken)
    for command in (("gateway", "health"), ("sync", "health")):
        code, body = health(tool, *command)
        assert (code, body["status"]) == (2, "unknown")
        assert body["reason"] == (
            "unexpected error: RuntimeError: something nobody expected on two lines"
        )
        text = tool.run(*command)
        assert text.exit_code == 2
        assert text.stdout == (
            f"{command[0]}: unknown: unexpected error: RuntimeError: something nobody"
            " expected on two lines\n"
        )


def test_the_monitor_lease_is_read_once(engine: Engine, tmp_path: Path, database_url: str) -> None:
    """`gateway health` reads the monitor lease in one statement, so that whether it is
    alive and who holds it come from the same row; a lease not expired whose holder's
    process is gone from this host is no live gateway, and says so."""
    tool = Continuity(tmp_path, database_url)
    tool.configure()
    gone = subprocess.Popen(["true"])  # a process of this host, ended: its pid is free
    gone.wait()
    now = utcnow()
    holders = {
        "alive": f"{socket.gethostname()}:{os.getpid()}:abcd1234",
        "gone": f"{socket.gethostname()}:{gone.pid}:abcd1234",
    }
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(str(args[2]))

    for case, holder in holders.items():
        with engine.begin() as connection:
            connection.execute(delete(RunLock))
            connection.execute(
                insert(RunLock).values(
                    name=MONITOR_LEASE,
                    holder=holder,
                    acquired_at=now,
                    expires_at=now + timedelta(minutes=5),
                )
            )
        statements.clear()
        event.listen(Engine, "before_cursor_execute", seen)
        try:
            code, body = health(tool, "gateway", "health", "--no-listener")
        finally:
            event.remove(Engine, "before_cursor_execute", seen)
        assert len([s for s in statements if "run_lock" in s]) == 1
        gateway = next(c for c in body["checks"] if c["check"] == "gateway")
        if case == "alive":
            assert gateway == {
                "check": "gateway",
                "ok": True,
                "detail": f"alive (the monitor lease is held by {holder})",
            }
        else:
            assert code == 1
            assert gateway == {
                "check": "gateway",
                "ok": False,
                "detail": f"the monitor lease's holder {holder} is no longer running",
            }
