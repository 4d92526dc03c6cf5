"""Continuity Service administration for one domain: the rules behind the Control Panel's
Security settings > Continuity Service page and the `continuity domain|coverage` commands.

Every change is made here, in the caller's transaction, and written to the audit log with
who made it and the state before and after, so that the web pages and the command line
keep the same rules and leave the same trail. A change the rules refuse raises
``Refused``: its ``code`` and ``params`` let the portal word it in the reader's language,
its message is the English text the command line prints. Who may call these (a domain's
admins) is the caller's business: the portal checks it, the command line is the operator.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, delete, exists, false, func, select
from sqlalchemy.orm import Session

from roster.addresses import domain_of, plausible, printable
from roster.db import chunks
from roster.domains import HOST_RE, RosterError, audit, audit_many, audit_row, domain_state
from roster.identity import normalise_address
from roster.models import (
    COVERAGE_ALL,
    COVERAGE_SELECTED,
    Alias,
    ContinuityEvent,
    CoverageEntry,
    Domain,
    EmergencyCredential,
    Person,
    SyncRun,
    utcnow,
)

TLS_MODES = ("starttls", "tls", "none")
"""How the gateway talks to a primary server: STARTTLS on a plain port (the usual for port
25), TLS from the first byte (port 465), or neither (a primary on a trusted network)."""
PROBE_INTERVAL_RANGE = (10, 3600)
FAILURES_RANGE = (1, 20)
BULK_LIMIT = 10_000
"""Lines one bulk request may hold; more is refused whole, so that nothing is half done."""


class Refused(RosterError):
    """A change the rules refuse; nothing was changed."""

    def __init__(self, code: str, message: str, **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.params = params


def _require_active(domain: Domain) -> None:
    if not domain.continuity_active:
        raise Refused(
            "inactive",
            f"Continuity Service is not active for {domain.name}: activate it first",
            domain=domain.name,
        )


# ---------------------------------------------------------------------------
# Who is covered, in SQL (the same rule as roster.coverage.is_covered)
# ---------------------------------------------------------------------------
def covered_clause(domain: Domain) -> ColumnElement[bool]:
    """The condition "Continuity Service covers this person of ``domain`` now".

    ``roster.coverage.is_covered`` is the rule; this is that rule for a query over many
    people, and tests hold the two to the same table of cases.
    """
    if not domain.continuity_active:
        return false()
    live = and_(
        Person.domain_id == domain.id,
        Person.removed_at.is_(None),
        Person.disabled.is_(False),
    )
    if domain.coverage_mode == COVERAGE_ALL:
        return live
    if domain.coverage_mode == COVERAGE_SELECTED:
        # A list entry counts for its own domain only (one made just as the sync moved
        # the person elsewhere must not cover them there).
        return and_(
            live,
            exists().where(
                CoverageEntry.person_id == Person.id,
                CoverageEntry.domain_id == Person.domain_id,
            ),
        )
    return false()


def covered_people(session: Session, domain: Domain) -> list[Person]:
    """Everyone Continuity Service covers in ``domain`` now, by address."""
    return list(session.scalars(select(Person).where(covered_clause(domain)).order_by(Person.mail)))


def listed_count(session: Session, domain: Domain) -> int:
    """How many people are on the domain's "only selected users" list."""
    return (
        session.scalar(
            select(func.count())
            .select_from(CoverageEntry)
            .join(Person, Person.id == CoverageEntry.person_id)
            .where(CoverageEntry.domain_id == domain.id, Person.domain_id == domain.id)
        )
        or 0
    )


# ---------------------------------------------------------------------------
# Activate, deactivate, coverage mode, emergency password
# ---------------------------------------------------------------------------
def _change(
    session: Session,
    domain: Domain,
    actor: str,
    action: str,
    changes: dict[str, Any],
    client: str | None,
    detail: str = "",
) -> bool:
    """Set ``changes`` on ``domain`` and audit them; False when nothing changes."""
    before = {key: getattr(domain, key) for key in changes if getattr(domain, key) != changes[key]}
    if not before:
        return False
    after = {key: changes[key] for key in before}
    for key, value in after.items():
        setattr(domain, key, value)
    audit(
        session,
        actor,
        action,
        domain_id=domain.id,
        before=before,
        after=after,
        client=client,
        detail=detail,
    )
    return True


