"""`continuity domain activate|deactivate|set` and `continuity coverage mode|add|remove|list`
through the real command, over people synced from a real slapd."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from roster.db import session_factory, transaction
from roster.domains import check_primary, get_domain
from roster.models import AuditEvent, Domain
from roster.service import (
    activate,
    add_person,
    remove_person,
    set_coverage_mode,
    set_primary,
    switch_emergency_password,
)
from tests.directory import Continuity, DirectoryTree, source_toml

ACME = "acme.test"
BRAND = "brand.test"
USER = f"cli:{getpass.getuser()}"


@pytest.fixture
def tool(tmp_path: Path, database_url: str, directory: DirectoryTree) -> Continuity:
    """The command line on a roster synced from ``directory``: in acme.test ana, bo
    (alias help@), dee, cy (disabled) and gone (removed); in brand.test eve and fay."""
    continuity = Continuity(tmp_path, database_url)
    continuity.configure()
    for name in (ACME, BRAND):
        assert continuity.run("domain", "add", name).exit_code == 0
    directory.add_person("ana", "ana@acme.test", cn="Ana García")
    directory.add_person("bo", "bo@acme.test", cn="Bo Ek", aliases=("help@acme.test",))
    directory.add_person("cy", "cy@acme.test", cn="Cy Off", description="disabled")
    directory.add_person("dee", "dee@acme.test", cn="Dee Núñez")
    directory.add_person("gone", "gone@acme.test", cn="Gone")
    directory.add_person("eve", "eve@brand.test", cn="Eve")
    directory.add_person("fay", "fay@brand.test", cn="Fay")
    continuity.configure(
        source_toml(
            "corp",
            directory.slapd.url,
            directory.base_dn,
            directory.slapd.root_dn,
            directory.slapd.root_password,
            domains=[ACME, BRAND],
            disabled_filter="(description=disabled)",
            max_removal_share=1.0,
        )
    )
    assert continuity.sync("--full")[0] == 0
    directory.delete("gone")
    assert continuity.sync("--full")[1]["counts"]["removed"] == 1
    return continuity


def ok(tool: Continuity, *args: str) -> Result:
    """Run a command that must succeed."""
    result = tool.run(*args)
    assert result.exit_code == 0, result.output
    return result


def shown(tool: Continuity, domain: str = ACME) -> dict[str, Any]:
    """`domain show --json`."""
    settings: dict[str, Any] = json.loads(ok(tool, "domain", "show", domain, "--json").stdout)
    return settings


def covered(tool: Continuity, domain: str = ACME) -> list[str]:
    """`coverage list --json`, by address."""
    return [
        row["mail"] for row in json.loads(ok(tool, "coverage", "list", domain, "--json").stdout)
    ]


def lines(text: str) -> list[str]:
    """The lines of an output."""
    return text.strip().splitlines()


def trail(engine: Engine, domain: str = ACME) -> list[tuple[Any, ...]]:
    """The administration audit of a domain, oldest first: (action, actor, before,
    after, detail); the sync's and domain.added left out."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                AuditEvent.action,
                AuditEvent.actor,
                AuditEvent.before,
                AuditEvent.after,
                AuditEvent.detail,
            )
            .join(Domain, Domain.id == AuditEvent.domain_id)
            .where(
                Domain.name == domain,
                AuditEvent.action != "domain.added",
                AuditEvent.actor.not_like("sync:%"),
            )
            .order_by(AuditEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def audit_count(engine: Engine) -> int:
    """How many audit events there are."""
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(AuditEvent)) or 0


def test_domain_activate_and_deactivate(tool: Continuity, engine: Engine) -> None:
    assert ok(tool, "domain", "activate", ACME).stdout == (
        "Continuity Service is active for acme.test\n"
    )
    assert ok(tool, "domain", "activate", "ACME.test").stdout == (
        "Continuity Service is active for acme.test (it was)\n"
    )
    assert "acme.test\tactive\tall\t-" in lines(ok(tool, "domain", "list").stdout)
    assert covered(tool) == ["ana@acme.test", "bo@acme.test", "dee@acme.test"]

    assert ok(tool, "domain", "deactivate", ACME).stdout == (
        "Continuity Service is inactive for acme.test\n"
    )
    assert ok(tool, "domain", "deactivate", ACME).stdout.endswith("(it was)\n")
    assert shown(tool)["continuity_active"] is False
    assert covered(tool) == []

    result = tool.run("domain", "activate", "missing.test")
    assert result.exit_code == 1
    assert result.stderr == "continuity: the domain missing.test is not in the roster\n"
    assert trail(engine) == [
        ("service.activated", USER, {"continuity_active": False}, {"continuity_active": True}, ""),
        (
            "service.deactivated",
            USER,
            {"continuity_active": True},
            {"continuity_active": False},
            "",
        ),
    ]


