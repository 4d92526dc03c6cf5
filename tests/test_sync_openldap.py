"""The directory sync end to end against a real slapd, on each roster database."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import ldap3
import pytest
from sqlalchemy import Engine, func, insert, select

from continuity.localslapd import Slapd
from roster.locks import Lease
from roster.models import (
    AuditEvent,
    CoverageEntry,
    Domain,
    EmergencyCredential,
    Person,
    StaffRole,
    SyncRun,
    utcnow,
)
from sync.directory import normalise_dn
from tests.directory import Continuity, DirectoryTree, source_toml


@pytest.fixture
def continuity(tmp_path: Path, database_url: str, engine: Engine) -> Continuity:
    """The command line on a roster that holds acme.test and acme-brand.test."""
    tool = Continuity(tmp_path, database_url)
    tool.configure()
    for name in ("acme.test", "acme-brand.test"):
        assert tool.run("domain", "add", name).exit_code == 0
    return tool


def configure(tool: Continuity, tree: DirectoryTree, **extra: object) -> None:
    """Point the tool at ``tree`` as the openldap source "corp"."""
    extra.setdefault("disabled_filter", "(description=disabled)")
    extra.setdefault("domains", ["acme.test", "acme-brand.test"])
    base_dn = str(extra.pop("base_dn", tree.base_dn))
    url = str(extra.pop("url", tree.slapd.url))
    tool.configure(
        source_toml(
            "corp",
            url,
            base_dn,
            tree.slapd.root_dn,
            tree.slapd.root_password,
            **extra,
        )
    )


def runs(engine: Engine) -> list[SyncRun]:
    """Every recorded sync run, oldest first."""
    with engine.connect() as connection:
        return list(connection.execute(select(SyncRun).order_by(SyncRun.id)).all())


def test_people_aliases_names_and_unknown_domains(
    continuity: Continuity, directory: DirectoryTree
) -> None:
    directory.add_person("ana", "Ana@Acme.test", cn="Ana García", aliases=("sales@acme.test",))
    directory.add_person("bo", "bo@acme-brand.test", display_name="Bo Ek")
    directory.add_person("zed", "zed@elsewhere.test")
    directory.add_person("nomail", None)
    configure(continuity, directory)

    status, summary = continuity.sync()

    assert status == 0, summary
    assert summary["mode"] == "full" and summary["outcome"] == "success"
    assert summary["counts"]["created"] == 2
    assert summary["counts"]["skipped_unknown_domain"] == 1
    assert summary["counts"]["skipped_invalid"] == 1
    people = continuity.people()
    assert people["ana@acme.test"]["display_name"] == "Ana García"
    assert people["ana@acme.test"]["aliases"] == ["sales@acme.test"]
    assert people["ana@acme.test"]["status"] == "active"
    assert continuity.people("acme-brand.test")["bo@acme-brand.test"]["display_name"] == "Bo Ek"


def test_update_rename_disable_and_reenable(
    continuity: Continuity, directory: DirectoryTree
) -> None:
    directory.add_person("ana", "ana@acme.test", cn="Ana")
    configure(continuity, directory)
    assert continuity.sync("--full")[0] == 0
    external_id = continuity.people()["ana@acme.test"]["external_id"]

    directory.replace("ana", mail="ana.garcia@acme.test", displayName="Ana García")
    status, summary = continuity.sync("--full")
    assert status == 0
    assert summary["counts"]["renamed"] == 1 and summary["counts"].get("created", 0) == 0
    people = continuity.people()
    assert list(people) == ["ana.garcia@acme.test"]
    assert people["ana.garcia@acme.test"]["external_id"] == external_id
    assert people["ana.garcia@acme.test"]["display_name"] == "Ana García"

    directory.replace("ana", description="disabled")
    assert continuity.sync("--full")[1]["counts"]["disabled"] == 1
    assert continuity.people()["ana.garcia@acme.test"]["status"] == "disabled"

    directory.replace("ana", description=None)
    assert continuity.sync("--full")[1]["counts"]["enabled"] == 1
    assert continuity.people()["ana.garcia@acme.test"]["status"] == "active"


def test_removal_drops_coverage_password_and_sessions_and_reappearing_restores(
    continuity: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    for number in range(12):
        directory.add_person(f"p{number}", f"p{number}@acme.test")
    configure(continuity, directory)
    assert continuity.sync("--full")[0] == 0
    with engine.begin() as connection:
        person_id, domain_id = connection.execute(
            select(Person.id, Person.domain_id).where(Person.mail == "p0@acme.test")
        ).one()
        connection.execute(
            insert(CoverageEntry).values(
                domain_id=domain_id, person_id=person_id, added_by="admin", added_at=utcnow()
            )
        )
        connection.execute(
            insert(EmergencyCredential).values(
                person_id=person_id, password_hash="$argon2id$x", set_at=utcnow()
            )
        )

    directory.delete("p0")
    status, summary = continuity.sync()  # incremental: nobody is removed
    assert status == 0 and summary["mode"] == "incremental"
    assert "p0@acme.test" in continuity.people()

    status, summary = continuity.sync("--full")
    assert status == 0 and summary["counts"]["removed"] == 1
    assert "p0@acme.test" not in continuity.people()
    removed = continuity.people("acme.test", "--include-removed")["p0@acme.test"]
    assert removed["status"] == "removed"
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(CoverageEntry)) == 0
        assert connection.scalar(select(func.count()).select_from(EmergencyCredential)) == 0
        assert (
            connection.scalar(select(Person.session_generation).where(Person.id == person_id)) == 1
        )
        actions = connection.scalars(
            select(AuditEvent.action).where(AuditEvent.person_id == person_id)
        ).all()
    assert "person.removed" in actions

    directory.add_person("p0", "p0@acme.test")  # a new entry: new entryUUID
    status, summary = continuity.sync("--full")
    assert summary["counts"]["created"] == 1
    assert continuity.people()["p0@acme.test"]["external_id"] != removed["external_id"]


def test_a_person_who_reappears_with_the_same_id_is_restored(
    continuity: Continuity, directory: DirectoryTree
) -> None:
    for number in range(10):
        directory.add_person(f"p{number}", f"p{number}@acme.test")
    directory.add_person("moving", "moving@acme.test")
    configure(continuity, directory)
    assert continuity.sync("--full")[0] == 0
    directory.replace("moving", mail="moving@elsewhere.test")  # out of our domains
    assert continuity.sync("--full")[1]["counts"]["removed"] == 1
    directory.replace("moving", mail="moving@acme.test")
    status, summary = continuity.sync("--full")
    assert summary["counts"]["restored"] == 1
    assert continuity.people()["moving@acme.test"]["status"] == "active"


def test_scope_group_with_nested_groups_and_staff_roles(
    continuity: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    ana = directory.add_person("ana", "ana@acme.test")
    bo = directory.add_person("bo", "bo@acme.test")
    directory.add_person("out", "out@acme.test")
    inner = directory.add_group("inner", bo)
    scope = directory.add_group("continuity (users) *", ana, inner)
    admins = directory.add_group("admins", ana)
    helpdesk = directory.add_group("helpdesk", inner)
    configure(
        continuity,
        directory,
        scope_group=scope,
        admin_group=admins,
        helpdesk_group=helpdesk,
        domains=["acme.test"],
    )

    status, summary = continuity.sync("--full")

    assert status == 0, summary
    assert sorted(continuity.people()) == ["ana@acme.test", "bo@acme.test"]
    with engine.connect() as connection:
        roles = connection.execute(
            select(Person.mail, StaffRole.role, Domain.name)
            .join(Person, Person.id == StaffRole.person_id)
            .join(Domain, Domain.id == StaffRole.domain_id)
            .order_by(Person.mail)
        ).all()
    assert [tuple(r) for r in roles] == [
        ("ana@acme.test", "admin", "acme.test"),
        ("bo@acme.test", "helpdesk", "acme.test"),
    ]


def test_empty_result_from_a_wrong_base_dn_changes_nothing(
    continuity: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    directory.add_person("ana", "ana@acme.test")
    configure(continuity, directory)
    assert continuity.sync("--full")[0] == 0
    configure(continuity, directory, base_dn=f"ou=groups,{directory.base_dn}")

    status, summary = continuity.sync("--full")

    assert status == 3
    assert summary["outcome"] == "guard" and "no entries" in summary["error"]
    assert "ana@acme.test" in continuity.people()
    assert runs(engine)[-1].outcome == "guard"


def test_mass_removal_needs_the_flag(continuity: Continuity, directory: DirectoryTree) -> None:
    for number in range(10):
        directory.add_person(f"p{number}", f"p{number}@acme.test")
    configure(continuity, directory)
    assert continuity.sync("--full")[0] == 0
    directory.delete("p1")
    directory.delete("p2")

    status, summary = continuity.sync("--full")
    assert status == 3 and "remove 2 of 10" in summary["error"]
    assert len(continuity.people()) == 10

    status, summary = continuity.sync("--full", "--allow-mass-removal")
    assert status == 0 and summary["counts"]["removed"] == 2
    assert len(continuity.people()) == 8


def test_dry_run_prints_the_plan_and_changes_nothing(
    continuity: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    directory.add_person("ana", "ana@acme.test")
    configure(continuity, directory)

    result = continuity.run("sync", "--dry-run")

    assert result.exit_code == 0, result.output
    assert "create  ana@acme.test" in result.stdout
    assert "outcome=dry-run" in result.stdout
    status, summary = continuity.sync("--dry-run")
    assert (status, summary["outcome"]) == (0, "dry-run")
    assert summary["plan"] == [f"create  ana@acme.test  ({directory.dn('ana')})"]
    assert continuity.people() == {}
    assert runs(engine) == []


def test_incremental_reads_only_what_changed(
    continuity: Continuity, directory: DirectoryTree
) -> None:
    for number in range(20):
        directory.add_person(f"p{number}", f"p{number}@acme.test")
    configure(continuity, directory, clock_skew_seconds=0)
    time.sleep(1.1)  # modifyTimestamp has one-second resolution
    status, summary = continuity.sync()
    assert (status, summary["mode"], summary["entries_read"]) == (0, "full", 20)

    time.sleep(1.1)
    directory.replace("p3", displayName="Person Three")
    directory.add_person("new", "new@acme.test")
    status, summary = continuity.sync()

    assert (status, summary["mode"], summary["entries_read"]) == (0, "incremental", 2)
    assert summary["counts"]["created"] == 1 and summary["counts"]["updated"] == 1
    assert continuity.people()["p3@acme.test"]["display_name"] == "Person Three"


def test_a_source_with_no_full_run_for_too_long_gets_one(
    continuity: Continuity, directory: DirectoryTree
) -> None:
    directory.add_person("ana", "ana@acme.test")
    configure(continuity, directory, full_sync_interval_hours=0.000001)
    assert continuity.sync()[1]["mode"] == "full"
    assert continuity.sync()[1]["mode"] == "full"


def test_overlapping_run_exits_75(
    continuity: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    directory.add_person("ana", "ana@acme.test")
    configure(continuity, directory)
    held = Lease(engine, "sync", 60)
    held.acquire()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "continuity", "--config", str(continuity.path), "sync"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        held.release()
    assert result.returncode == 75
    assert "another sync run holds the lock" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert continuity.people() == {}


def test_unicode_and_ldap_special_characters(
    continuity: Continuity, directory: DirectoryTree
) -> None:
    directory.add_person("josé", "jose@acme.test", cn="José Núñez Łódź 日本")
    directory.add_person(r"a*(b)\c", "star@acme.test", cn=r"Star *)(uid=*)\ Person")
    directory.add_person("nul", "nul@acme.test", display_name="Nul\x00 Byte")
    scope = directory.add_group(r"g*)(cn=*\x", directory.dn("josé"), directory.dn(r"a*(b)\c"))
    configure(continuity, directory, scope_group=scope)

    status, summary = continuity.sync("--full")

    assert status == 0, summary
    people = continuity.people()
    assert people["jose@acme.test"]["display_name"] == "José Núñez Łódź 日本"
    assert people["star@acme.test"]["display_name"] == r"Star *)(uid=*)\ Person"
    assert normalise_dn(people["star@acme.test"]["dn"]) == normalise_dn(directory.dn(r"a*(b)\c"))
    assert "nul@acme.test" not in people  # outside the scope group
    configure(continuity, directory)
    assert continuity.sync("--full")[0] == 0
    assert continuity.people()["nul@acme.test"]["display_name"] == "Nul Byte"


def test_summary_line_for_cron(continuity: Continuity, directory: DirectoryTree) -> None:
    directory.add_person("ana", "ana@acme.test")
    configure(continuity, directory)
    result = continuity.run("sync")
    assert result.exit_code == 0
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("sync source=corp mode=full outcome=success read=1 created=1")


def test_a_run_is_recorded_with_counts(
    continuity: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    directory.add_person("ana", "ana@acme.test")
    configure(continuity, directory)
    continuity.sync()
    (run,) = runs(engine)
    assert (run.source, run.mode, run.outcome, run.entries_read) == ("corp", "full", "success", 1)
    assert run.counts["created"] == 1 and run.finished_at is not None and run.error is None


def test_unreachable_directory_is_a_failed_run(
    continuity: Continuity, engine: Engine, tmp_path: Path
) -> None:
    continuity.configure(
        source_toml("corp", "ldap://127.0.0.1:1", "dc=acme,dc=test", "cn=x", "y", connect_timeout=2)
    )
    status, summary = continuity.sync()
    assert status == 1 and "cannot connect" in summary["error"]
    assert runs(engine)[-1].outcome == "failed"


def test_configuration_error_exits_2_naming_the_key(continuity: Continuity) -> None:
    continuity.path.write_text('[[directory]]\nname = "corp"\nurl = "ldap://127.0.0.1:1"\n')
    result = continuity.run("sync")
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "continuity: configuration error: [[directory]] 'corp'.base_dn: missing"
    )


def test_incremental_marks_are_kept_per_server(
    continuity: Continuity, directory: DirectoryTree, slapd: Slapd
) -> None:
    """A server with no mark of its own (another replica) gets a full read."""
    directory.add_person("ana", "ana@acme.test")
    configure(continuity, directory)
    assert continuity.sync()[1]["mode"] == "full"
    assert continuity.sync()[1]["mode"] == "incremental"
    other = slapd.url.replace("127.0.0.1", "localhost")
    configure(continuity, directory, url=other)
    status, summary = continuity.sync()
    assert (status, summary["mode"], summary["server"]) == (0, "full", other)
    assert continuity.sync()[1]["mode"] == "incremental"


def test_alternate_contact_address(continuity: Continuity, directory: DirectoryTree) -> None:
    directory.add_person("ana", "ana@acme.test", aliases=())
    directory.replace("ana", objectClass=["inetOrgPerson", directory.slapd.alias_object_class])
    directory.replace("ana", mailForwardingAddress="Ana.Private@Example.ORG")
    configure(continuity, directory, alternate_contact_attribute="mailForwardingAddress")
    assert continuity.sync()[0] == 0
    assert continuity.people()["ana@acme.test"]["alternate_contact"] == "ana.private@example.org"


def test_a_referral_instead_of_entries_is_a_failed_read(
    continuity: Continuity, directory: DirectoryTree
) -> None:
    directory.add_person("ana", "ana@acme.test")
    configure(continuity, directory)
    assert continuity.sync()[0] == 0
    moved = f"ou=moved,{directory.base_dn}"
    directory.slapd.add(
        moved,
        ["referral", "extensibleObject"],
        {"ou": "moved", "ref": "ldap://127.0.0.1:1/ou=moved,dc=elsewhere,dc=test"},
    )
    configure(continuity, directory, base_dn=moved)

    status, summary = continuity.sync("--full")

    assert status == 1 and "referral" in summary["error"].lower()
    assert "ana@acme.test" in continuity.people()


def test_progress_bar_on_a_terminal(continuity: Continuity, directory: DirectoryTree) -> None:
    for number in range(3):
        directory.add_person(f"p{number}", f"p{number}@acme.test")
    configure(continuity, directory, page_size=1)
    assert continuity.sync()[0] == 0  # now the roster knows how many to expect
    parent, child = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "continuity", "--config", str(continuity.path)]
            + ["sync", "--full"],
            stderr=child,
            stdout=subprocess.PIPE,
            text=True,
            timeout=60,
        )
        os.close(child)
        child = -1
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(parent, 4096):
                shown += chunk
    finally:
        os.close(parent)
        if child != -1:
            os.close(child)
    assert result.returncode == 0
    assert b"corp: [" + b"#" * 30 + b"] 3/3 entries read" in shown
    assert b"corp: [" + b"#" * 10 + b"-" * 20 + b"] 1/3 entries read" in shown
    assert result.stdout.startswith("sync source=corp mode=full outcome=success read=3")


def test_a_disable_lands_even_when_the_new_address_is_taken(
    continuity: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    """Regression: a change that disabled Ana and moved her to Bo's address was refused
    whole: Ana stayed enabled, and every later run (full ones too) said success."""
    directory.add_person("ana", "ana@acme.test")
    directory.add_person("bo", "bo@acme.test")
    configure(continuity, directory, clock_skew_seconds=0)
    assert continuity.sync()[0] == 0
    time.sleep(1.1)
    directory.replace("ana", mail="bo@acme.test", description="disabled")
    warning = (
        f"kept {directory.dn('ana')!r} at ana@acme.test but disabled:"
        " address bo@acme.test already belongs to someone else"
    )

    status, summary = continuity.sync()
    assert (status, summary["mode"], summary["outcome"]) == (0, "incremental", "success")
    assert summary["counts"]["disabled"] == 1 and summary["warnings"] == [warning]
    people = continuity.people()
    assert people["ana@acme.test"]["status"] == "disabled"
    assert people["bo@acme.test"]["status"] == "active"
    assert runs(engine)[-1].counts["warnings"] == [warning]
    shown = json.loads(continuity.run("domain", "show", "acme.test", "--json").stdout)
    assert shown["last_sync"]["counts"]["warnings"] == [warning]

    result = continuity.run("sync", "--full")  # the refused part is still said
    assert result.exit_code == 0
    line, said = result.stdout.strip().splitlines()
    assert "outcome=success" in line and line.endswith("warnings=1")
    assert said == (
        f"warning source=corp skipped {directory.dn('ana')!r}:"
        " address bo@acme.test already belongs to someone else"
    )
    assert continuity.people()["ana@acme.test"]["status"] == "disabled"


def test_an_incremental_run_removes_people_who_no_longer_qualify(
    continuity: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    """Regression: entries still in the directory but no longer qualifying (address
    removed, out of the filter, out of the scope group, out of the held domains) were
    skipped by incremental runs: the people stayed covered until the next full run."""
    members = [directory.add_person(f"p{n}", f"p{n}@acme.test") for n in range(50)]
    scope = directory.add_group("continuity", *members)
    configure(
        continuity,
        directory,
        clock_skew_seconds=0,
        scope_group=scope,
        user_filter="(&(objectClass=inetOrgPerson)(!(employeeType=left)))",
    )
    status, summary = continuity.sync()
    assert (status, summary["counts"]["created"]) == (0, 50)
    with engine.begin() as connection:
        person_id = connection.scalar(select(Person.id).where(Person.mail == "p0@acme.test"))
        connection.execute(
            insert(EmergencyCredential).values(
                person_id=person_id, password_hash="$argon2id$x", set_at=utcnow()
            )
        )
    time.sleep(1.1)
    directory.replace("p0", mail=None)  # the off-boarding step
    directory.replace("p1", employeeType="left")  # out of the filter
    directory.replace("p2", mail="p2@elsewhere.test")  # out of the held domains
    directory.slapd.modify(  # out of the scope group; p3's own entry is untouched
        scope, {"member": [(ldap3.MODIFY_DELETE, [directory.dn("p3")])]}
    )

    status, summary = continuity.sync()

    assert (status, summary["mode"], summary["outcome"]) == (0, "incremental", "success")
    assert summary["counts"]["removed"] == 4
    people = continuity.people()
    assert len(people) == 46
    assert not {"p0@acme.test", "p1@acme.test", "p3@acme.test"} & set(people)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(EmergencyCredential)) == 0
    assert continuity.sync("--full")[1]["counts"].get("removed", 0) == 0


def test_an_incremental_run_leaves_an_address_another_entry_claims_to_a_full_run(
    continuity: Continuity, directory: DirectoryTree
) -> None:
    """An entry refused before is not read again by incremental runs: an address it
    claims too must not go to a newcomer in one (a full run gives it to the first)."""
    for n in range(20):
        directory.add_person(f"p{n}", f"p{n}@acme.test")
    directory.add_person("ana", "desk@acme.test")
    configure(continuity, directory, clock_skew_seconds=0)
    assert continuity.sync()[0] == 0
    time.sleep(1.1)
    directory.add_person("zed", "zed@acme.test", aliases=("desk@acme.test",))
    status, summary = continuity.sync()
    assert summary["warnings"] == [
        "dropped alias desk@acme.test of zed@acme.test: invalid or taken"
    ]
    time.sleep(1.1)
    directory.replace("ana", mail="ana@elsewhere.test")  # leaves the held domains
    directory.add_person("bea", "desk@acme.test")

    status, summary = continuity.sync()
    assert (status, summary["mode"], summary["counts"]["removed"]) == (0, "incremental", 1)
    assert summary["counts"]["skipped_conflict"] == 1  # bea waits
    people = continuity.people()
    assert "desk@acme.test" not in people and people["zed@acme.test"]["aliases"] == []

    assert continuity.sync("--full")[0] == 0
    people = continuity.people()
    assert people["zed@acme.test"]["aliases"] == ["desk@acme.test"]  # people first
    assert "desk@acme.test" not in people
