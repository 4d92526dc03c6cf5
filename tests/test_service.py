"""Continuity Service administration rules (roster.service) on a real roster database:
who is covered, activation, coverage mode, the list of selected users, bulk requests,
the primary server settings and the overview. Every refusal is checked to change
nothing, even when the caller commits after it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from roster.bulk import ADD, BULK_LIMIT, REMOVE, bulk, parse_bulk
from roster.coverage import covered_clause, is_covered, person_is_covered
from roster.db import session_factory, transaction
from roster.domains import (
    Primary,
    PrimaryRefused,
    Refused,
    RosterError,
    add_domain,
    check_primary,
    get_domain,
    parse_primary,
)
from roster.identity import sign_in_facts
from roster.models import (
    Alias,
    AuditEvent,
    ContinuityEvent,
    CoverageEntry,
    Domain,
    EmergencyCredential,
    Person,
    SyncRun,
    utcnow,
)
from roster.service import (
    activate,
    add_person,
    covered_people,
    deactivate,
    domains_visible,
    listed_count,
    listed_page,
    overview,
    remove_person,
    remove_person_by_id,
    set_coverage_mode,
    set_primary,
    switch_emergency_password,
    without_emergency_password,
)

ACME = "acme.test"
BRAND = "brand.test"
ADMIN = "admin@acme.test"


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on the test's roster."""
    return session_factory(engine)


def new_domain(session: Session, name: str, *, active: bool = False, mode: str = "all") -> Domain:
    """A domain as an admin left it: active or not, covering all or selected users."""
    domain = add_domain(session, name, "setup")
    domain.continuity_active, domain.coverage_mode = active, mode
    session.flush()
    return domain


def person(
    session: Session,
    domain: Domain,
    local: str,
    *,
    name: str = "",
    disabled: bool = False,
    removed: bool = False,
    listed: bool = False,
    credential: bool = False,
    aliases: tuple[str, ...] = (),
) -> Person:
    """A person of ``domain`` as the sync would have stored them."""
    mail = f"{local}@{domain.name}"
    row = Person(
        domain_id=domain.id,
        source="corp",
        external_id=mail,
        dn=f"uid={local},ou={domain.name}",
        mail=mail,
        display_name=name,
        disabled=disabled,
        removed_at=utcnow() if removed else None,
    )
    session.add(row)
    session.flush()
    session.add_all(Alias(person_id=row.id, address=address) for address in aliases)
    if listed:
        session.add(
            CoverageEntry(
                domain_id=domain.id, person_id=row.id, added_by="setup", added_at=utcnow()
            )
        )
    if credential:
        session.add(
            EmergencyCredential(person_id=row.id, password_hash="$argon2id$x", set_at=utcnow())
        )
    session.flush()
    return row


def snapshot(engine: Engine) -> dict[str, Any]:
    """What an admin could see change: domains' settings, every list, the audit log."""
    with engine.connect() as connection:
        domains = connection.execute(
            select(
                Domain.name,
                Domain.continuity_active,
                Domain.coverage_mode,
                Domain.emergency_password_enabled,
                Domain.primary_host,
                Domain.primary_port,
            ).order_by(Domain.name)
        ).all()
        listed = connection.execute(
            select(Person.mail, CoverageEntry.domain_id, CoverageEntry.added_by)
            .join(Person, Person.id == CoverageEntry.person_id)
            .order_by(Person.mail)
        ).all()
        audits = connection.scalar(select(func.count()).select_from(AuditEvent))
    return {
        "domains": [tuple(d) for d in domains],
        "listed": [tuple(r) for r in listed],
        "audits": audits,
    }


def refused(factory: sessionmaker[Session], call: Callable[[Session], object]) -> Refused:
    """The refusal of ``call``, in a transaction that commits anyway: the refusal alone
    must leave nothing behind, whatever the caller does next."""
    with transaction(factory) as session, pytest.raises(Refused) as caught:
        call(session)
    return caught.value


def trail(engine: Engine, *actions: str) -> list[tuple[Any, ...]]:
    """Audit events with these actions, oldest first: (action, actor, before, after,
    detail, client)."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                AuditEvent.action,
                AuditEvent.actor,
                AuditEvent.before,
                AuditEvent.after,
                AuditEvent.detail,
                AuditEvent.client,
            )
            .where(AuditEvent.action.in_(actions))
            .order_by(AuditEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def listed_mails(engine: Engine, domain: str = ACME) -> list[str]:
    """The addresses on a domain's list of selected users."""
    with engine.connect() as connection:
        return list(
            connection.scalars(
                select(Person.mail)
                .join(CoverageEntry, CoverageEntry.person_id == Person.id)
                .join(Domain, Domain.id == CoverageEntry.domain_id)
                .where(Domain.name == domain)
                .order_by(Person.mail)
            )
        )


def covered_mails(factory: sessionmaker[Session], domain: str = ACME) -> list[str]:
    """Who the domain covers now, by address."""
    with transaction(factory) as session:
        return [p.mail for p in covered_people(session, get_domain(session, domain))]


# ---------------------------------------------------------------------------
# Who is covered: the SQL clause and the Python rule against one table
# ---------------------------------------------------------------------------
COVERED = {
    # (service active, mode, listed, disabled, removed): the only cases covered of all 32.
    (True, "all", False, False, False),
    (True, "all", True, False, False),
    (True, "selected", True, False, False),
}