def test_domain_set_emergency_password_and_primary(tool: Continuity, engine: Engine) -> None:
    result = tool.run("domain", "set", ACME, "--emergency-password", "on")
    assert result.exit_code == 1
    assert result.stderr == (
        "continuity: Continuity Service is not active for acme.test: activate it first\n"
    )
    assert shown(tool)["emergency_password_enabled"] is False

    ok(tool, "domain", "activate", ACME)
    result = ok(tool, "domain", "set", ACME, "--emergency-password", "on")
    assert "emergency_password_enabled: True" in lines(result.stdout)
    result = tool.run("domain", "set", ACME, "--primary-tls", "tls")
    assert (result.exit_code, result.stderr) == (
        2,
        "continuity: --primary: the domain has no primary server yet; name it\n",
    )
    result = ok(tool, "domain", "set", ACME, "--primary", "Mail.Acme.test:2525")
    assert "primary: mail.acme.test:2525" in lines(result.stdout)
    ok(
        tool,
        *("domain", "set", ACME, "--primary-tls", "tls", "--failover", "manual"),
        *("--probe-interval", "30", "--failures-before-failover", "5"),
    )
    settings = shown(tool)
    assert settings == {
        **settings,
        "primary": "mail.acme.test:2525",
        "primary_tls": "tls",
        "failover_automatic": False,
        "probe_interval_seconds": 30,
        "failures_before_failover": 5,
        "emergency_password_enabled": True,
    }
    assert trail(engine)[1:] == [
        (
            "emergency_password.enabled",
            USER,
            {"emergency_password_enabled": False},
            {"emergency_password_enabled": True},
            "",
        ),
        (
            "primary.changed",
            USER,
            {"primary_host": None, "primary_port": 25},
            {"primary_host": "mail.acme.test", "primary_port": 2525},
            "",
        ),
        (
            "primary.changed",
            USER,
            {
                "primary_tls": "starttls",
                "failover_automatic": True,
                "probe_interval_seconds": 60,
                "failures_before_failover": 3,
            },
            {
                "primary_tls": "tls",
                "failover_automatic": False,
                "probe_interval_seconds": 30,
                "failures_before_failover": 5,
            },
            "",
        ),
    ]

    before, events = shown(tool), audit_count(engine)
    for options, message in [
        (["--primary", "bad host:25"], "--primary: 'bad host:25': 'bad host' is not a host name"),
        (["--primary", "mx.acme.test:70000"], "the port must be between 1 and 65535"),
        # Regression: impossible addresses were saved as primary servers.
        (["--primary", "999.999.999.999"], "'999.999.999.999' is not a valid IP address"),
        (["--primary", "1.2.3.4.5:25"], "'1.2.3.4.5' is not a valid IP address"),
        (["--primary", "0"], "'0' is not a valid IP address"),
        (["--primary", "[2001:db8::zz]:25"], "is not a host name or IP address"),
        (
            ["--probe-interval", "5", "--failures-before-failover", "0"],
            "the probe interval must be a whole number from 10 to 3600; the failures"
            " before failover must be a whole number from 1 to 20",
        ),
        (["--probe-interval", "5"], "the probe interval must be a whole number from 10 to 3600"),
        (
            ["--primary", "mx.acme.test", "--failures-before-failover", "21"],
            "the failures before failover must be a whole number from 1 to 20",
        ),
        (
            ["--emergency-password", "off", "--probe-interval", "4000"],
            "the probe interval must be a whole number from 10 to 3600",
        ),
        ([], "nothing to set: give at least one option (see --help)"),
    ]:
        result = tool.run("domain", "set", ACME, *options)
        assert (options, result.exit_code) == (options, 2)
        assert len(lines(result.stderr)) == 1 and message in result.stderr, result.stderr
        assert result.stderr.startswith("continuity: ")
    result = tool.run("domain", "set", ACME, "--primary-tls", "ssl")  # click's own check
    assert result.exit_code == 2 and "'ssl' is not one of" in result.stderr
    assert shown(tool) == before
    assert audit_count(engine) == events


