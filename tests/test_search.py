"""The Control Panel's "Select user" suggestions (roster.search.PeopleIndex) over people
synced from a real slapd, and the domain's people_version that tells the index when to
read them again."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from roster.db import session_factory, transaction
from roster.domains import add_domain, get_domain
from roster.models import Domain, Person, utcnow
from roster.search import PeopleIndex, Suggestion, fold
from roster.service import activate, add_person, set_coverage_mode
from tests.directory import Continuity, DirectoryTree, source_toml

ACME = "acme.test"
BRAND = "brand.test"
QUIET = "quiet.test"  # a domain of the source with nobody in it


@pytest.fixture
def tool(tmp_path: Path, database_url: str, directory: DirectoryTree) -> Continuity:
    """The command line on a roster of three domains, synced from ``directory``."""
    continuity = Continuity(tmp_path, database_url)
    continuity.configure()
    for name in (ACME, BRAND, QUIET):
        assert continuity.run("domain", "add", name).exit_code == 0
    continuity.configure(
        source_toml(
            "corp",
            directory.slapd.url,
            directory.base_dn,
            directory.slapd.root_dn,
            directory.slapd.root_password,
            domains=[ACME, BRAND, QUIET],
            disabled_filter="(description=disabled)",
            max_removal_share=1.0,
        )
    )
    return continuity


def full_sync(tool: Continuity) -> dict[str, int]:
    """A full sync run through the command; returns its counts."""
    status, summary = tool.sync("--full")
    assert (status, summary["outcome"]) == (0, "success"), summary
    counts: dict[str, int] = summary["counts"]
    return counts


def domain_id(factory: sessionmaker[Session], name: str) -> int:
    """The id of a domain."""
    with transaction(factory) as session:
        return get_domain(session, name).id


def suggest(
    index: PeopleIndex, factory: sessionmaker[Session], domain: int, typed: str, limit: int = 10
) -> list[Suggestion]:
    """Suggestions for ``typed``, in a transaction of their own as a request would have."""
    with transaction(factory) as session:
        return index.suggest(session, domain, typed, limit)


def mails(suggestions: list[Suggestion]) -> list[str]:
    """The addresses suggested, in order."""
    return [s.mail for s in suggestions]


def versions(engine: Engine) -> dict[str, int]:
    """Each domain's people_version."""
    with engine.connect() as connection:
        return dict(connection.execute(select(Domain.name, Domain.people_version)).all())


def test_fold_ignores_case_and_accents() -> None:
    assert fold("Ana GARCÍA Núñez") == "ana garcia nunez"
    assert fold("Łódź\tStraße\n") == "łodz strasse "  # controls become spaces


