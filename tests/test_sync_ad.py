"""The `ad` profile end to end against a real Samba Active Directory domain controller."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import ldap3
import pytest
from sqlalchemy import Engine, select

from roster.models import DirectoryMark, Person, StaffRole
from tests.directory import Continuity, source_toml
from tests.servers.samba import SambaDC

DOMAIN = "corp.example.org"
_ous = itertools.count()


class Corp:
    """An OU of its own in the shared DC, with users and groups made by samba-tool."""

    def __init__(self, samba: SambaDC) -> None:
        self.samba = samba
        self.name = f"t{next(_ous)}"
        self.ou = f"OU={self.name}"
        self.base_dn = f"{self.ou},{samba.base_dn}"
        samba.samba_tool("ou", "add", self.ou)

    def sam(self, name: str) -> str:
        """The account name for ``name``: account names are unique in the whole domain."""
        return f"{self.name}-{name}"

    def user(self, name: str, mail: str | None = None, display_name: str | None = None) -> str:
        """Create an enabled user in the OU; returns its DN."""
        args = ["user", "create", self.sam(name), "Pa55-word!x", f"--userou={self.ou}"]
        args.append("--use-username-as-cn")
        if mail:
            args.append(f"--mail-address={mail}")
        self.samba.samba_tool(*args)
        dn = f"CN={self.sam(name)},{self.base_dn}"
        if display_name:
            self.samba.modify(dn, {"displayName": [(ldap3.MODIFY_REPLACE, [display_name])]})
        return dn

    def group(self, name: str) -> str:
        """Create a group in the OU; returns its DN."""
        self.samba.samba_tool("group", "add", self.sam(name), f"--groupou={self.ou}")
        return f"CN={self.sam(name)},{self.base_dn}"

    def add_members(self, group: str, *members: str) -> None:
        """Put users or groups of this OU into a group of this OU."""
        self.samba.add_members(self.sam(group), *(self.sam(m) for m in members))

    def disable(self, name: str) -> None:
        """Disable a user with samba-tool."""
        self.samba.disable_user(self.sam(name))

    def enable(self, name: str) -> None:
        """Enable a user with samba-tool."""
        self.samba.enable_user(self.sam(name))

    def guid(self, dn: str) -> str:
        """The objectGUID of an entry, as the roster stores it."""
        with self.samba.connection() as connection:
            connection.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["objectGUID"])
            raw = connection.response[0]["raw_attributes"]["objectGUID"][0]
        return str(uuid.UUID(bytes_le=raw))


@pytest.fixture
def corp(samba: SambaDC) -> Corp:
    """A fresh OU for one test."""
    return Corp(samba)


@pytest.fixture
def continuity(tmp_path: Path, database_url: str, engine: Engine) -> Continuity:
    """The command line on a roster that holds corp.example.org."""
    tool = Continuity(tmp_path, database_url)
    tool.configure()
    assert tool.run("domain", "add", DOMAIN).exit_code == 0
    return tool


def configure(tool: Continuity, corp: Corp, **extra: object) -> None:
    """Point the tool at the OU as the AD source "ad"."""
    tool.configure(
        source_toml(
            "ad",
            corp.samba.url,
            corp.base_dn,
            corp.samba.admin_bind,
            corp.samba.admin_password,
            **{"profile": "ad", "domains": [DOMAIN], **extra},
        )
    )


def test_ad_profile_guid_disabled_proxy_addresses_and_nested_scope(
    continuity: Continuity, corp: Corp, engine: Engine
) -> None:
    ana = corp.user("ana", f"ana@{DOMAIN}", "Ana García")
    corp.user("bo", f"bo@{DOMAIN}")
    corp.user("carl", f"carl@{DOMAIN}")
    corp.samba.modify(
        ana,
        {
            "proxyAddresses": [
                (
                    ldap3.MODIFY_REPLACE,
                    [f"SMTP:ana@{DOMAIN}", f"smtp:ana.garcia@{DOMAIN}", "X400:c=US;a= ;p=Corp"],
                )
            ]
        },
    )
    corp.disable("bo")
    team = corp.group("Team")
    scope = corp.group("Continuity (users)")
    admins = corp.group("Continuity admins")
    corp.add_members("Team", "bo")
    corp.add_members("Continuity (users)", "ana", "Team")  # bo only through Team
    corp.add_members("Continuity admins", "ana")
    configure(continuity, corp, scope_group=scope, admin_group=admins)

    status, summary = continuity.sync()

    assert status == 0, summary
    people = continuity.people(DOMAIN)
    assert sorted(people) == [f"ana@{DOMAIN}", f"bo@{DOMAIN}"]  # carl is out of scope
    assert people[f"ana@{DOMAIN}"]["external_id"] == corp.guid(ana)
    assert people[f"ana@{DOMAIN}"]["aliases"] == [f"ana.garcia@{DOMAIN}"]
    assert people[f"ana@{DOMAIN}"]["display_name"] == "Ana García"
    assert people[f"bo@{DOMAIN}"]["status"] == "disabled"
    with engine.connect() as connection:
        roles = connection.execute(
            select(Person.mail, StaffRole.role).join(Person, Person.id == StaffRole.person_id)
        ).all()
    assert [tuple(r) for r in roles] == [(f"ana@{DOMAIN}", "admin")]
    assert team.startswith("CN=")


def test_ad_incremental_reads_changes_after_the_usn_mark(
    continuity: Continuity, corp: Corp, engine: Engine
) -> None:
    ana = corp.user("ana", f"ana@{DOMAIN}")
    corp.user("bo", f"bo@{DOMAIN}")
    for n in range(5):
        corp.user(f"u{n}", f"u{n}@{DOMAIN}")
    corp.disable("bo")
    configure(continuity, corp)
    before = corp.samba.highest_usn()
    status, summary = continuity.sync()
    assert (status, summary["mode"], summary["entries_read"]) == (0, "full", 7)
    with engine.connect() as connection:
        server, mark = connection.execute(
            select(DirectoryMark.server, DirectoryMark.mark).where(DirectoryMark.source == "ad")
        ).one()
    assert before <= int(mark) <= corp.samba.highest_usn()
    assert server.startswith("CN=NTDS Settings,")  # kept per domain controller, not per URL

    corp.samba.modify(ana, {"mail": [(ldap3.MODIFY_REPLACE, [f"ana.g@{DOMAIN}"])]})
    corp.enable("bo")
    status, summary = continuity.sync()

    assert (status, summary["mode"], summary["entries_read"]) == (0, "incremental", 2)
    assert summary["counts"]["renamed"] == 1 and summary["counts"]["enabled"] == 1
    people = continuity.people(DOMAIN)
    assert people[f"ana.g@{DOMAIN}"]["external_id"] == corp.guid(ana)
    assert f"ana@{DOMAIN}" not in people
    assert people[f"bo@{DOMAIN}"]["status"] == "active"

    status, summary = continuity.sync()
    assert (summary["mode"], summary["entries_read"]) == ("incremental", 0)


def test_ad_unicode_address_and_removal(continuity: Continuity, corp: Corp) -> None:
    assert continuity.run("domain", "add", "bücher.example").exit_code == 0
    corp.user("jose", f"José.Núñez@{DOMAIN}", "José Núñez")
    corp.user("ana", "ana@Bücher.example", "Ana")
    for n in range(10):
        corp.user(f"u{n}", f"u{n}@{DOMAIN}")
    configure(continuity, corp, domains=[DOMAIN, "bücher.example"])
    assert continuity.sync()[0] == 0
    assert continuity.people(DOMAIN)[f"josé.núñez@{DOMAIN}"]["display_name"] == "José Núñez"
    assert list(continuity.people("bücher.example")) == ["ana@bücher.example"]

    corp.samba.samba_tool("user", "delete", corp.sam("u3"))
    status, summary = continuity.sync("--full")
    assert status == 0 and summary["counts"]["removed"] == 1
    assert f"u3@{DOMAIN}" not in continuity.people(DOMAIN)
