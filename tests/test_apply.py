"""Applying plans to a real roster database: addresses change hands without a clash."""

from __future__ import annotations

from sqlalchemy import Engine, select

from roster.db import session_factory, transaction
from roster.domains import add_domain
from roster.models import Alias, Domain, Person
from sync.apply import apply_plan, domain_ids, load_roster
from sync.plan import FULL, INCREMENTAL, DirectoryEntry, plan_sync


def entry(uid: str, mail: str, *aliases: str) -> DirectoryEntry:
    """A directory entry."""
    return DirectoryEntry(uid, f"uid={uid},dc=acme,dc=test", mail, tuple(aliases))


def run(engine: Engine, mode: str, entries: list[DirectoryEntry]) -> None:
    """Plan and apply one run the way the sync does."""
    factory = session_factory(engine)
    with transaction(factory, writing=True) as session:
        domains = domain_ids(session)
        roster = load_roster(session, "corp", None, [])
        apply_plan(session, plan_sync("corp", mode, entries, roster, domains), domains, "test")


def addresses(engine: Engine) -> dict[str, tuple[str, list[str], bool]]:
    """Stable id -> (mail, aliases, removed)."""
    with engine.connect() as connection:
        people = connection.execute(
            select(Person.id, Person.external_id, Person.mail, Person.removed_at)
        ).all()
        aliases = connection.execute(select(Alias.person_id, Alias.address)).all()
    return {
        external_id: (
            mail,
            sorted(a for pid, a in aliases if pid == id_),
            removed is not None,
        )
        for id_, external_id, mail, removed in people
    }


def setup(engine: Engine) -> None:
    """The acme.test domain."""
    with transaction(session_factory(engine)) as session:
        add_domain(session, "acme.test", "test")


def test_two_people_swap_addresses_and_aliases(engine: Engine) -> None:
    setup(engine)
    run(engine, FULL, [entry("a", "one@acme.test", "x@acme.test"), entry("b", "two@acme.test")])
    run(engine, FULL, [entry("a", "two@acme.test"), entry("b", "one@acme.test", "x@acme.test")])
    assert addresses(engine) == {
        "a": ("two@acme.test", [], False),
        "b": ("one@acme.test", ["x@acme.test"], False),
    }


def test_a_leaver_address_and_alias_go_to_a_joiner(engine: Engine) -> None:
    setup(engine)
    stayers = [entry(f"p{n}", f"p{n}@acme.test") for n in range(10)]
    run(engine, FULL, [*stayers, entry("old", "desk@acme.test", "help@acme.test")])
    run(engine, FULL, [*stayers, entry("new", "desk@acme.test", "help@acme.test")])
    found = addresses(engine)
    assert found["old"] == ("desk@acme.test", [], True)
    assert found["new"] == ("desk@acme.test", ["help@acme.test"], False)


def test_a_refused_rename_does_not_give_away_an_address_still_held(engine: Engine) -> None:
    """Regression: two live people ended up with b@ and the run failed for good."""
    setup(engine)
    run(engine, FULL, [entry(u, f"{u}@acme.test") for u in "abc"])
    run(
        engine,
        INCREMENTAL,
        [entry("a", "b@acme.test"), entry("b", "c@acme.test"), entry("c", "c@acme.test")],
    )
    assert {k: v[0] for k, v in addresses(engine).items()} == {
        "a": "a@acme.test",
        "b": "b@acme.test",
        "c": "c@acme.test",
    }


def test_created_people_read_back_like_any_other_row(engine: Engine) -> None:
    """New people go to SQLite as plain tuples: their times must be stored as the
    roster's own column type stores them (no '+00:00' suffix SQLite would then compare
    as text), and read back the same."""
    setup(engine)
    run(engine, FULL, [entry("a", "ana@acme.test", "x@acme.test")])
    with session_factory(engine)() as session:
        person = session.scalars(select(Person)).one()
        domain = session.scalars(select(Domain)).one()
        assert person.created_at.tzinfo is not None and person.disabled is False
        assert abs((person.created_at - domain.created_at).total_seconds()) < 60
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            stored = connection.exec_driver_sql("SELECT created_at FROM person").scalar()
            kept = connection.exec_driver_sql("SELECT created_at FROM domain").scalar()
        assert len(stored) == len(kept) and "+" not in stored
