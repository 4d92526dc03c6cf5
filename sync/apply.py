"""Applying: one transaction that brings the roster in line with a plan."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from roster.addresses import domain_of
from roster.db import chunks
from roster.models import (
    Alias,
    AuditEvent,
    CoverageEntry,
    DirectoryMark,
    Domain,
    EmergencyCredential,
    Person,
    ResetCode,
    StaffRole,
    utcnow,
)
from sync.directory import normalise_dn
from sync.plan import Plan, RosterPerson, Update, packed_fingerprint


def domain_ids(session: Session) -> dict[str, int]:
    """Every domain of the roster, by name."""
    return {name: id_ for id_, name in session.execute(select(Domain.id, Domain.name))}


def _aliases_by_person(session: Session, person_ids: Iterable[int] | None) -> dict[int, list[str]]:
    query = select(Alias.person_id, Alias.address)
    found: dict[int, list[str]] = {}
    if person_ids is None:
        queries = [query]
    else:
        queries = [query.where(Alias.person_id.in_(part)) for part in chunks(person_ids)]
    for each in queries:
        for person_id, address in session.execute(each):
            found.setdefault(person_id, []).append(address)
    return found


def _roster_people(session: Session, where: Any | None) -> list[RosterPerson]:
    """RosterPerson values for the people matching ``where`` (everyone when None).

    Rows are streamed and repeated strings (source, domain) shared, so that holding the
    whole roster of a large directory costs as little memory as it can.
    """
    names = {id_: name for name, id_ in domain_ids(session).items()}
    sources: dict[str, str] = {}
    query = select(
        Person.id,
        Person.source,
        Person.external_id,
        Person.domain_id,
        Person.dn,
        Person.mail,
        Person.display_name,
        Person.disabled,
        Person.removed_at.is_not(None),
        Person.alternate_contact,
    )
    if where is not None:
        query = query.where(where)
        rows: Iterable[Any] = session.execute(query).all()
        aliases = _aliases_by_person(session, [r[0] for r in rows])
    else:
        aliases = _aliases_by_person(session, None)
        rows = session.execute(query.execution_options(yield_per=5000))
    return [
        RosterPerson(
            id=r[0],
            source=sources.setdefault(r[1], r[1]),
            external_id=r[2],
            domain=names[r[3]],
            dn=r[4],
            mail=r[5],
            aliases=tuple(aliases.get(r[0], ())),
            display_name=r[6],
            disabled=bool(r[7]),
            removed=bool(r[8]),
            alternate_contact=r[9],
        )
        for r in rows
    ]


def load_roster(
    session: Session, source: str, external_ids: Sequence[str] | None, addresses: Sequence[str]
) -> list[RosterPerson]:
    """The roster rows a plan needs.

    For a full run (``external_ids`` None): everyone. For an incremental run: only the
    people with those stable ids and the live people holding any of ``addresses``, so the
    cost follows the size of the change, not of the directory.
    """
    if external_ids is None:
        return _roster_people(session, None)
    ids: set[int] = set()
    for id_part in chunks(external_ids):
        ids.update(
            session.scalars(
                select(Person.id).where(Person.source == source, Person.external_id.in_(id_part))
            )
        )
    for part in chunks(addresses):
        ids.update(
            session.scalars(
                select(Person.id).where(Person.mail.in_(part), Person.removed_at.is_(None))
            )
        )
        ids.update(session.scalars(select(Alias.person_id).where(Alias.address.in_(part))))
    people: list[RosterPerson] = []
    for number_part in chunks(sorted(ids)):
        people.extend(_roster_people(session, Person.id.in_(number_part)))
    return people


class DatabaseRoster:
    """The roster as a full run's plan asks for it (sync.plan.KnownRoster).

    Built before the directory is read: one packed fingerprint per person of the
    source (about 170 bytes with its stable id, against some 600 for a RosterPerson),
    and nothing of the people of other sources; full rows and address holders are read
    afterwards for the few entries that need them.
    """

    def __init__(self, session: Session, source: str) -> None:
        self.session = session
        names = {id_: name for name, id_ in domain_ids(session).items()}
        aliases: dict[int, list[str]] = {}
        for person_id, address in session.execute(
            select(Alias.person_id, Alias.address)
            .join(Person, Person.id == Alias.person_id)
            .where(Person.source == source)
        ):
            aliases.setdefault(person_id, []).append(address)
        query = select(
            Person.id,
            Person.external_id,
            Person.removed_at.is_not(None),
            Person.mail,
            Person.display_name,
            Person.dn,
            Person.disabled,
            Person.alternate_contact,
            Person.domain_id,
        ).where(Person.source == source)
        self._mine: dict[str, int] = {}
        self._live = 0
        for (
            id_,
            external_id,
            removed,
            mail,
            name,
            dn,
            disabled,
            alternate,
            domain_id,
        ) in session.execute(query.execution_options(yield_per=10_000)):
            self._live += not removed
            self._mine[external_id] = packed_fingerprint(
                id_, bool(removed), mail, name, dn, bool(disabled), alternate,
                aliases.get(id_, ()), names[domain_id],
            )  # fmt: skip
        self._anyone = (
            session.scalar(select(Person.id).where(Person.removed_at.is_(None)).limit(1))
            is not None
        )
        session.rollback()  # no transaction stays open while the directory is read

    def snapshot(self, source: str) -> tuple[dict[str, int], int]:
        """See sync.plan.KnownRoster; handed over once (the plan marks it as it reads)."""
        mine, self._mine = self._mine, {}
        return mine, self._live

    def people(self, ids: Collection[int]) -> dict[int, RosterPerson]:
        """See sync.plan.KnownRoster."""
        found: dict[int, RosterPerson] = {}
        for part in chunks(sorted(set(ids))):
            found.update((p.id, p) for p in _roster_people(self.session, Person.id.in_(part)))
        return found

    def holders(self, addresses: Collection[str]) -> dict[str, int]:
        """See sync.plan.KnownRoster."""
        found: dict[str, int] = {}
        live = Person.removed_at.is_(None)
        for part in chunks(sorted(set(addresses))):
            found.update(
                (mail, id_)
                for mail, id_ in self.session.execute(
                    select(Person.mail, Person.id).where(Person.mail.in_(part), live)
                )
            )
            found.update(
                (address, id_)
                for address, id_ in self.session.execute(
                    select(Alias.address, Alias.person_id)
                    .join(Person, Person.id == Alias.person_id)
                    .where(Alias.address.in_(part), live)
                )
            )
        return found

    def anyone_live(self) -> bool:
        """See sync.plan.KnownRoster."""
        return self._anyone


def outside_scope(session: Session, source: str, scope: set[str]) -> list[str]:
    """Stable ids of the live people of ``source`` whose DN is not in ``scope``."""
    query = select(Person.external_id, Person.dn).where(
        Person.source == source, Person.removed_at.is_(None)
    )
    return [
        external_id
        for external_id, dn in session.execute(query.execution_options(yield_per=5000))
        if normalise_dn(dn) not in scope
    ]


def apply_plan(
    session: Session,
    plan: Plan,
    domains: Mapping[str, int],
    actor: str,
    now: datetime | None = None,
) -> None:
    """Write the plan into the roster inside the caller's transaction, step by step."""
    writer = _Writer(session, plan, domains, actor, now or utcnow())
    # 1. Free every address that changes hands in this run (renames, swaps, leavers)
    #    before anyone takes one: the unique index on live addresses never sees two
    #    holders at once.
    writer.park_moving_addresses()
    # 2. People gone from the directory (or no longer qualifying) lose everything that
    #    gives access: coverage, emergency password, reset codes, roles, sessions.
    writer.remove_leavers()
    # 3. Someone moving to another domain leaves the first domain's list of selected
    #    users; that domain's admins see why in its audit trail.
    writer.unlist_domain_movers()
    # 4. Updates (renames, disables, restores...) and 5. new people, then their aliases.
    writer.update_people()
    writer.create_people()
    writer.write_aliases()
    # 6. The audit trail, then the people_version of each touched domain (which tells
    #    every portal worker to read the domain's people again for its suggestions).
    writer.audit_changes()
    writer.bump_people_versions()