def test_coverage_mode_needs_yes_to_empty_the_list(tool: Continuity, engine: Engine) -> None:
    result = tool.run("coverage", "mode", ACME, "selected")
    assert result.exit_code == 1 and "activate it first" in result.stderr
    ok(tool, "domain", "activate", ACME)
    # Regression: going to only selected users with nobody listed uncovered everyone
    # without a word; it needs --yes, like the opposite switch.
    before, events = shown(tool), audit_count(engine)
    result = tool.run("coverage", "mode", ACME, "selected")
    assert result.exit_code == 1
    assert lines(result.stderr) == [
        "continuity: 3 covered user(s) of acme.test are not on the list of selected users"
        " and will no longer be covered: run again with --yes, or add them first"
        " (coverage add)"
    ]
    assert shown(tool) == before and audit_count(engine) == events
    assert covered(tool) == ["ana@acme.test", "bo@acme.test", "dee@acme.test"]
    assert ok(tool, "coverage", "mode", ACME, "selected", "--yes").stdout == (
        "acme.test covers only selected users\n"
    )
    assert covered(tool) == []
    ok(tool, "coverage", "add", ACME, "ana@acme.test", "bo@acme.test")
    before, events = shown(tool), audit_count(engine)

    result = tool.run("coverage", "mode", ACME, "all")
    assert result.exit_code == 1
    assert lines(result.stderr) == [
        "continuity: 2 individually added user(s) of acme.test will be removed from the list"
        " when everyone is covered: run again with --yes"
    ]
    assert shown(tool) == before and audit_count(engine) == events
    assert covered(tool) == ["ana@acme.test", "bo@acme.test"]

    assert ok(tool, "coverage", "mode", ACME, "all", "--yes").stdout == (
        "acme.test covers all users; 2 listed user(s) taken off the list\n"
    )
    assert shown(tool)["coverage_mode"] == "all"
    assert covered(tool) == ["ana@acme.test", "bo@acme.test", "dee@acme.test"]
    ok(tool, "coverage", "mode", ACME, "selected", "--yes")
    assert covered(tool) == []  # the list was emptied for good
    assert ok(tool, "coverage", "mode", ACME, "all").stdout == "acme.test covers all users\n"
    result = tool.run("coverage", "mode", ACME, "some")
    assert result.exit_code == 2 and "'some' is not one of" in result.stderr


def test_coverage_add_and_remove_do_the_good_ones_and_refuse_each_bad_one(
    tool: Continuity, engine: Engine
) -> None:
    ok(tool, "domain", "activate", ACME)
    result = tool.run("coverage", "add", ACME, "ana@acme.test")
    assert (result.exit_code, result.stderr) == (
        1,
        "continuity: acme.test covers all users: choose only selected users first\n",
    )
    ok(tool, "coverage", "mode", ACME, "selected", "--yes")

    result = tool.run(
        *("coverage", "add", ACME, "ana@acme.test", "nobody@acme.test", "eve@brand.test"),
        *("not-an-address", "HELP@acme.test", "gone@acme.test", "cy@acme.test", "Ana@acme.test"),
    )
    assert result.exit_code == 1
    assert lines(result.stdout) == [
        "ana@acme.test added",
        "bo@acme.test added",
        "cy@acme.test added",
    ]
    assert lines(result.stderr) == [
        "refused: nobody@acme.test is not in the roster",
        "refused: eve@brand.test is not in the domain acme.test",
        "refused: 'not-an-address' is not an email address",
        "refused: gone@acme.test has been removed from the directory",
        "refused: ana@acme.test is repeated above",
    ]
    assert covered(tool) == ["ana@acme.test", "bo@acme.test"]  # cy is disabled

    result = tool.run("coverage", "remove", ACME, "ana@acme.test", "dee@acme.test")
    assert result.exit_code == 1
    assert lines(result.stdout) == ["ana@acme.test removed"]
    assert lines(result.stderr) == ["refused: dee@acme.test is not on the list"]
    assert ok(tool, "coverage", "add", ACME, "dee@acme.test").stdout == "dee@acme.test added\n"
    assert covered(tool) == ["bo@acme.test", "dee@acme.test"]
    assert [(action, detail) for action, _, _, _, detail in trail(engine)[2:]] == [
        ("coverage.added", "ana@acme.test"),
        ("coverage.added", "bo@acme.test"),
        ("coverage.added", "cy@acme.test"),
        ("coverage.removed", "ana@acme.test"),
        ("coverage.added", "dee@acme.test"),
    ]


