"""The `continuity` command: database, domains, roster listing, the demo, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from roster.models import AuditEvent
from tests.directory import Continuity


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
    assert "roster schema at revision 0004" in result.stdout
    assert tool.run("db", "upgrade").exit_code == 0  # a second upgrade changes nothing
    assert tool.run("domain", "list").exit_code == 0


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


def test_the_demo_sets_up_and_syncs_a_directory(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "continuity", "demo", "--workdir", str(workdir), "--no-serve"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "directory sync: success, 10 people, 2 staff roles" in result.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "continuity", "--config", str(workdir / "continuity.toml")]
        + ["roster", "list", "--domain", "acme.test", "--json"],
        capture_output=True,
        text=True,
    )
    people = {p["mail"]: p for p in json.loads(listed.stdout)}
    assert people["jorge.ruiz@acme.test"]["status"] == "disabled"
    assert people["maria.lopez@acme.test"]["aliases"] == ["contacto@acme.test", "info@acme.test"]