def _audit_row(
    at: datetime,
    actor: str,
    action: str,
    person_id: int,
    domain_id: int | None,
    before: Any,
    after: Any,
    detail: str = "",
) -> dict[str, Any]:
    """One audit event, as a row for an executemany INSERT: the only builder the sync has."""
    return {
        "at": at,
        "actor": actor,
        "action": action,
        "person_id": person_id,
        "domain_id": domain_id,
        "before": before,
        "after": after,
        "detail": detail,
    }


class _Writer:
    """The steps of apply_plan, sharing the plan, the session and the run's moment."""

    def __init__(
        self,
        session: Session,
        plan: Plan,
        domains: Mapping[str, int],
        actor: str,
        now: datetime,
    ) -> None:
        self.session, self.plan, self.domains = session, plan, domains
        self.actor, self.now = actor, now
        self.person = cast(Table, Person.__table__)
        self.audit = cast(Table, AuditEvent.__table__)

    def park_moving_addresses(self) -> None:
        """Give every changing address a placeholder, and drop changing aliases."""
        movers = [u for u in self.plan.updates if "mail" in u.changed or u.restored]
        if movers:
            self.session.execute(
                self.person.update()
                .where(self.person.c.id == bindparam("pid"))
                .values(mail=bindparam("parked")),
                [{"pid": u.person_id, "parked": f"~moving~{u.person_id}"} for u in movers],
            )
        alias_changes = [
            u.person_id for u in self.plan.updates if "aliases" in u.changed or u.restored
        ]
        for part in chunks(alias_changes + [r.person_id for r in self.plan.removals]):
            self.session.execute(delete(Alias).where(Alias.person_id.in_(part)))

    def remove_leavers(self) -> None:
        """Mark the plan's removals removed (see _remove)."""
        if self.plan.removals:
            _remove(self.session, [r.person_id for r in self.plan.removals], self.now)

    def unlist_domain_movers(self) -> None:
        """Take people who change domain off the list of the domain they leave."""
        moved = [u.person_id for u in self.plan.updates if "domain" in u.changed]
        unlisted: list[Any] = []
        for part in chunks(moved):
            unlisted += self.session.execute(
                delete(CoverageEntry)
                .where(CoverageEntry.person_id.in_(part))
                .returning(CoverageEntry.person_id, CoverageEntry.domain_id)
            ).all()
        if unlisted:
            self.session.execute(
                self.audit.insert(),
                [
                    _audit_row(
                        self.now,
                        self.actor,
                        "coverage.removed",
                        person_id,
                        domain_id,
                        {"listed": True},
                        {"listed": False},
                        "moved to another domain in the directory",
                    )
                    for person_id, domain_id in unlisted
                ],
            )

    def update_people(self) -> None:
        """Write every update's values; a disable or a rename ends the open sessions."""
        person = self.person
        statement = (
            person.update()
            .where(person.c.id == bindparam("pid"))
            .values(
                mail=bindparam("mail"),
                dn=bindparam("dn"),
                display_name=bindparam("display_name"),
                disabled=bindparam("disabled"),
                alternate_contact=bindparam("alternate_contact"),
                domain_id=bindparam("domain_id"),
                removed_at=None,
                updated_at=self.now,
                session_generation=person.c.session_generation + bindparam("bump"),
            )
        )
        rows = (
            {
                "pid": u.person_id,
                "mail": u.entry.mail,
                "dn": u.entry.dn,
                "display_name": u.entry.display_name,
                "disabled": u.entry.disabled,
                "alternate_contact": u.entry.alternate_contact,
                "domain_id": self.domains[u.domain],
                # Someone whose address changed may not have had it before.
                "bump": 1 if (u.disabled_now or u.renamed_from) else 0,
            }
            for u in self.plan.updates
        )
        for part in chunks(rows, 5000):
            self.session.execute(statement, part)

    def create_people(self) -> None:
        """Insert the new people with plain executemany INSERTs, a chunk at a time.

        RETURNING per row and a list of every row's dict both cost more than the whole
        rest of the write; the few ids needed (for aliases) are read back afterwards.
        The creates are read once (a large plan keeps them in a file): what the later
        steps need of them is noted on the way.
        """
        self.created_domains: set[int] = set()
        self.created_aliases: list[tuple[str, tuple[str, ...]]] = []

        def values() -> Iterator[tuple[Any, ...]]:
            # Plain rows, not Create values: a million of them costs seconds less.
            for _, row in self.plan.creates.rows():
                external_id, dn, mail, aliases, name, disabled, alternate, domain = row
                domain_id = self.domains[domain]
                self.created_domains.add(domain_id)
                if aliases:
                    self.created_aliases.append((external_id, aliases))
                yield domain_id, external_id, dn, mail, name, alternate, disabled

        dialect = self.session.get_bind().dialect
        if dialect.name == "sqlite":
            # The rows go to the driver as plain tuples: SQLAlchemy's handling of a
            # million parameter dicts costs about as much as SQLite's own inserting.
            # The only typed value, the moment, is made once by the column's processor.
            stamp = self.person.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
            now = stamp(self.now) if stamp else self.now
            connection = self.session.connection()
            tuples = (
                (domain_id, self.plan.source, external_id, dn, mail, name, alternate,
                 disabled, 0, now, now)
                for domain_id, external_id, dn, mail, name, alternate, disabled in values()
            )  # fmt: skip
            for batch in chunks(tuples, 5000):
                connection.exec_driver_sql(_SQLITE_INSERT_PERSON, batch)
            return
        dicts = (
            {
                "domain_id": domain_id,
                "source": self.plan.source,
                "external_id": external_id,
                "dn": dn,
                "mail": mail,
                "display_name": name,
                "alternate_contact": alternate,
                "disabled": disabled,
                "session_generation": 0,
                "created_at": self.now,
                "updated_at": self.now,
            }
            for domain_id, external_id, dn, mail, name, alternate, disabled in values()
        )
        for part in chunks(dicts, 5000):
            self.session.execute(self.person.insert(), part)

    def write_aliases(self) -> None:
        """Insert the aliases of new people and of people whose aliases changed."""
        rows = [
            {"person_id": u.person_id, "address": a}
            for u in self.plan.updates
            if "aliases" in u.changed or u.restored
            for a in u.entry.aliases
        ]
        for created in chunks(self.created_aliases):
            found = self.session.execute(
                select(Person.external_id, Person.id).where(
                    Person.source == self.plan.source,
                    Person.external_id.in_([external_id for external_id, _ in created]),
                )
            )
            new_ids = {external_id: id_ for external_id, id_ in found}
            rows += (
                {"person_id": new_ids[external_id], "address": a}
                for external_id, aliases in created
                for a in aliases
            )
        alias_table = cast(Table, Alias.__table__)
        for part in chunks(rows, 5000):
            self.session.execute(alias_table.insert(), part)

    def audit_changes(self) -> None:
        """Audit renames, disables, enables, restores and removals (not every new name)."""
        rows = [
            _audit_row(self.now, self.actor, action, u.person_id, self.domains[u.domain], *change)
            for u in self.plan.updates
            for action, *change in _update_audits(u)
        ] + [
            _audit_row(
                self.now,
                self.actor,
                "person.removed",
                r.person_id,
                self.domains.get(domain_of(r.mail)),
                {"mail": r.mail},
                None,
                "gone from the directory",
            )
            for r in self.plan.removals
        ]
        for part in chunks(rows, 5000):
            self.session.execute(self.audit.insert(), part)

    def bump_people_versions(self) -> None:
        """Move on people_version of every domain that gained, lost or changed people."""
        domains, plan = self.domains, self.plan
        touched = (
            set(self.created_domains)
            | {domains[u.domain] for u in plan.updates}
            | {domains.get(domain_of(u.renamed_from)) for u in plan.updates if u.renamed_from}
            | {domains.get(domain_of(r.mail)) for r in plan.removals}
        )
        touched.discard(None)
        if touched:
            domain_table = cast(Table, Domain.__table__)
            self.session.execute(
                domain_table.update()
                .where(domain_table.c.id.in_(sorted(touched)))
                .values(people_version=domain_table.c.people_version + 1)
            )