def activate(session: Session, domain: Domain, actor: str, client: str | None = None) -> bool:
    """Activate Continuity Service for ``domain``; at once for the gateway and portal,
    which read it from the roster on every message and sign-in."""
    return _change(session, domain, actor, "service.activated", {"continuity_active": True}, client)


def deactivate(session: Session, domain: Domain, actor: str, client: str | None = None) -> bool:
    """Deactivate Continuity Service: no more standby copies, no emergency or webmail
    sign-in. Mail already held is kept and still handed back to the primary; the list of
    selected users and the settings stay, for when it is activated again."""
    return _change(
        session, domain, actor, "service.deactivated", {"continuity_active": False}, client
    )


def set_emergency_password(
    session: Session, domain: Domain, enabled: bool, actor: str, client: str | None = None
) -> bool:
    """Switch the emergency password on or off for the domain."""
    if enabled:
        _require_active(domain)
    action = "emergency_password.enabled" if enabled else "emergency_password.disabled"
    return _change(session, domain, actor, action, {"emergency_password_enabled": enabled}, client)


def set_coverage_mode(
    session: Session,
    domain: Domain,
    mode: str,
    actor: str,
    *,
    confirmed: bool = False,
    client: str | None = None,
) -> int:
    """Cover all users or only selected users; returns how many listed people went.

    Going from "only selected users" to "all users" empties the list: while anyone is on
    it, that is refused unless ``confirmed`` (the Control Panel's warning and "Confirm",
    the command line's --yes).
    """
    if mode not in (COVERAGE_ALL, COVERAGE_SELECTED):
        raise Refused("bad_mode", f"{mode!r} is not a coverage mode (all or selected)")
    _require_active(domain)
    if mode == domain.coverage_mode:
        return 0
    listed = listed_count(session, domain) if mode == COVERAGE_ALL else 0
    if listed and not confirmed:
        raise Refused(
            "confirm_all_users",
            f"{listed} individually added user(s) of {domain.name} will be removed from the"
            " list when everyone is covered: confirm to go on",
            count=listed,
        )
    if listed:
        session.execute(delete(CoverageEntry).where(CoverageEntry.domain_id == domain.id))
    _change(
        session,
        domain,
        actor,
        "coverage.mode_changed",
        {"coverage_mode": mode},
        client,
        detail=f"{listed} listed user(s) removed" if listed else "",
    )
    return listed


# ---------------------------------------------------------------------------
# The list of selected users
# ---------------------------------------------------------------------------
def _refusal(typed: str, domain: Domain, found: Any) -> Refused | None:
    """Why ``found`` (a person row with domain_id and removed_at, or None), looked up by
    the ``typed`` address, cannot go on or off ``domain``'s list; None when it can.

    Another domain's people are never told apart from nobody: an address of another
    domain is "another domain" whether or not someone has it, and one of this domain
    that belongs to no one here is "not in the roster", whoever else may hold it.
    """
    if found is None or found.domain_id != domain.id:
        if domain_of(typed) != domain.name:
            return Refused(
                "other_domain", f"{typed} is not in the domain {domain.name}", address=typed
            )
        return Refused("not_in_roster", f"{typed} is not in the roster", address=typed)
    if found.removed_at is not None:
        return Refused("removed", f"{typed} has been removed from the directory", address=typed)
    return None


def _typed(address: str) -> str:
    """The normalised address, or ``Refused`` when it is none."""
    typed = normalise_address(address)
    if not plausible(typed):
        shown = printable(address.strip(), 320)
        raise Refused("not_an_address", f"{shown!r} is not an email address", address=shown)
    return typed


def _find_for_listing(session: Session, domain: Domain, address: str) -> Person:
    """The live person of ``domain`` with this address or alias, or why not."""
    typed = _typed(address)
    row: Any = _people_by_address(session, domain, [typed]).get(typed)
    refused = _refusal(typed, domain, row)
    person = session.get(Person, row.id) if refused is None else None
    if person is None:
        raise refused or Refused("not_in_roster", f"{typed} is not in the roster", address=typed)
    return person