def test_coverage_list_in_text_and_json(tool: Continuity) -> None:
    assert ok(tool, "coverage", "list", ACME).stdout == ""  # not active: nobody covered
    ok(tool, "domain", "activate", ACME)
    assert ok(tool, "coverage", "list", ACME).stdout == (
        "ana@acme.test\tAna García\nbo@acme.test\tBo Ek\ndee@acme.test\tDee Núñez\n"
    )
    assert json.loads(ok(tool, "coverage", "list", ACME, "--json").stdout) == [
        {"mail": "ana@acme.test", "display_name": "Ana García"},
        {"mail": "bo@acme.test", "display_name": "Bo Ek"},
        {"mail": "dee@acme.test", "display_name": "Dee Núñez"},
    ]
    ok(tool, "coverage", "mode", ACME, "selected", "--yes")
    ok(tool, "coverage", "add", ACME, "dee@acme.test", "cy@acme.test")
    assert ok(tool, "coverage", "list", ACME).stdout == "dee@acme.test\tDee Núñez\n"
    assert json.loads(ok(tool, "coverage", "list", ACME, "--json").stdout) == [
        {"mail": "dee@acme.test", "display_name": "Dee Núñez"}
    ]
    assert ok(tool, "coverage", "list", BRAND).stdout == ""
    result = tool.run("coverage", "list", "missing.test")
    assert result.exit_code == 1 and "is not in the roster" in result.stderr


def test_the_command_leaves_the_same_audit_trail_as_the_service(
    tool: Continuity, engine: Engine
) -> None:
    """The same steps, by the command on acme.test and by roster.service on brand.test."""
    factory = session_factory(engine)

    def service(step: Callable[[Session, Domain], object]) -> None:
        with transaction(factory) as session:
            step(session, get_domain(session, BRAND))

    primary = check_primary("mx.brand.test", 2525, "starttls", True, 60, 3)
    steps: list[tuple[list[str], Callable[[Session, Domain], object]]] = [
        (["domain", "activate", ACME], lambda s, d: activate(s, d, USER)),
        (
            ["domain", "set", ACME, "--emergency-password", "on"],
            lambda s, d: switch_emergency_password(s, d, True, USER),
        ),
        (
            ["domain", "set", ACME, "--primary", "mx.acme.test:2525"],
            lambda s, d: set_primary(s, d, primary, USER),
        ),
        (
            ["coverage", "mode", ACME, "selected", "--yes"],
            lambda s, d: set_coverage_mode(s, d, "selected", USER, confirmed=True),
        ),
        (
            ["coverage", "add", ACME, "ana@acme.test"],
            lambda s, d: add_person(s, d, "eve@brand.test", USER),
        ),
        (
            ["coverage", "add", ACME, "bo@acme.test"],
            lambda s, d: add_person(s, d, "fay@brand.test", USER),
        ),
        (
            ["coverage", "remove", ACME, "bo@acme.test"],
            lambda s, d: remove_person(s, d, "fay@brand.test", USER),
        ),
        (
            ["coverage", "mode", ACME, "all", "--yes"],
            lambda s, d: set_coverage_mode(s, d, "all", USER, confirmed=True),
        ),
    ]
    for args, step in steps:
        ok(tool, *args)
        service(step)

    def neutral(entries: list[tuple[Any, ...]], domain: str, a: str, b: str) -> list[str]:
        """The entries with the domain and the two people's addresses made alike."""
        text = json.dumps(entries).replace(a, "<A>").replace(b, "<B>").replace(domain, "<D>")
        return [json.dumps(entry) for entry in json.loads(text)]

    by_command, by_service = trail(engine, ACME), trail(engine, BRAND)
    assert [entry[:2] for entry in by_command] == [
        ("service.activated", USER),
        ("emergency_password.enabled", USER),
        ("primary.changed", USER),
        ("coverage.mode_changed", USER),
        ("coverage.added", USER),
        ("coverage.added", USER),
        ("coverage.removed", USER),
        ("coverage.mode_changed", USER),
    ]
    assert neutral(by_command, ACME, "ana@acme.test", "bo@acme.test") == neutral(
        by_service, BRAND, "eve@brand.test", "fay@brand.test"
    )
    assert by_command[-1][2:4] == (
        {"coverage_mode": "selected", "listed": 1},
        {"coverage_mode": "all", "listed": 0},
    )