_SQLITE_INSERT_PERSON = (
    "INSERT INTO person (domain_id, source, external_id, dn, mail, display_name,"
    " alternate_contact, disabled, session_generation, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _update_audits(u: Update) -> list[tuple[str, Any, Any]]:
    """(action, before, after) worth keeping for one update."""
    found: list[tuple[str, Any, Any]] = []
    if u.renamed_from:
        found.append(("person.renamed", {"mail": u.renamed_from}, {"mail": u.entry.mail}))
    if u.disabled_now:
        found.append(("person.disabled", {"disabled": False}, {"disabled": True}))
    if u.enabled_now:
        found.append(("person.enabled", {"disabled": True}, {"disabled": False}))
    if u.restored:
        found.append(("person.restored", None, {"mail": u.entry.mail}))
    return found


def _remove(session: Session, person_ids: list[int], now: datetime) -> None:
    """Mark people removed: no coverage, no emergency password, no sessions, no roles."""
    for part in chunks(person_ids):
        session.execute(delete(CoverageEntry).where(CoverageEntry.person_id.in_(part)))
        session.execute(delete(EmergencyCredential).where(EmergencyCredential.person_id.in_(part)))
        session.execute(delete(ResetCode).where(ResetCode.person_id.in_(part)))
        session.execute(delete(StaffRole).where(StaffRole.person_id.in_(part)))
        session.execute(
            update(Person)
            .where(Person.id.in_(part))
            .values(
                removed_at=now,
                updated_at=now,
                session_generation=Person.session_generation + 1,
            )
            .execution_options(synchronize_session=False)
        )


def apply_roles(
    session: Session,
    source: str,
    members: Mapping[str, set[str]],
    source_domains: Sequence[str],
    domains: Mapping[str, int],
) -> int:
    """Replace the staff roles this source's groups grant; returns how many there are now.

    A member of the admin (helpdesk) group administers (serves) every domain of the
    source. Only live, enabled people of the source get a role.
    """
    origin = f"directory:{source}"
    session.execute(delete(StaffRole).where(StaffRole.origin == origin))
    if not members:
        return 0
    wanted = set().union(*members.values())
    people: dict[str, int] = {}
    query = select(Person.id, Person.dn).where(
        and_(Person.source == source, Person.removed_at.is_(None), Person.disabled.is_(False))
    )
    for id_, dn in session.execute(query):
        key = normalise_dn(dn)
        if key in wanted:
            people[key] = id_
    rows = [
        {
            "person_id": people[dn],
            "role": role,
            "domain_id": domains[name],
            "origin": origin,
            "created_at": utcnow(),
        }
        for role, dns in sorted(members.items())
        for dn in sorted(dns)
        if dn in people
        for name in source_domains
        if name in domains
    ]
    if rows:
        session.execute(insert(StaffRole), rows)
    return len(rows)


def save_mark(session: Session, source: str, server: str, mark: str) -> None:
    """Store where the next incremental read of ``server`` for ``source`` starts."""
    found = session.scalar(
        select(DirectoryMark).where(DirectoryMark.source == source, DirectoryMark.server == server)
    )
    if found is None:
        session.add(DirectoryMark(source=source, server=server, mark=mark, updated_at=utcnow()))
    else:
        found.mark, found.updated_at = mark, utcnow()
    session.flush()


def load_marks(session: Session, source: str) -> dict[str, str]:
    """Every server's mark for ``source``."""
    rows = session.execute(
        select(DirectoryMark.server, DirectoryMark.mark).where(DirectoryMark.source == source)
    )
    return {server: mark for server, mark in rows}