def _listing_event(
    domain: Domain, person: Any, listed: bool, actor: str, client: str | None
) -> dict[str, Any]:
    """The audit event of someone put on (``listed``) or taken off the domain's list."""
    return audit_row(
        actor,
        "coverage.added" if listed else "coverage.removed",
        domain_id=domain.id,
        person_id=person.id,
        before={"listed": not listed},
        after={"listed": listed},
        client=client,
        detail=person.mail,
    )


def _require_selected(domain: Domain) -> None:
    _require_active(domain)
    if domain.coverage_mode != COVERAGE_SELECTED:
        raise Refused(
            "all_users",
            f"{domain.name} covers all users: choose only selected users first",
            domain=domain.name,
        )


def add_person(
    session: Session, domain: Domain, address: str, actor: str, client: str | None = None
) -> Person:
    """Put someone of the domain on its list of selected users."""
    _require_selected(domain)
    person = _find_for_listing(session, domain, address)
    held = session.scalar(select(CoverageEntry).where(CoverageEntry.person_id == person.id))
    if held is not None and held.domain_id == domain.id:
        raise Refused(
            "already_listed", f"{person.mail} is already on the list", address=person.mail
        )
    if held is not None:  # left from another domain the person has moved out of
        session.delete(held)
        session.flush()
    session.add(
        CoverageEntry(domain_id=domain.id, person_id=person.id, added_by=actor, added_at=utcnow())
    )
    audit_many(session, [_listing_event(domain, person, True, actor, client)])
    return person


def remove_person(
    session: Session, domain: Domain, address: str, actor: str, client: str | None = None
) -> Person:
    """Take someone off the domain's list of selected users: no longer covered."""
    _require_selected(domain)
    person = _find_for_listing(session, domain, address)
    return _unlist(session, domain, person, actor, client)


def remove_person_by_id(
    session: Session, domain: Domain, person_id: int, actor: str, client: str | None = None
) -> Person:
    """``remove_person`` for the row of the Control Panel's table (the cross)."""
    _require_selected(domain)
    person = session.get(Person, person_id)
    if person is None or person.domain_id != domain.id:
        raise Refused("not_listed", "that person is not on the list", address="")
    return _unlist(session, domain, person, actor, client)


def _unlist(
    session: Session, domain: Domain, person: Person, actor: str, client: str | None
) -> Person:
    removed = session.execute(
        delete(CoverageEntry).where(
            CoverageEntry.person_id == person.id, CoverageEntry.domain_id == domain.id
        )
    )
    if not getattr(removed, "rowcount", 0):
        raise Refused("not_listed", f"{person.mail} is not on the list", address=person.mail)
    audit_many(session, [_listing_event(domain, person, False, actor, client)])
    return person


@dataclass(frozen=True)
class ListedRow:
    """One row of the "Continuity Service users" table."""

    person_id: int
    mail: str
    display_name: str
    disabled: bool
    emergency_password_set: bool
    added_by: str
    added_at: datetime


LISTED_SORTS = {
    "address": (Person.mail,),
    "name": (Person.display_name, Person.mail),
    "added": (CoverageEntry.added_at.desc(), Person.mail),
}


