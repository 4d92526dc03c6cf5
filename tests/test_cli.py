"""The `continuity` command: database, domains, roster listing, and its errors (the demo:
tests/test_demo.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, select

from roster.db import MIGRATIONS
from roster.models import AuditEvent
from tests.directory import Continuity

HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


@pytest.fixture
def tool(tmp_path: Path, database_url: str) -> Continuity:
    """The command line on an empty, migrated roster."""
    continuity = Continuity(tmp_path, database_url)
    continuity.configure()
    return continuity


def test_db_upgrade_creates_the_schema_on_an_empty_database(tmp_path: Path) -> None:
    tool = Continuity(tmp_path, f"sqlite:///{tmp_path}/fresh/roster.db")
    tool.configure()
    assert tool.run("domain", "list").exit_code == 1  # not set up yet
    result = tool.run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"roster schema at revision {HEAD}" in result.stdout
    assert tool.run("db", "upgrade").exit_code == 0  # a second upgrade changes nothing
    assert tool.run("domain", "list").exit_code == 0


@pytest.mark.parametrize(
    "command", [["roster", "list", "--domain", "acme.test"], ["domain", "list"]]
)
def test_reading_a_roster_that_is_not_there_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    """Bug: `roster list` on sqlite:////nonexistent/dir/r.db made the directory and an
    empty roster file, then said to run `db upgrade`; only `db upgrade` makes a roster."""
    missing = tmp_path / "nonexistent" / "dir" / "r.db"
    tool = Continuity(tmp_path, f"sqlite:///{missing}")
    tool.configure()
    result = tool.run(*command)
    assert result.exit_code == 1
    assert result.stderr == (
        f"continuity: the roster database {missing} does not exist: run `continuity db upgrade`\n"
    )
    assert not (tmp_path / "nonexistent").exists()


def test_without_any_configuration_a_command_creates_no_roster(tmp_path: Path) -> None:
    """Bug: with no configuration at all, `roster list` made the default roster's
    directory (/var/lib/continuity) and an empty file there."""
    default = tmp_path / "var" / "lib" / "continuity" / "roster.db"
    result = subprocess.run(
        [sys.executable, "-m", "continuity", "roster", "list", "--domain", "acme.test"],
        capture_output=True,
        text=True,
        env={
            **_environment_without_continuity(),
            "CONTINUITY_DATABASE_URL": f"sqlite:///{default}",
        },
    )
    assert result.returncode == 1
    assert "does not exist: run `continuity db upgrade`" in result.stderr
    assert not (tmp_path / "var").exists()


def _environment_without_continuity() -> dict[str, str]:
    """This process's environment without any CONTINUITY_ setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTINUITY_")}


BAD_PORTAL_VALUES = [
    ('secure_cookies = "maybe"', "[portal].secure_cookies: expected true or false, got 'maybe'"),
    ("session_lifetime_hours = 0", "[portal].session_lifetime_hours: must be at least 1, got 0"),
    ('trusted_proxies = "two"', "[portal].trusted_proxies: expected a number, got 'two'"),
]


@pytest.mark.parametrize(("line", "message"), BAD_PORTAL_VALUES)
def test_every_key_is_checked_whatever_the_command(
    tool: Continuity, line: str, message: str
) -> None:
    """Bug: `roster list` accepted secure_cookies = "maybe", session_lifetime_hours = 0
    and trusted_proxies = "two"; only `serve` failed on them, later, with a traceback."""
    tool.path.write_text(tool.path.read_text() + f"\n[portal]\n{line}\n")
    result = tool.run("roster", "list", "--domain", "acme.test")
    assert result.exit_code == 2
    assert result.stderr == f"continuity: configuration error: {message}\n"


def test_a_configuration_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """Bug: a configuration saved as UTF-16 (with its byte order mark) gave a traceback."""
    path = tmp_path / "continuity.toml"
    path.write_text('[database]\nurl = "sqlite:///x.db"\n', encoding="utf-16")
    result = subprocess.run(
        [sys.executable, "-m", "continuity", "--config", str(path), "domain", "list"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"continuity: configuration error: --config: {path} is UTF-16 text; save it as UTF-8\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "127.0.0.1:99999"], "--listen: the port must be between 1 and 65535"),
        (["--listen", "127.0.0.1"], "--listen: expected HOST:PORT"),
        (["--workers", "0"], "--workers: must be at least 1, got 0"),
    ],
)
def test_serve_refuses_a_bad_address_or_worker_count_in_one_line(
    tool: Continuity, args: list[str], message: str
) -> None:
    """Bug: `serve --listen 127.0.0.1:99999` died with an OverflowError, and `serve
    --workers 0` started a gunicorn master with no worker to answer anybody."""
    result = tool.run("serve", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"continuity: {message}")
    assert len(result.stderr.splitlines()) == 1


def test_domain_add_list_show_and_audit(tool: Continuity, engine: Engine) -> None:
    result = tool.run("domain", "add", "Acme.Test", "--primary", "mail.acme.test:2525")
    assert result.exit_code == 0 and "added domain acme.test" in result.stdout
    listed = json.loads(tool.run("domain", "list", "--json").stdout)
    assert [(d["name"], d["primary"], d["continuity_active"]) for d in listed] == [
        ("acme.test", "mail.acme.test:2525", False)
    ]
    shown = json.loads(tool.run("domain", "show", "acme.test", "--json").stdout)
    assert shown["people"] == 0 and shown["coverage_mode"] == "all"
    with engine.connect() as connection:
        (event,) = connection.execute(select(AuditEvent)).all()
    assert event.action == "domain.added" and event.actor.startswith("cli")
    assert event.after["primary"] == "mail.acme.test:2525"


def test_idn_domains_are_stored_in_ascii(tool: Continuity) -> None:
    assert tool.run("domain", "add", "bücher.test").exit_code == 0
    assert "xn--bcher-kva.test" in tool.run("domain", "list").stdout


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["domain", "add", "not a domain"], 1, "is not a valid domain name"),
        (["domain", "add", "acme.test", "--primary", "host:99999"], 2, "between 1 and 65535"),
        (["domain", "add", "acme.test", "--primary", "bad host:25"], 2, "not a host name"),
        (["domain", "show", "missing.test"], 1, "the domain missing.test is not in the roster"),
        (["roster", "list", "--domain", "missing.test"], 1, "is not in the roster"),
    ],
)
def test_bad_input_gets_one_clear_line(
    tool: Continuity, args: list[str], status: int, message: str
) -> None:
    result = tool.run(*args)
    assert result.exit_code == status
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_adding_a_domain_twice_is_refused(tool: Continuity) -> None:
    assert tool.run("domain", "add", "acme.test").exit_code == 0
    result = tool.run("domain", "add", "ACME.test")
    assert result.exit_code == 1 and "already in the roster" in result.stderr


def test_sync_without_any_directory_configured_exits_2(tool: Continuity) -> None:
    result = tool.run("sync")
    assert result.exit_code == 2
    assert "no directory source configured" in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "continuity", "--config", str(tmp_path / "nope.toml"), "sync"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("continuity: configuration error: --config: cannot")