def test_someone_moving_to_another_domain_leaves_the_first_domain_list(
    tool: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    """Regression: a listed person whose address moved to another domain stayed on the
    first domain's list (shown there, impossible to remove) and was covered by the other
    domain, whose admins never chose them."""
    for domain in (ACME, BRAND):
        ok(tool, "domain", "activate", domain)
        ok(tool, "coverage", "mode", domain, "selected", "--yes")
    ok(tool, "coverage", "add", ACME, "ana@acme.test", "bo@acme.test")
    directory.replace("ana", mail="ana@brand.test")
    assert tool.sync("--full")[1]["counts"]["renamed"] == 1

    assert covered(tool, BRAND) == []
    assert covered(tool, ACME) == ["bo@acme.test"]
    # The first domain's trail says why they left its list.
    with engine.connect() as connection:
        left = connection.execute(
            select(AuditEvent.actor, AuditEvent.detail)
            .join(Domain, Domain.id == AuditEvent.domain_id)
            .where(Domain.name == ACME, AuditEvent.action == "coverage.removed")
        ).all()
    assert [tuple(row) for row in left] == [
        ("sync:corp", "moved to another domain in the directory")
    ]
    result = tool.run("coverage", "mode", ACME, "all")
    assert result.exit_code == 1 and "1 individually added user(s)" in result.stderr
    assert ok(tool, "coverage", "add", BRAND, "ana@brand.test").stdout == "ana@brand.test added\n"
    assert covered(tool, BRAND) == ["ana@brand.test"]


def test_domain_set_failover_settings_and_show_the_days_mail(
    tool: Continuity, engine: Engine
) -> None:
    """`domain set --primary-tls-verify|--recover-after|--failover-codes|--language|
    --verify-recipients`: checked like the others (exit 2, nothing changed), audited,
    and `domain show` prints them with today's mail counts."""
    ok(tool, "domain", "set", ACME, "--primary", "mx.acme.test")
    before, events = shown(tool), audit_count(engine)
    assert (before["primary_tls_verify"], before["recover_after"], before["language"]) == (
        True,
        3,
        "en",
    )
    for options, message in [
        (["--recover-after", "0"], "the checks before hand-back must be a whole number from 1"),
        (["--failover-codes", "452,250"], "'250' is not an SMTP reply code of a failure"),
        (["--failover-codes", "45x"], "'45x' is not an SMTP reply code of a failure"),
        (["--failover-codes", ",".join(str(c) for c in range(421, 432))], "at most 10"),
    ]:
        result = tool.run("domain", "set", ACME, *options)
        assert (options, result.exit_code) == (options, 2)
        assert message in result.stderr and len(lines(result.stderr)) == 1, result.stderr
    assert tool.run("domain", "set", ACME, "--language", "fr").exit_code == 2  # click's check
    assert (shown(tool), audit_count(engine)) == (before, events)

    result = ok(
        tool,
        *("domain", "set", ACME, "--recover-after", "5", "--failover-codes", " 452, 552 "),
        *("--language", "es", "--primary-tls-verify", "off", "--verify-recipients", "off"),
        *(
            "--sent-copies",
            "on",
        ),
    )
    assert "failover_codes: 452,552" in lines(result.stdout)
    settings = shown(tool)
    assert {key: settings[key] for key in before if settings[key] != before[key]} == {
        "recover_after": 5,
        "failover_codes": "452,552",
        "language": "es",
        "primary_tls_verify": False,
        "verify_recipients": False,
        "sent_copies_to_primary": True,
    }
    assert trail(engine)[-1] == (
        "primary.changed",
        USER,
        {
            "primary_tls_verify": True,
            "recover_after": 3,
            "failover_codes": "",
            "language": "en",
            "verify_recipients": True,
            "sent_copies_to_primary": False,
        },
        {
            "primary_tls_verify": False,
            "recover_after": 5,
            "failover_codes": "452,552",
            "language": "es",
            "verify_recipients": False,
            "sent_copies_to_primary": True,
        },
        "the primary server's certificate is no longer checked",
    )
    ok(tool, "domain", "set", ACME, "--primary-tls-verify", "on", "--failover-codes", "")
    assert trail(engine)[-1][2:] == (
        {"primary_tls_verify": False, "failover_codes": "452,552"},
        {"primary_tls_verify": True, "failover_codes": ""},
        "",
    )
    assert settings["mail_today"] == {
        "since": settings["mail_today"]["since"],
        "received": 0,
        "delivered": 0,
        "deferred": 0,
        "bounced": 0,
        "copied": 0,
        "copies_pending": 0,
    }
    assert settings["mail_today"]["since"].endswith("T00:00:00+00:00")
    assert settings["continuity_state"] == "not_checked"
    plain = ok(tool, "domain", "show", ACME).stdout
    assert "mail_today: " in plain and "'copies_pending': 0" in plain