def test_covered_clause_and_is_covered_follow_the_same_table(
    factory: sessionmaker[Session],
) -> None:
    cases = list(itertools.product([True, False], ["all", "selected"], *[[True, False]] * 3))
    assert len(cases) == 32
    with transaction(factory) as session:
        people: dict[tuple[Any, ...], Person] = {}
        domains: dict[tuple[bool, str], Domain] = {}
        for active, mode in itertools.product([True, False], ["all", "selected"]):
            name = f"{'on' if active else 'off'}-{mode}.test"
            domains[active, mode] = new_domain(session, name, active=active, mode=mode)
        for case in cases:
            active, mode, listed, disabled, removed = case
            local = f"l{int(listed)}-d{int(disabled)}-r{int(removed)}"
            people[case] = person(
                session,
                domains[active, mode],
                local,
                listed=listed,
                disabled=disabled,
                removed=removed,
            )

    with transaction(factory) as session:
        found = {}
        for key, domain in domains.items():
            domain = session.get(Domain, domain.id)
            assert domain is not None
            by_clause = set(session.scalars(select(Person.id).where(covered_clause(domain))))
            by_list = {p.id for p in covered_people(session, domain)}
            assert by_clause == by_list
            found[key] = by_list
        for case in cases:
            active, mode, listed, disabled, removed = case
            expected = case in COVERED
            domain = session.get(Domain, domains[active, mode].id)
            row = session.get(Person, people[case].id)
            assert domain is not None and row is not None
            answers = (
                is_covered(
                    service_active=active,
                    coverage_mode=mode,
                    listed=listed,
                    disabled=disabled,
                    removed=removed,
                ),
                person_is_covered(domain, row, listed),
                row.id in found[active, mode],
            )
            assert answers == (expected, expected, expected), case