def listed_page(
    session: Session, domain: Domain, *, page: int = 1, per_page: int = 50, sort: str = "address"
) -> tuple[list[ListedRow], int]:
    """One page of the domain's list of selected users, and how many there are in all."""
    total = listed_count(session, domain)
    order = LISTED_SORTS.get(sort, LISTED_SORTS["address"])
    page = max(1, page)
    rows = session.execute(
        select(
            Person.id,
            Person.mail,
            Person.display_name,
            Person.disabled,
            EmergencyCredential.person_id.is_not(None),
            CoverageEntry.added_by,
            CoverageEntry.added_at,
        )
        .join(Person, Person.id == CoverageEntry.person_id)
        .outerjoin(EmergencyCredential, EmergencyCredential.person_id == Person.id)
        .where(CoverageEntry.domain_id == domain.id, Person.domain_id == domain.id)
        .order_by(*order)
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    return [ListedRow(*row) for row in rows], total


# ---------------------------------------------------------------------------
# Bulk: many addresses at once, pasted or from a CSV file
# ---------------------------------------------------------------------------
ADD, REMOVE = "add", "remove"


@dataclass
class BulkLine:
    """What happened to one line of a bulk request."""

    line: int
    address: str
    done: bool
    code: str  # "added", "removed", or the code of the refusal
    message: str
    params: dict[str, Any] = field(default_factory=dict)


_SEPARATORS = re.compile(r"[,;\s]+")
_HEADER_NAMES = {
    "address",
    "email",
    "e-mail",
    "mail",
    "email address",
    "e-mail address",
    "correo",
    "correo electrónico",
    "dirección",
    "direccion",
    "dirección de correo",
    "dirección de correo electrónico",
}


def parse_bulk(text: str) -> list[tuple[int, str]]:
    """The addresses of a pasted list or a CSV file, each with its line number.

    Pasted text may separate addresses by new lines, commas, semicolons or spaces. A CSV
    file (a first line naming an address column, as spreadsheets export it) is read by
    that column; other columns are ignored. Empty lines are skipped.
    """
    try:
        return _parse_bulk(text)
    except csv.Error as error:
        line = getattr(error, "line", None) or 0
        raise Refused("bad_csv", f"the file cannot be read as CSV: {error}", line=line) from None


def _parse_bulk(text: str) -> list[tuple[int, str]]:
    lines = text.removeprefix("\ufeff").splitlines()  # Excel's "CSV UTF-8" begins with a BOM
    if lines and ("," in lines[0] or ";" in lines[0]):
        delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
        header = [
            cell.strip().lower() for cell in next(csv.reader([lines[0]], delimiter=delimiter))
        ]
        column = next((i for i, name in enumerate(header) if name in _HEADER_NAMES), None)
        if column is not None:
            found = []
            reader = csv.reader(io.StringIO("\n".join(lines[1:])), delimiter=delimiter)
            try:
                for row in reader:
                    number = reader.line_num + 1
                    if len(row) > column and row[column].strip():
                        found.append((number, row[column].strip()))
                    elif any(cell.strip() for cell in row):
                        found.append((number, ""))  # reported: no address on this line
            except csv.Error as error:
                error.line = reader.line_num + 1  # type: ignore[attr-defined]
                raise
            return found
    first = 1
    if lines and lines[0].strip().strip('"').lower() in _HEADER_NAMES:
        lines, first = lines[1:], 2  # a one-column CSV: its header is no address
    found = []
    for number, line in enumerate(lines, start=first):
        for item in _SEPARATORS.split(line.strip()):
            if item:
                found.append((number, item))
    return found


def _people_by_address(session: Session, domain: Domain, typed: list[str]) -> dict[str, Any]:
    """For each address (its person's or an alias), the person it names: of this domain
    first, live first, newest first. Rows of (id, mail, domain_id, removed_at)."""
    found: dict[str, Any] = {}

    def rank(row: Any) -> tuple[bool, bool, int]:
        return (row.domain_id != domain.id, row.removed_at is not None, -row.id)

    columns = (Person.id, Person.mail, Person.domain_id, Person.removed_at)
    for part in chunks(typed):
        by_mail = session.execute(select(*columns).where(Person.mail.in_(part)))
        by_alias = session.execute(
            select(Alias.address, *columns)
            .join(Person, Person.id == Alias.person_id)
            .where(Alias.address.in_(part))
        )
        candidates = [(row.mail, row) for row in by_mail] + [(row.address, row) for row in by_alias]
        for address, row in candidates:
            held = found.get(address)
            if held is None or rank(row) < rank(held):
                found[address] = row
    return found


def bulk(
    session: Session,
    domain: Domain,
    text: str,
    action: str,
    actor: str,
    client: str | None = None,
) -> list[BulkLine]:
    """Add or remove every address of ``text``; a report line for each.

    Each line stands alone: a refused address changes nothing and does not stop the
    others, and each change is audited like a single one. The addresses are looked up
    a few hundred at a time and the changes written in a few statements, so that a
    list of thousands holds the roster's write lock for a moment, not for seconds.
    """
    if action not in (ADD, REMOVE):
        raise ValueError(action)
    _require_selected(domain)
    entries = parse_bulk(text)
    if len(entries) > BULK_LIMIT:
        raise Refused(
            "too_many",
            f"{len(entries)} addresses: at most {BULK_LIMIT} at once",
            count=len(entries),
            limit=BULK_LIMIT,
        )
    addresses = {normalise_address(address) for _, address in entries}
    people = _people_by_address(session, domain, sorted(filter(plausible, addresses)))
    ids = sorted({row.id for row in people.values() if row.domain_id == domain.id})
    listed: set[int] = set()
    for part in chunks(ids):
        listed.update(
            session.scalars(
                select(CoverageEntry.person_id).where(
                    CoverageEntry.person_id.in_(part), CoverageEntry.domain_id == domain.id
                )
            )
        )

    report: list[BulkLine] = []
    changed: list[Any] = []
    seen: set[str] = set()
    for number, address in entries:
        try:
            key = _typed(address)
            if key in seen:
                raise Refused("duplicate", f"{key} is repeated above", address=key)
            seen.add(key)
            row: Any = people.get(key)
            refused = _refusal(key, domain, row)
            if refused is not None:
                raise refused
            if action == ADD and row.id in listed:
                raise Refused(
                    "already_listed", f"{row.mail} is already on the list", address=row.mail
                )
            if action == REMOVE and row.id not in listed:
                raise Refused("not_listed", f"{row.mail} is not on the list", address=row.mail)
        except Refused as refusal:
            report.append(
                BulkLine(number, address, False, refusal.code, str(refusal), refusal.params)
            )
            continue
        # Two addresses of one person (address and alias): the second finds them done.
        (listed.add if action == ADD else listed.discard)(row.id)
        changed.append(row)
        done = "added" if action == ADD else "removed"
        report.append(
            BulkLine(number, address, True, done, f"{row.mail} {done}", {"address": row.mail})
        )

    now = utcnow()
    changed_ids = [row.id for row in changed]
    for part in chunks(changed_ids):
        # REMOVE: their entries go. ADD: an entry left from another domain the person
        # has moved out of goes first (a person holds one entry at most).
        going: ColumnElement[bool] = CoverageEntry.person_id.in_(part)
        if action == ADD:
            going = and_(going, CoverageEntry.domain_id != domain.id)
        session.execute(delete(CoverageEntry).where(going))
    if action == ADD:
        for part in chunks(changed, 1000):
            session.execute(
                cast(Table, CoverageEntry.__table__).insert(),
                [
                    {
                        "domain_id": domain.id,
                        "person_id": row.id,
                        "added_by": actor,
                        "added_at": now,
                    }
                    for row in part
                ],
            )
    audit_many(
        session, [_listing_event(domain, row, action == ADD, actor, client) for row in changed]
    )
    return report


# ---------------------------------------------------------------------------
# The primary mail server
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PrimarySettings:
    """A domain's primary mail server and its failover thresholds, as typed."""

    host: str
    port: int
    tls: str
    automatic: bool
    probe_interval_seconds: int
    failures_before_failover: int


def check_primary(
    host: str,
    port: int | str,
    tls: str,
    automatic: bool,
    probe_interval_seconds: int | str,
    failures_before_failover: int | str,
) -> PrimarySettings:
    """Validated settings, or ``Refused`` naming the first wrong field."""
    # Cut at one past the longest name, so that a longer one is refused, not shortened.
    text = printable(str(host).strip().lower().removeprefix("[").removesuffix("]"), 254)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not HOST_RE.match(text) or len(text) > 253:
            raise Refused(
                "primary_host", f"{text!r} is not a host name or IP address", value=text
            ) from None
    number = _number(port, 1, 65535, "primary_port", "the port")
    if tls not in TLS_MODES:
        raise Refused("primary_tls", f"{tls!r} is not one of {', '.join(TLS_MODES)}", value=tls)
    interval = _number(
        probe_interval_seconds, *PROBE_INTERVAL_RANGE, "probe_interval", "the probe interval"
    )
    failures = _number(
        failures_before_failover,
        *FAILURES_RANGE,
        "failures_before_failover",
        "the failures before failover",
    )
    return PrimarySettings(text, number, tls, bool(automatic), interval, failures)


def _number(value: int | str, low: int, high: int, code: str, name: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise Refused(
            code,
            f"{name} must be a whole number from {low} to {high}",
            value=printable(str(value), 20),
            low=low,
            high=high,
        )
    return number


def set_primary(
    session: Session,
    domain: Domain,
    settings: PrimarySettings,
    actor: str,
    client: str | None = None,
) -> bool:
    """Store the domain's primary server settings; False when nothing changes."""
    return _change(
        session,
        domain,
        actor,
        "primary.changed",
        {
            "primary_host": settings.host,
            "primary_port": settings.port,
            "primary_tls": settings.tls,
            "failover_automatic": settings.automatic,
            "probe_interval_seconds": settings.probe_interval_seconds,
            "failures_before_failover": settings.failures_before_failover,
        },
        client,
    )


# ---------------------------------------------------------------------------
# Overview
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Overview:
    """What the domain's page shows above its settings."""

    settings: dict[str, Any]
    people: int
    people_disabled: int
    covered: int
    covered_without_emergency_password: int
    listed: int
    last_sync: SyncRun | None
    outage_since: datetime | None


def without_emergency_password(domain: Domain) -> Any:
    """A query of covered people of ``domain`` who have not set an emergency password."""
    return (
        select(Person)
        .where(
            covered_clause(domain),
            ~exists().where(EmergencyCredential.person_id == Person.id),
        )
        .order_by(Person.mail)
    )


def overview(session: Session, domain: Domain, sources: Sequence[str]) -> Overview:
    """Counts, the last directory sync of ``sources`` and the continuity state."""

    def count(condition: ColumnElement[bool]) -> int:
        return session.scalar(select(func.count()).select_from(Person).where(condition)) or 0

    live = and_(Person.domain_id == domain.id, Person.removed_at.is_(None))
    people = count(live)
    disabled = count(and_(live, Person.disabled.is_(True)))
    covered = count(covered_clause(domain))
    missing = count(
        and_(covered_clause(domain), ~exists().where(EmergencyCredential.person_id == Person.id))
    )
    last_sync = None
    if sources:
        last_sync = session.scalars(
            select(SyncRun)
            .where(SyncRun.source.in_(list(sources)))
            .order_by(SyncRun.started_at.desc(), SyncRun.id.desc())
            .limit(1)
        ).first()
    outage = session.scalar(
        select(ContinuityEvent.started_at)
        .where(ContinuityEvent.domain_id == domain.id, ContinuityEvent.ended_at.is_(None))
        .order_by(ContinuityEvent.started_at)
        .limit(1)
    )
    return Overview(
        settings=domain_state(domain),
        people=people,
        people_disabled=disabled,
        covered=covered,
        covered_without_emergency_password=missing,
        listed=listed_count(session, domain),
        last_sync=last_sync,
        outage_since=outage,
    )


def overview_dict(found: Overview) -> dict[str, Any]:
    """An overview as plain values (for `domain show --json`)."""
    run = found.last_sync
    return {
        **found.settings,
        "people": found.people,
        "people_disabled": found.people_disabled,
        "covered": found.covered,
        "covered_without_emergency_password": found.covered_without_emergency_password,
        "listed": found.listed,
        "last_sync": None
        if run is None
        else {
            "source": run.source,
            "mode": run.mode,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "outcome": run.outcome,
            "counts": run.counts,
            "error": run.error,
        },
        "continuity_state": "outage" if found.outage_since else "normal",
        "outage_since": found.outage_since.isoformat() if found.outage_since else None,
    }


def domains_visible(session: Session, domain_ids: Iterable[int] | None) -> list[Domain]:
    """The domains an admin sees in the scope selector (None: a global admin, all)."""
    query = select(Domain).order_by(Domain.name)
    if domain_ids is not None:
        ids = list(domain_ids)
        query = query.where(Domain.id.in_(ids) if ids else false())
    return list(session.scalars(query))