def test_suggestions_by_address_or_name_ignoring_case_and_accents(
    tool: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    directory.add_person("ana", "ana.garcia@acme.test", cn="Ana García")
    directory.add_person("luis", "lgarcia@acme.test", cn="Luis Garcia")
    directory.add_person("marta", "marta@acme.test", cn="Marta Garcés")
    directory.add_person("old", "old.garcia@acme.test", cn="Old García")
    directory.add_person("pedro", "pedro@acme.test", cn="Pedro Ruiz", description="disabled")
    directory.add_person("bg", "garcia@brand.test", cn="Brand García")
    assert full_sync(tool)["created"] == 6
    directory.delete("old")
    assert full_sync(tool)["removed"] == 1
    factory = session_factory(engine)
    acme, brand = domain_id(factory, ACME), domain_id(factory, BRAND)
    index = PeopleIndex()

    found = suggest(index, factory, acme, "garc")
    assert mails(found) == ["ana.garcia@acme.test", "lgarcia@acme.test", "marta@acme.test"]
    assert [s.display_name for s in found] == ["Ana García", "Luis Garcia", "Marta Garcés"]
    for typed in ("GARCÍA", "garcía", " Garcia "):
        assert mails(suggest(index, factory, acme, typed)) == [
            "ana.garcia@acme.test",
            "lgarcia@acme.test",
        ]
    assert mails(suggest(index, factory, acme, "garc", limit=2)) == [
        "ana.garcia@acme.test",
        "lgarcia@acme.test",
    ]
    assert mails(suggest(index, factory, acme, "ta@acm")) == ["marta@acme.test"]
    for typed in ("ga", "  ga  ", "", "é"):
        assert suggest(index, factory, acme, typed) == []
    assert mails(suggest(index, factory, acme, "gar")) == mails(found)
    # Removed people and other domains never appear.
    assert suggest(index, factory, acme, "old") == []
    assert suggest(index, factory, acme, "brand") == []
    assert mails(suggest(index, factory, brand, "garc")) == ["garcia@brand.test"]
    (pedro,) = suggest(index, factory, acme, "ruiz")
    assert (pedro.mail, pedro.disabled, pedro.listed) == ("pedro@acme.test", True, False)

    with transaction(factory) as session:
        domain = get_domain(session, ACME)
        activate(session, domain, "admin@acme.test")
        set_coverage_mode(session, domain, "selected", "admin@acme.test", confirmed=True)
        add_person(session, domain, "lgarcia@acme.test", "admin@acme.test")
    assert [(s.mail, s.listed) for s in suggest(index, factory, acme, "garcia")] == [
        ("ana.garcia@acme.test", False),
        ("lgarcia@acme.test", True),
    ]


def test_the_index_sees_what_the_sync_changes(
    tool: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    directory.add_person("ana", "ana.garcia@acme.test", cn="Ana García")
    directory.add_person("luis", "lgarcia@acme.test", cn="Luis Garcia")
    directory.add_person("old", "old.garcia@acme.test", cn="Old García")
    full_sync(tool)
    factory = session_factory(engine)
    acme = domain_id(factory, ACME)
    index = PeopleIndex()
    assert mails(suggest(index, factory, acme, "garc")) == [
        "ana.garcia@acme.test",
        "lgarcia@acme.test",
        "old.garcia@acme.test",
    ]

    directory.add_person("nueva", "nueva@acme.test", cn="Nueva García")
    directory.replace("luis", mail="luis.garzon@acme.test", cn="Luis Garzón", sn="Garzón")
    directory.replace("ana", cn="Ana Torres", sn="Torres")
    directory.delete("old")
    counts = full_sync(tool)
    assert (counts["created"], counts["renamed"], counts["removed"]) == (1, 1, 1)

    assert mails(suggest(index, factory, acme, "garc")) == [
        "ana.garcia@acme.test",  # still by address
        "nueva@acme.test",
    ]
    assert mails(suggest(index, factory, acme, "garzon")) == ["luis.garzon@acme.test"]
    assert mails(suggest(index, factory, acme, "torres")) == ["ana.garcia@acme.test"]


def test_the_index_reads_again_only_when_the_version_moves(engine: Engine) -> None:
    """The contract: whatever changes people without moving people_version (only the
    sync changes them) stays unseen by an index that has read the domain already."""
    factory = session_factory(engine)
    with transaction(factory) as session:
        domain = add_domain(session, ACME, "test")
        session.add(
            Person(
                domain_id=domain.id,
                source="corp",
                external_id="ana",
                dn="uid=ana",
                mail="ana@acme.test",
                display_name="Ana García",
            )
        )
    acme = domain_id(factory, ACME)
    index = PeopleIndex()
    assert mails(suggest(index, factory, acme, "garcia")) == ["ana@acme.test"]

    with transaction(factory) as session:
        session.add(
            Person(
                domain_id=acme,
                source="corp",
                external_id="nadia",
                dn="uid=nadia",
                mail="nadia@acme.test",
                display_name="Nadia García",
                created_at=utcnow(),
            )
        )
    assert mails(suggest(index, factory, acme, "garcia")) == ["ana@acme.test"]
    assert mails(suggest(PeopleIndex(), factory, acme, "garcia")) == [
        "ana@acme.test",
        "nadia@acme.test",
    ]

    with transaction(factory) as session:
        session.execute(
            update(Domain).where(Domain.id == acme).values(people_version=Domain.people_version + 1)
        )
    assert mails(suggest(index, factory, acme, "garcia")) == ["ana@acme.test", "nadia@acme.test"]
    assert suggest(index, factory, acme + 1000, "garcia") == []  # no such domain


def test_a_full_sync_moves_people_version_only_for_domains_whose_people_changed(
    tool: Continuity, directory: DirectoryTree, engine: Engine
) -> None:
    directory.add_person("ana", "ana@acme.test", cn="Ana")
    directory.add_person("bo", "bo@acme.test", cn="Bo")
    directory.add_person("eve", "eve@brand.test", cn="Eve")
    directory.add_person("zed", "zed@brand.test", cn="Zed")
    assert versions(engine) == {ACME: 0, BRAND: 0, QUIET: 0}

    full_sync(tool)
    assert versions(engine) == {ACME: 1, BRAND: 1, QUIET: 0}
    assert full_sync(tool)["unchanged"] == 4
    assert versions(engine) == {ACME: 1, BRAND: 1, QUIET: 0}

    directory.replace("ana", cn="Ana García", sn="García")
    full_sync(tool)
    assert versions(engine) == {ACME: 2, BRAND: 1, QUIET: 0}

    directory.replace("bo", mail="bo@brand.test")  # moves from one domain to the other
    full_sync(tool)
    assert versions(engine) == {ACME: 3, BRAND: 2, QUIET: 0}

    directory.delete("zed")
    full_sync(tool)
    assert versions(engine) == {ACME: 3, BRAND: 3, QUIET: 0}
    full_sync(tool)
    assert versions(engine) == {ACME: 3, BRAND: 3, QUIET: 0}