# ---------------------------------------------------------------------------
# Activate, deactivate, coverage mode
# ---------------------------------------------------------------------------
def test_activate_and_deactivate_are_idempotent_audited_and_keep_the_list(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        domain = new_domain(session, ACME, mode="selected")
        person(session, domain, "ana", listed=True)

    with transaction(factory) as session:
        assert activate(session, get_domain(session, ACME), ADMIN, "203.0.113.9") is True
    assert covered_mails(factory) == ["ana@acme.test"]
    with transaction(factory) as session:
        assert activate(session, get_domain(session, ACME), ADMIN) is False
    with transaction(factory) as session:
        assert deactivate(session, get_domain(session, ACME), "cli:operator") is True
    assert covered_mails(factory) == []
    with transaction(factory) as session:
        assert deactivate(session, get_domain(session, ACME), "cli:operator") is False

    assert trail(engine, "service.activated", "service.deactivated") == [
        (
            "service.activated",
            ADMIN,
            {"continuity_active": False},
            {"continuity_active": True},
            "",
            "203.0.113.9",
        ),
        (
            "service.deactivated",
            "cli:operator",
            {"continuity_active": True},
            {"continuity_active": False},
            "",
            None,
        ),
    ]
    # The list and the mode stay for when the service is active again.
    assert listed_mails(engine) == ["ana@acme.test"]
    with transaction(factory) as session:
        activate(session, get_domain(session, ACME), ADMIN)
    assert covered_mails(factory) == ["ana@acme.test"]


def test_coverage_options_are_refused_while_inactive(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        domain = new_domain(session, ACME, mode="selected")
        ana = person(session, domain, "ana", listed=True).id
        person(session, domain, "bo")
    calls: dict[str, Callable[[Session, Domain], object]] = {
        "mode": lambda s, d: set_coverage_mode(s, d, "all", ADMIN, confirmed=True),
        "emergency password": lambda s, d: switch_emergency_password(s, d, True, ADMIN),
        "add": lambda s, d: add_person(s, d, "bo@acme.test", ADMIN),
        "remove": lambda s, d: remove_person(s, d, "ana@acme.test", ADMIN),
        "remove by id": lambda s, d: remove_person_by_id(s, d, ana, ADMIN),
        "bulk": lambda s, d: bulk(s, d, "bo@acme.test", ADD, ADMIN),
    }
    before = snapshot(engine)
    for what, call in calls.items():
        error = refused(factory, lambda s, call=call: call(s, get_domain(s, ACME)))
        assert (what, error.code, error.params) == (what, "inactive", {"domain": ACME})
        assert str(error) == "Continuity Service is not active for acme.test: activate it first"
    assert snapshot(engine) == before
    # Switching the emergency password off is no service to anyone: allowed, a no-op here.
    with transaction(factory) as session:
        assert switch_emergency_password(session, get_domain(session, ACME), False, ADMIN) is False


def test_emergency_password_switch_is_audited(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        new_domain(session, ACME, active=True)
    with transaction(factory) as session:
        assert switch_emergency_password(session, get_domain(session, ACME), True, ADMIN)
        assert not switch_emergency_password(session, get_domain(session, ACME), True, ADMIN)
        assert switch_emergency_password(session, get_domain(session, ACME), False, ADMIN)
    switches = trail(engine, "emergency_password.enabled", "emergency_password.disabled")
    assert [(action, before, after) for action, _, before, after, _, _ in switches] == [
        (
            "emergency_password.enabled",
            {"emergency_password_enabled": False},
            {"emergency_password_enabled": True},
        ),
        (
            "emergency_password.disabled",
            {"emergency_password_enabled": True},
            {"emergency_password_enabled": False},
        ),
    ]


def test_coverage_mode_all_to_selected_and_back_needs_confirmation(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        domain = new_domain(session, ACME, active=True)
        for local in ("ana", "bo", "eve"):
            person(session, domain, local)
        person(session, domain, "cy", disabled=True)
        person(session, domain, "gone", removed=True)
    assert covered_mails(factory) == ["ana@acme.test", "bo@acme.test", "eve@acme.test"]

    # Regression: going to "only selected users" with nobody listed uncovered all three
    # without a word. It is refused until confirmed, with the count of the uncovered.
    before = snapshot(engine)
    error = refused(factory, lambda s: set_coverage_mode(s, get_domain(s, ACME), "selected", ADMIN))
    assert (error.code, error.params) == ("confirm_selected_users", {"count": 3})
    assert str(error).startswith("3 covered user(s) of acme.test are not on the list")
    assert snapshot(engine) == before
    assert covered_mails(factory) == ["ana@acme.test", "bo@acme.test", "eve@acme.test"]
    with transaction(factory) as session:
        domain = get_domain(session, ACME)
        assert set_coverage_mode(session, domain, "selected", ADMIN, confirmed=True) == 0
    assert covered_mails(factory) == []  # nobody is on the list yet
    with transaction(factory) as session:
        add_person(session, get_domain(session, ACME), "ana@acme.test", ADMIN)
        add_person(session, get_domain(session, ACME), "cy@acme.test", ADMIN)
    assert covered_mails(factory) == ["ana@acme.test"]  # cy is disabled

    before = snapshot(engine)
    error = refused(factory, lambda s: set_coverage_mode(s, get_domain(s, ACME), "all", ADMIN))
    assert (error.code, error.params) == ("confirm_all_users", {"count": 2})
    assert str(error).startswith("2 individually added user(s) of acme.test will be removed")
    assert snapshot(engine) == before
    error = refused(factory, lambda s: set_coverage_mode(s, get_domain(s, ACME), "most", ADMIN))
    assert error.code == "bad_mode"
    assert snapshot(engine) == before

    with transaction(factory) as session:
        domain = get_domain(session, ACME)
        assert set_coverage_mode(session, domain, "all", ADMIN, confirmed=True) == 2
        assert set_coverage_mode(session, domain, "all", ADMIN, confirmed=True) == 0
    assert listed_mails(engine) == []
    assert covered_mails(factory) == ["ana@acme.test", "bo@acme.test", "eve@acme.test"]
    assert trail(engine, "coverage.mode_changed") == [
        (
            "coverage.mode_changed",
            ADMIN,
            {"coverage_mode": "all"},
            {"coverage_mode": "selected"},
            "",
            None,
        ),
        (
            "coverage.mode_changed",
            ADMIN,
            {"coverage_mode": "selected", "listed": 2},
            {"coverage_mode": "all", "listed": 0},
            "",
            None,
        ),
    ]

    # With an empty list there is nothing to lose and nothing to confirm; nor with
    # nobody covered.
    with transaction(factory) as session:
        domain = get_domain(session, ACME)
        set_coverage_mode(session, domain, "selected", ADMIN, confirmed=True)
        assert set_coverage_mode(session, domain, "all", ADMIN) == 0
        assert domain.coverage_mode == "all"
    with transaction(factory) as session:
        domain = get_domain(session, ACME)
        for person_row in session.scalars(select(Person).where(Person.domain_id == domain.id)):
            person_row.disabled = True
    with transaction(factory) as session:
        assert set_coverage_mode(session, get_domain(session, ACME), "selected", ADMIN) == 0


# ---------------------------------------------------------------------------
# The list of selected users, one at a time
# ---------------------------------------------------------------------------
def test_add_person_by_address_or_alias(engine: Engine, factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        domain = new_domain(session, ACME, active=True, mode="selected")
        person(session, domain, "ana")
        person(session, domain, "bo", aliases=("help@acme.test",))
    started = utcnow()

    with transaction(factory) as session:
        added = add_person(session, get_domain(session, ACME), " Ana@ACME.test ", ADMIN, "10.0.0.7")
        assert added.mail == "ana@acme.test"
    with transaction(factory) as session:
        added = add_person(session, get_domain(session, ACME), "Help@acme.test", "cli:operator")
        assert added.mail == "bo@acme.test"

    with engine.connect() as connection:
        entries = connection.execute(
            select(Person.mail, CoverageEntry.added_by, CoverageEntry.added_at)
            .join(Person, Person.id == CoverageEntry.person_id)
            .order_by(Person.mail)
        ).all()
    assert [(mail, by) for mail, by, _ in entries] == [
        ("ana@acme.test", ADMIN),
        ("bo@acme.test", "cli:operator"),
    ]
    assert all(started <= at <= utcnow() for _, _, at in entries)
    assert trail(engine, "coverage.added") == [
        ("coverage.added", ADMIN, {"listed": False}, {"listed": True}, "ana@acme.test", "10.0.0.7"),
        (
            "coverage.added",
            "cli:operator",
            {"listed": False},
            {"listed": True},
            "bo@acme.test",
            None,
        ),
    ]
    assert covered_mails(factory) == ["ana@acme.test", "bo@acme.test"]


def test_each_refused_addition_changes_nothing(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        acme = new_domain(session, ACME, active=True, mode="selected")
        person(session, acme, "ana", listed=True)
        person(session, acme, "gone", removed=True)
        person(session, acme, "bo")
        brand = new_domain(session, BRAND, active=True, mode="all")
        person(session, brand, "eve")
        person(session, brand, "left", removed=True)
    cases = [
        (ACME, "not an address", "not_an_address", {"address": "not an address"}),
        (ACME, "   ", "not_an_address", {"address": ""}),
        (ACME, "nobody@acme.test", "not_in_roster", {"address": "nobody@acme.test"}),
        (ACME, "EVE@brand.test", "other_domain", {"address": "eve@brand.test"}),
        (ACME, "gone@acme.test", "removed", {"address": "gone@acme.test"}),
        # Another domain's former people are "another domain", not "removed": an admin
        # learns nothing of what happens in a domain that is not theirs.
        (ACME, "left@brand.test", "other_domain", {"address": "left@brand.test"}),
        # ... and the same answer for an address of that domain that nobody has.
        (ACME, "nobody@brand.test", "other_domain", {"address": "nobody@brand.test"}),
        (ACME, "ANA@acme.test", "already_listed", {"address": "ana@acme.test"}),
        (BRAND, "eve@brand.test", "all_users", {"domain": BRAND}),
    ]
    before = snapshot(engine)
    for domain, address, code, params in cases:
        error = refused(
            factory,
            lambda s, d=domain, a=address: add_person(s, get_domain(s, d), a, ADMIN),
        )
        assert (address, error.code, error.params) == (address, code, params)
    assert snapshot(engine) == before
    assert listed_mails(engine) == ["ana@acme.test"]


def test_remove_person_and_remove_by_id(engine: Engine, factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        acme = new_domain(session, ACME, active=True, mode="selected")
        person(session, acme, "ana", listed=True)
        bo = person(session, acme, "bo", listed=True).id
        person(session, acme, "cy")
        brand = new_domain(session, BRAND, active=True, mode="selected")
        eve = person(session, brand, "eve", listed=True).id

    with transaction(factory) as session:
        removed = remove_person(
            session, get_domain(session, ACME), "ANA@acme.test", ADMIN, "10.0.0.7"
        )
        assert removed.mail == "ana@acme.test"
    with transaction(factory) as session:
        assert (
            remove_person_by_id(session, get_domain(session, ACME), bo, ADMIN).mail
            == "bo@acme.test"
        )
    assert listed_mails(engine) == []
    assert listed_mails(engine, BRAND) == ["eve@brand.test"]

    before = snapshot(engine)
    error = refused(factory, lambda s: remove_person(s, get_domain(s, ACME), "cy@acme.test", ADMIN))
    assert (error.code, error.params) == ("not_listed", {"address": "cy@acme.test"})
    for person_id in (eve, bo, 999_999):  # another domain's person, no longer listed, nobody
        error = refused(
            factory,
            lambda s, p=person_id: remove_person_by_id(s, get_domain(s, ACME), p, ADMIN),
        )
        assert error.code == "not_listed"
    assert snapshot(engine) == before
    assert listed_mails(engine, BRAND) == ["eve@brand.test"]

    assert trail(engine, "coverage.removed") == [
        (
            "coverage.removed",
            ADMIN,
            {"listed": True},
            {"listed": False},
            "ana@acme.test",
            "10.0.0.7",
        ),
        ("coverage.removed", ADMIN, {"listed": True}, {"listed": False}, "bo@acme.test", None),
    ]


# ---------------------------------------------------------------------------
# Bulk: pasted lists and CSV files
# ---------------------------------------------------------------------------
def report_of(lines: list[Any]) -> list[tuple[int, str, bool, str]]:
    """A bulk report as (line, address, done, code)."""
    return [(line.line, line.address, line.done, line.code) for line in lines]


def test_bulk_reads_pasted_lists_and_csv_files(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        domain = new_domain(session, ACME, active=True, mode="selected")
        for local in ("ana", "bo", "cy", "dee", "eve"):
            person(session, domain, local)

    def run(text: str, action: str) -> list[tuple[int, str, bool, str]]:
        with transaction(factory) as session:
            return report_of(bulk(session, get_domain(session, ACME), text, action, ADMIN))

    pasted = "ana@acme.test, bo@acme.test\ncy@acme.test;dee@acme.test\n\n  eve@acme.test  \n"
    assert run(pasted, ADD) == [
        (1, "ana@acme.test", True, "added"),
        (1, "bo@acme.test", True, "added"),
        (2, "cy@acme.test", True, "added"),
        (2, "dee@acme.test", True, "added"),
        (4, "eve@acme.test", True, "added"),
    ]
    assert len(listed_mails(engine)) == 5

    spreadsheet = 'name,email\n"García, Ana",ana@acme.test\n\nBo,BO@acme.test\n'
    assert run(spreadsheet, REMOVE) == [
        (2, "ana@acme.test", True, "removed"),
        (4, "BO@acme.test", True, "removed"),
    ]
    semicolons = "Nombre;Correo;Departamento\nAna;ana@acme.test;Ventas\nBo;bo@acme.test;Soporte\n"
    assert run(semicolons, ADD) == [
        (2, "ana@acme.test", True, "added"),
        (3, "bo@acme.test", True, "added"),
    ]
    assert run("cy@acme.test\n dee@acme.test \nCY@ACME.TEST", REMOVE) == [
        (1, "cy@acme.test", True, "removed"),
        (2, "dee@acme.test", True, "removed"),
        (3, "CY@ACME.TEST", False, "duplicate"),
    ]
    assert listed_mails(engine) == ["ana@acme.test", "bo@acme.test", "eve@acme.test"]
    assert len(trail(engine, "coverage.added", "coverage.removed")) == 11


def test_a_spreadsheet_csv_with_a_byte_order_mark_is_read_by_its_header() -> None:
    """Regression: Excel's "CSV UTF-8" starts with a byte order mark, which hid the
    address column when it came first, so every cell was taken for an address."""
    text = "\ufeffEmail,Name\nana@acme.test,Ana\nbo@acme.test,Bo\n"
    assert parse_bulk(text) == [(2, "ana@acme.test"), (3, "bo@acme.test")]


def test_bulk_does_the_good_lines_and_reports_each_bad_one(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        acme = new_domain(session, ACME, active=True, mode="selected")
        for local in ("ana", "bo", "cy"):
            person(session, acme, local)
        person(session, acme, "dee", listed=True)
        person(session, acme, "gone", removed=True)
        person(session, new_domain(session, BRAND), "eve")
    before = snapshot(engine)
    text = "\n".join(
        [
            "ana@acme.test",
            "not-an-address",
            "nobody@acme.test",
            "eve@brand.test",
            "gone@acme.test",
            "dee@acme.test",
            "Ana@Acme.test",
            "bo@acme.test",
        ]
    )
    with transaction(factory) as session:
        lines = bulk(session, get_domain(session, ACME), text, ADD, ADMIN, "10.0.0.7")

    assert [(line.line, line.done, line.code, line.params) for line in lines] == [
        (1, True, "added", {"address": "ana@acme.test"}),
        (2, False, "not_an_address", {"address": "not-an-address"}),
        (3, False, "not_in_roster", {"address": "nobody@acme.test"}),
        (4, False, "other_domain", {"address": "eve@brand.test"}),
        (5, False, "removed", {"address": "gone@acme.test"}),
        (6, False, "already_listed", {"address": "dee@acme.test"}),
        (7, False, "duplicate", {"address": "ana@acme.test"}),
        (8, True, "added", {"address": "bo@acme.test"}),
    ]
    assert [line.message for line in lines] == [
        "ana@acme.test added",
        "'not-an-address' is not an email address",
        "nobody@acme.test is not in the roster",
        "eve@brand.test is not in the domain acme.test",
        "gone@acme.test has been removed from the directory",
        "dee@acme.test is already on the list",
        "ana@acme.test is repeated above",
        "bo@acme.test added",
    ]
    after = snapshot(engine)
    assert after["audits"] == before["audits"] + 2
    assert listed_mails(engine) == ["ana@acme.test", "bo@acme.test", "dee@acme.test"]
    assert [entry[4:] for entry in trail(engine, "coverage.added")] == [
        ("ana@acme.test", "10.0.0.7"),
        ("bo@acme.test", "10.0.0.7"),
    ]

    with transaction(factory) as session:
        lines = bulk(
            session, get_domain(session, ACME), "cy@acme.test\nana@acme.test", REMOVE, ADMIN
        )
    assert report_of(lines) == [
        (1, "cy@acme.test", False, "not_listed"),
        (2, "ana@acme.test", True, "removed"),
    ]
    assert listed_mails(engine) == ["bo@acme.test", "dee@acme.test"]


def test_bulk_over_the_limit_is_refused_whole(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        domain = new_domain(session, ACME, active=True, mode="selected")
        person(session, domain, "ana")
    text = "\n".join(["ana@acme.test"] + [f"p{n}@acme.test" for n in range(BULK_LIMIT)])
    before = snapshot(engine)
    error = refused(factory, lambda s: bulk(s, get_domain(s, ACME), text, ADD, ADMIN))
    assert (error.code, error.params) == (
        "too_many",
        {"count": BULK_LIMIT + 1, "limit": BULK_LIMIT},
    )
    assert snapshot(engine) == before


# ---------------------------------------------------------------------------
# The table of listed users
# ---------------------------------------------------------------------------
def test_listed_page_sorts_and_pages(factory: sessionmaker[Session]) -> None:
    now = utcnow()
    with transaction(factory) as session:
        domain = new_domain(session, ACME, active=True, mode="selected")
        for local, name, minutes, flags in [
            ("a", "Zoe", 3, {"credential": True}),
            ("b", "Yan", 1, {}),
            ("c", "Xia", 2, {"disabled": True}),
            ("d", "Yan", 4, {}),
        ]:
            row = person(session, domain, local, name=name, listed=True, **flags)
            session.execute(
                update(CoverageEntry)
                .where(CoverageEntry.person_id == row.id)
                .values(added_at=now - timedelta(minutes=minutes), added_by=f"admin-{local}")
            )
        person(session, domain, "e", name="Not Listed")
        person(session, new_domain(session, BRAND, active=True, mode="selected"), "f", listed=True)

    with transaction(factory) as session:
        domain = get_domain(session, ACME)

        def mails(**options: Any) -> tuple[list[str], int]:
            rows, total = listed_page(session, domain, **options)
            return [row.mail.partition("@")[0] for row in rows], total

        assert mails() == (["a", "b", "c", "d"], 4)
        assert mails(sort="name") == (["c", "b", "d", "a"], 4)
        assert mails(sort="added") == (["b", "c", "a", "d"], 4)
        assert mails(sort="no such column") == (["a", "b", "c", "d"], 4)
        assert mails(per_page=3) == (["a", "b", "c"], 4)
        assert mails(per_page=3, page=2) == (["d"], 4)
        assert mails(per_page=3, page=3) == ([], 4)
        assert mails(per_page=3, page=0) == (["a", "b", "c"], 4)
        assert mails(per_page=2, page=2, sort="added") == (["a", "d"], 4)
        rows, _ = listed_page(session, domain)
    first, _, third, _ = rows
    assert (first.display_name, first.emergency_password_set, first.disabled) == (
        "Zoe",
        True,
        False,
    )
    assert (third.emergency_password_set, third.disabled, third.added_by) == (
        False,
        True,
        "admin-c",
    )
    assert first.added_at == now - timedelta(minutes=3)


# ---------------------------------------------------------------------------
# The primary mail server
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "stored"),
    [
        ("Mail.Acme.TEST", "mail.acme.test"),
        ("  mx1  ", "mx1"),
        ("192.0.2.25", "192.0.2.25"),
        ("2001:db8::25", "2001:db8::25"),
        ("[2001:DB8::25]", "2001:db8::25"),
        ("[::1]", "::1"),
        (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),
    ],
)
def test_check_primary_accepts_host_names_and_addresses(host: str, stored: str) -> None:
    settings = check_primary(host, "2525", "tls", False, " 30 ", 5)
    assert (settings.host, settings.port, settings.tls) == (stored, 2525, "tls")
    assert (settings.automatic, settings.probe_interval_seconds) == (False, 30)
    assert settings.failures_before_failover == 5


GOOD = {"host": "mail.acme.test", "port": 25, "tls": "starttls", "interval": 60, "failures": 3}


@pytest.mark.parametrize(
    ("wrong", "code"),
    [
        ({"host": ""}, "primary_host"),
        ({"host": "[]"}, "primary_host"),
        ({"host": "bad host"}, "primary_host"),
        ({"host": "-mail.acme.test"}, "primary_host"),
        ({"host": "mail.acme.test:25"}, "primary_host"),
        # Regression: a name longer than 253 characters was cut to 253 and accepted.
        ({"host": ".".join(["a" * 63] * 4)}, "primary_host"),
        # Regression: impossible addresses were saved as primary servers.
        ({"host": "999.999.999.999"}, "primary_ip"),
        ({"host": "1.2.3.4.5"}, "primary_ip"),
        ({"host": "0"}, "primary_ip"),
        ({"host": "10.1.1"}, "primary_ip"),
        ({"host": "0.0.0.0"}, "primary_ip"),  # noqa: S104 (a value refused, not bound)
        ({"host": "fe80::1%eth0"}, "primary_ip"),
        ({"host": "[2001:db8::zz]"}, "primary_host"),
        ({"host": "[mail.acme.test]"}, "primary_host"),
        ({"host": "mail.acme.123"}, "primary_host"),
        ({"host": "mail_1.acme.test"}, "primary_host"),
        ({"port": 0}, "primary_port"),
        ({"port": 70000}, "primary_port"),
        ({"port": "x"}, "primary_port"),
        ({"port": ""}, "primary_port"),
        ({"tls": "ssl"}, "primary_tls"),
        ({"interval": 5}, "probe_interval"),
        ({"interval": 4000}, "probe_interval"),
        ({"failures": 0}, "failures_before_failover"),
        ({"failures": 21}, "failures_before_failover"),
        ({"failures": "3.5"}, "failures_before_failover"),
    ],
)
def test_check_primary_names_the_wrong_field(wrong: dict[str, Any], code: str) -> None:
    values = {**GOOD, **wrong}
    with pytest.raises(Refused) as caught:
        check_primary(
            values["host"],
            values["port"],
            values["tls"],
            True,
            values["interval"],
            values["failures"],
        )
    assert caught.value.code == code
    if code in ("primary_port", "probe_interval", "failures_before_failover"):
        assert "must be a whole number from" in str(caught.value)


def test_check_primary_names_every_wrong_field_at_once() -> None:
    """Regression: the form showed only the first wrong field's error; fixing it showed
    the next one, a form of five fields took five rounds."""
    with pytest.raises(PrimaryRefused) as caught:
        check_primary("999.999.999.999", "x", "ssl", True, "5", "21")
    assert [r.code for r in caught.value.refusals] == [
        "primary_ip",
        "primary_port",
        "primary_tls",
        "probe_interval",
        "failures_before_failover",
    ]
    assert caught.value.code == "primary_ip"
    assert str(caught.value).count("; ") == 4


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("", ""),
        ("452", "452"),
        (" 452, 552 ", "452,552"),
        ("552;452 452", "552,452"),  # each once, in the order typed
        ("421,450,451,452,500,550,551,552,553,554", "421,450,451,452,500,550,551,552,553,554"),
    ],
)
def test_failover_codes_are_stored_as_a_checked_list(typed: str, stored: str) -> None:
    settings = check_primary("mx.acme.test", 25, "starttls", True, 60, 3, failover_codes=typed)
    assert settings.failover_codes == stored


@pytest.mark.parametrize(
    ("typed", "code"),
    [
        ("250", "failover_code"),  # a success is no failure
        ("354", "failover_code"),
        ("4521", "failover_code"),
        ("45", "failover_code"),
        ("4x2", "failover_code"),
        ("460", "failover_code"),  # no such second digit
        ("\x00452", "failover_code"),
        (",".join(str(code) for code in range(440, 451)), "failover_codes"),
    ],
)
def test_failover_codes_refuse_what_is_no_failure_code(typed: str, code: str) -> None:
    with pytest.raises(PrimaryRefused) as caught:
        check_primary("mx.acme.test", 25, "starttls", True, 60, 3, failover_codes=typed)
    assert [r.code for r in caught.value.refusals] == [code]


def test_check_primary_names_every_wrong_failover_setting_at_once() -> None:
    with pytest.raises(PrimaryRefused) as caught:
        check_primary(
            "mx.acme.test",
            25,
            "starttls",
            True,
            60,
            3,
            recover_after="0",
            failover_codes="200",
            language="fr",
        )
    assert [r.code for r in caught.value.refusals] == ["recover_after", "failover_code", "language"]
    settings = check_primary(
        "mx.acme.test", 25, "starttls", True, 60, 3, recover_after=" 20 ", language="es"
    )
    assert (settings.recover_after, settings.language, settings.tls_verify) == (20, "es", True)


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("mail.acme.test", "mail.acme.test", 25),
        ("Mail.Acme.Test.:2525", "mail.acme.test", 2525),
        ("[2001:DB8::25]:587", "2001:db8::25", 587),
        ("192.0.2.25:25", "192.0.2.25", 25),
        ("bücher.test", "xn--bcher-kva.test", 25),
    ],
)
def test_parse_primary_reads_possible_servers(value: str, host: str, port: int) -> None:
    assert parse_primary(value) == Primary(host, port)


@pytest.mark.parametrize(
    "value", ["999.999.999.999", "1.2.3.4.5:25", "0", "[mail.acme.test]:25", "a b:25", "::1"]
)
def test_parse_primary_refuses_impossible_servers(value: str) -> None:
    with pytest.raises(RosterError):
        parse_primary(value)


def test_set_primary_audits_only_what_changed(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with transaction(factory) as session:
        new_domain(session, ACME)
    first = check_primary("mail.acme.test", 25, "starttls", True, 60, 3)
    second = check_primary("[2001:db8::25]", "2525", "tls", True, 30, 3)
    with transaction(factory) as session:
        assert set_primary(session, get_domain(session, ACME), first, ADMIN, "10.0.0.7") is True
    with transaction(factory) as session:
        assert set_primary(session, get_domain(session, ACME), second, ADMIN) is True
    with transaction(factory) as session:
        assert set_primary(session, get_domain(session, ACME), second, ADMIN) is False
        domain = get_domain(session, ACME)
        assert (domain.primary_host, domain.primary_port, domain.primary_tls) == (
            "2001:db8::25",
            2525,
            "tls",
        )
    assert trail(engine, "primary.changed") == [
        (
            "primary.changed",
            ADMIN,
            {"primary_host": None},
            {"primary_host": "mail.acme.test"},
            "",
            "10.0.0.7",
        ),
        (
            "primary.changed",
            ADMIN,
            {
                "primary_host": "mail.acme.test",
                "primary_port": 25,
                "primary_tls": "starttls",
                "probe_interval_seconds": 60,
            },
            {
                "primary_host": "2001:db8::25",
                "primary_port": 2525,
                "primary_tls": "tls",
                "probe_interval_seconds": 30,
            },
            "",
            None,
        ),
    ]


# ---------------------------------------------------------------------------
# Overview and the scope selector
# ---------------------------------------------------------------------------
def test_overview_counts_last_sync_and_outage(factory: sessionmaker[Session]) -> None:
    now = utcnow()
    with transaction(factory) as session:
        acme = new_domain(session, ACME, active=True)
        person(session, acme, "ana", credential=True)
        person(session, acme, "bo")
        person(session, acme, "cy", disabled=True, credential=True)
        person(session, acme, "dee")
        person(session, acme, "gone", removed=True)
        brand = new_domain(session, BRAND)
        person(session, brand, "eve")
        runs = {}
        for source, hours in [("corp", 2), ("corp", 1), ("hr", 0.5), ("other", 0)]:
            run = SyncRun(source=source, mode="full", started_at=now - timedelta(hours=hours))
            session.add(run)
            session.flush()
            runs[source, hours] = run.id
        session.add_all(
            [
                ContinuityEvent(
                    domain_id=acme.id,
                    started_at=now - timedelta(days=3),
                    ended_at=now - timedelta(days=2),
                ),
                ContinuityEvent(domain_id=acme.id, started_at=now - timedelta(minutes=20)),
                ContinuityEvent(domain_id=brand.id, started_at=now - timedelta(minutes=5)),
            ]
        )

    with transaction(factory) as session:
        acme = get_domain(session, ACME)
        seen = overview(session, acme, ["corp"])
        assert (seen.people, seen.covered, seen.covered_without_emergency_password) == (4, 3, 2)
        assert seen.listed == 0 and seen.settings["name"] == ACME
        assert seen.last_sync is not None and seen.last_sync.id == runs["corp", 1]
        assert seen.outage_since == now - timedelta(minutes=20)
        both = overview(session, acme, ["corp", "hr"]).last_sync
        assert both is not None and both.id == runs["hr", 0.5]
        assert overview(session, acme, []).last_sync is None
        assert [p.mail for p in session.scalars(without_emergency_password(acme))] == [
            "bo@acme.test",
            "dee@acme.test",
        ]

        set_coverage_mode(session, acme, "selected", ADMIN, confirmed=True)
        for address in ("ana@acme.test", "cy@acme.test"):
            add_person(session, acme, address, ADMIN)
        seen = overview(session, acme, ["corp"])
        assert (seen.people, seen.covered, seen.covered_without_emergency_password) == (4, 1, 0)
        assert seen.listed == 2

        brand = get_domain(session, BRAND)
        seen = overview(session, brand, ["corp"])
        assert (seen.people, seen.covered, seen.listed) == (1, 0, 0)  # not active
        assert seen.outage_since == now - timedelta(minutes=5)

    with transaction(factory) as session:
        assert overview(session, get_domain(session, ACME), []).continuity_state == "outage"
        session.execute(update(ContinuityEvent).values(ended_at=now))
        seen = overview(session, get_domain(session, ACME), ["corp"])
        assert seen.outage_since is None
        # Regression: with no outage the overview said "normal" though nothing had ever
        # checked the primary; no monitor records checks yet, so nothing is known.
        assert seen.primary_check is None and seen.continuity_state == "not_checked"
        # What the gateway's monitor records on the domain is what the overview says.
        acme = get_domain(session, ACME)
        acme.last_check_at, acme.last_check_ok = now - timedelta(seconds=30), True
        seen = overview(session, acme, [])
        assert seen.primary_check is not None
        assert (seen.primary_check.at, seen.continuity_state) == (
            now - timedelta(seconds=30),
            "normal",
        )
        acme.last_check_ok = False
        assert overview(session, acme, []).continuity_state == "failing"


def test_domains_visible_to_an_admin(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        brand = new_domain(session, BRAND).id
        new_domain(session, ACME)
    with transaction(factory) as session:
        assert [d.name for d in domains_visible(session, None)] == [ACME, BRAND]
        assert [d.name for d in domains_visible(session, [brand])] == [BRAND]
        assert domains_visible(session, []) == []


def test_a_one_column_csv_header_is_not_taken_for_an_address() -> None:
    """Regression: a CSV of one column named "email" had its header reported as a
    refused address on line 1."""
    assert parse_bulk("email\nana@acme.test\n\nbo@acme.test\n") == [
        (2, "ana@acme.test"),
        (4, "bo@acme.test"),
    ]
    assert parse_bulk('"Correo"\r\nana@acme.test\r\n') == [(2, "ana@acme.test")]


def test_a_broken_csv_is_refused_with_its_line() -> None:
    """Regression: a CSV with an unclosed quote ended in an internal error (500)."""
    text = 'email,name\nana@acme.test,Ana\n"bo@acme.test,Bo\n' + "x" * 140_000 + "\n"
    with pytest.raises(Refused) as refused:
        parse_bulk(text)
    assert refused.value.code == "bad_csv" and refused.value.params["line"] >= 3


def test_a_csv_row_without_an_address_is_reported_not_skipped() -> None:
    assert parse_bulk("Name;E-mail Address\nAna;ana@acme.test\nBo\n") == [
        (2, "ana@acme.test"),
        (3, ""),
    ]


def test_a_list_entry_left_in_another_domain_covers_nobody_and_is_replaced(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    """An entry made by domain A's admin just as the sync moved the person to B (the
    two commit together on PostgreSQL) must not cover them in B, nor show in A's list;
    B's admin can still add them, and then B covers them."""
    with transaction(factory) as session:
        acme = new_domain(session, ACME, active=True, mode="selected")
        brand = new_domain(session, BRAND, active=True, mode="selected")
        moved = person(session, brand, "eve")
        session.add(
            CoverageEntry(domain_id=acme.id, person_id=moved.id, added_by=ADMIN, added_at=utcnow())
        )

    assert covered_mails(factory, ACME) == [] and covered_mails(factory, BRAND) == []
    with transaction(factory) as session:
        assert listed_count(session, get_domain(session, ACME)) == 0
        assert listed_page(session, get_domain(session, ACME)) == ([], 0)
        facts = sign_in_facts(session, "eve@brand.test")
        assert facts is not None and facts.may_use_emergency is False
    with transaction(factory) as session:
        add_person(session, get_domain(session, BRAND), "eve@brand.test", ADMIN)
    assert covered_mails(factory, BRAND) == ["eve@brand.test"]
    assert listed_mails(engine, ACME) == [] and listed_mails(engine, BRAND) == ["eve@brand.test"]

    # The same through a bulk request.
    with transaction(factory) as session:
        brand = get_domain(session, BRAND)
        bulk(session, brand, "eve@brand.test", REMOVE, ADMIN)
        eve = session.scalar(select(Person).where(Person.mail == "eve@brand.test"))
        assert eve is not None
        session.add(
            CoverageEntry(
                domain_id=get_domain(session, ACME).id,
                person_id=eve.id,
                added_by=ADMIN,
                added_at=utcnow(),
            )
        )
    with transaction(factory) as session:
        (line,) = bulk(session, get_domain(session, BRAND), "eve@brand.test", ADD, ADMIN)
    assert line.done and listed_mails(engine, BRAND) == ["eve@brand.test"]
