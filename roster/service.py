"""Continuity Service administration for one domain: the rules behind the Control Panel's
Security settings > Continuity Service page and the `continuity domain|coverage` commands.

Every change is made here, in the caller's transaction, and written to the audit log with
who made it and the state before and after, so that the web pages and the command line
keep the same rules and leave the same trail. A change the rules refuse raises
``Refused``: its ``code`` and ``params`` let the portal word it in the reader's language,
its message is the English text the command line prints. Who may call these (a domain's
admins) is the caller's business: the portal checks it, the command line is the operator.

Many addresses at once (pasted or a CSV file) are ``roster.bulk``'s; the primary server's
checks are ``roster.domains``' (beside ``parse_primary``); who is covered and who is on
the list are ``roster.coverage``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, exists, false, func, select
from sqlalchemy.orm import Session

from roster.addresses import domain_of, plausible, printable
from roster.continuity import begin_recovery, open_event, start_event
from roster.coverage import covered_clause, lists_person
from roster.db import chunks
from roster.domains import PrimarySettings, Refused, audit, audit_many, audit_row, domain_state
from roster.identity import normalise_address
from roster.models import (
    COVERAGE_ALL,
    COVERAGE_SELECTED,
    WEBMAIL_ALWAYS,
    WEBMAIL_OUTAGE,
    Alias,
    ContinuityEvent,
    CoverageEntry,
    Domain,
    EmergencyCredential,
    Person,
    SyncRun,
    utcnow,
)
from roster.queue import MailCounts, mail_counts


def _require_active(domain: Domain) -> None:
    if not domain.continuity_active:
        raise Refused(
            "inactive",
            f"Continuity Service is not active for {domain.name}: activate it first",
            domain=domain.name,
        )


def covered_people(session: Session, domain: Domain) -> list[Person]:
    """Everyone Continuity Service covers in ``domain`` now, by address."""
    return list(session.scalars(select(Person).where(covered_clause(domain)).order_by(Person.mail)))


def listed_count(session: Session, domain: Domain) -> int:
    """How many people are on the domain's "only selected users" list."""
    return (
        session.scalar(
            select(func.count())
            .select_from(CoverageEntry)
            .join(Person, lists_person())
            .where(Person.domain_id == domain.id)
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
    side_effect: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> bool:
    """Set ``changes`` on ``domain`` and audit them; False when nothing changes.

    ``side_effect`` is what else the change changed, as states before and after (the
    audit trail words them like the settings)."""
    before = {key: getattr(domain, key) for key in changes if getattr(domain, key) != changes[key]}
    if not before:
        return False
    after = {key: changes[key] for key in before}
    for key, value in after.items():
        setattr(domain, key, value)
    if side_effect is not None:
        before, after = {**before, **side_effect[0]}, {**after, **side_effect[1]}
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


def switch_emergency_password(
    session: Session, domain: Domain, enabled: bool, actor: str, client: str | None = None
) -> bool:
    """Switch the emergency password on or off for the domain (a person's own password is
    ``roster.identity.set_person_emergency_password``'s)."""
    if enabled:
        _require_active(domain)
    action = "emergency_password.enabled" if enabled else "emergency_password.disabled"
    return _change(session, domain, actor, action, {"emergency_password_enabled": enabled}, client)


def set_webmail_access(
    session: Session, domain: Domain, access: str, actor: str, client: str | None = None
) -> bool:
    """Open the standby webmail to the domain's covered people at all times
    (``WEBMAIL_ALWAYS``: they can try it before an outage) or only while the domain is
    in a continuity event (``WEBMAIL_OUTAGE``); audited. True when it changed."""
    if access not in (WEBMAIL_ALWAYS, WEBMAIL_OUTAGE):
        raise Refused("webmail_access", f"{printable(access, 20)!r} is not always or outage")
    return _change(
        session, domain, actor, "webmail.access_changed", {"webmail_access": access}, client
    )


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

    Each way can take something away, and is refused unless ``confirmed`` (the Control
    Panel's warning and "Confirm", the command line's --yes) when it does: going to "all
    users" empties the list while anyone is on it; going to "only selected users"
    uncovers everyone covered now who is not on the list.
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
    if mode == COVERAGE_SELECTED and not confirmed:
        uncovered = _count(session, and_(covered_clause(domain), ~exists().where(lists_person())))
        if uncovered:
            raise Refused(
                "confirm_selected_users",
                f"{uncovered} covered user(s) of {domain.name} are not on the list of"
                " selected users and will no longer be covered: confirm to go on",
                count=uncovered,
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
        side_effect=({"listed": listed}, {"listed": 0}) if listed else None,
    )
    return listed


# ---------------------------------------------------------------------------
# The list of selected users
# ---------------------------------------------------------------------------
def listing_refusal(typed: str, domain: Domain, found: Any) -> Refused | None:
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


def typed_address(address: str) -> str:
    """The normalised address, or ``Refused`` when it is none."""
    typed = normalise_address(address)
    if not plausible(typed):
        shown = printable(address.strip(), 320)
        raise Refused("not_an_address", f"{shown!r} is not an email address", address=shown)
    return typed


def people_by_address(session: Session, domain: Domain, typed: list[str]) -> dict[str, Any]:
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


def _find_for_listing(session: Session, domain: Domain, address: str) -> Person:
    """The live person of ``domain`` with this address or alias, or why not."""
    typed = typed_address(address)
    row: Any = people_by_address(session, domain, [typed]).get(typed)
    refused = listing_refusal(typed, domain, row)
    person = session.get(Person, row.id) if refused is None else None
    if person is None:
        raise refused or Refused("not_in_roster", f"{typed} is not in the roster", address=typed)
    return person


def listing_event(
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


def require_selected(domain: Domain) -> None:
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
    require_selected(domain)
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
    audit_many(session, [listing_event(domain, person, True, actor, client)])
    return person


def remove_person(
    session: Session, domain: Domain, address: str, actor: str, client: str | None = None
) -> Person:
    """Take someone off the domain's list of selected users: no longer covered."""
    require_selected(domain)
    person = _find_for_listing(session, domain, address)
    return _unlist(session, domain, person, actor, client)


def remove_person_by_id(
    session: Session, domain: Domain, person_id: int, actor: str, client: str | None = None
) -> Person:
    """``remove_person`` for the row of the Control Panel's table (the cross)."""
    require_selected(domain)
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
    audit_many(session, [listing_event(domain, person, False, actor, client)])
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
        .join(Person, lists_person())
        .outerjoin(EmergencyCredential, EmergencyCredential.person_id == Person.id)
        .where(Person.domain_id == domain.id)
        .order_by(*order)
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    return [ListedRow(*row) for row in rows], total


# ---------------------------------------------------------------------------
# The primary mail server
# ---------------------------------------------------------------------------
def set_primary(
    session: Session,
    domain: Domain,
    settings: PrimarySettings,
    actor: str,
    client: str | None = None,
) -> bool:
    """Store the domain's primary server settings; False when nothing changes.

    Switching the check of the primary's certificate off is a security decision: the
    audit event says so in its detail (``TLS_VERIFY_OFF``), beside the before and after."""
    verify_off = domain.primary_tls_verify and not settings.tls_verify
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
            "primary_tls_verify": settings.tls_verify,
            "recover_after": settings.recover_after,
            "failover_codes": settings.failover_codes,
            "language": settings.language,
            "verify_recipients": settings.verify_recipients,
            "sent_copies_to_primary": settings.sent_copies,
        },
        client,
        detail=TLS_VERIFY_OFF if verify_off else "",
    )


TLS_VERIFY_OFF = "the primary server's certificate is no longer checked"
"""The audit detail of switching the certificate check off (a security decision)."""


# ---------------------------------------------------------------------------
# Continuity events by hand
# ---------------------------------------------------------------------------
def _minute(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def start_refusal(session: Session, domain: Domain) -> Refused | None:
    """Why a continuity event cannot be started by hand now, or None when it can."""
    if not domain.continuity_active:
        return Refused(
            "inactive",
            f"Continuity Service is not active for {domain.name}: activate it first",
            domain=domain.name,
        )
    found = open_event(session.connection(), domain.id)
    if found is not None:
        return Refused(
            "event_open",
            f"a continuity event of {domain.name} is open since {_minute(found.started_at)}",
            domain=domain.name,
            since=_minute(found.started_at),
        )
    return None


def end_refusal(session: Session, domain: Domain) -> Refused | None:
    """Why the domain's continuity event cannot be ended by hand now (none is open, or
    its mail is being handed back already), or None when it can."""
    found = open_event(session.connection(), domain.id)
    if found is None:
        return Refused(
            "no_event",
            f"{domain.name} is in no continuity event: there is nothing to end",
            domain=domain.name,
        )
    if found.recovery_started_at is not None:
        return Refused(
            "event_recovering",
            f"the continuity event of {domain.name} is handing its mail back already"
            f" (since {_minute(found.recovery_started_at)})",
            domain=domain.name,
            since=_minute(found.recovery_started_at),
        )
    return None


def start_event_by_hand(
    session: Session,
    domain: Domain,
    actor: str,
    reason: str = "",
    client: str | None = None,
) -> int:
    """Start a continuity event for ``domain`` as an admin asks: from now on its mail is
    held (nothing goes to the primary) and kept in the standby store; the event's id.

    Refused when the service is not active (nothing would be kept) or an event is open.
    """
    refused = start_refusal(session, domain)
    if refused is not None:
        raise refused
    connection = session.connection()
    cause = printable(reason.strip(), 1000)
    started = start_event(connection, domain.id, reason=cause, actor=actor)
    audit(
        session,
        actor,
        "continuity_event.started",
        domain_id=domain.id,
        after={"event": started.event_id, **({"reason": cause} if cause else {})},
        client=client,
    )
    return started.event_id


def end_event_by_hand(
    session: Session, domain: Domain, actor: str, client: str | None = None
) -> int:
    """End the domain's open continuity event as an admin asks: the held mail is handed
    back to the primary, oldest first, and the gateway's monitor ends the event when
    none is left; the event's id. Refused when no event is open or it is handing back."""
    refused = end_refusal(session, domain)
    if refused is not None:
        raise refused
    connection = session.connection()
    found = open_event(connection, domain.id)
    begin_recovery(connection, found.id, actor=actor)
    audit(
        session,
        actor,
        "continuity_event.ended",
        domain_id=domain.id,
        before={"event": found.id},
        client=client,
    )
    return int(found.id)


@dataclass(frozen=True)
class EventRow:
    """One continuity event as the Control Panel and ``continuity event list`` show it."""

    id: int
    started_at: datetime
    ended_at: datetime | None
    cause: str
    started_by: str
    ended_by: str | None
    recovery_started_at: datetime | None
    held: int
    handed_back: int

    def duration(self, now: datetime | None = None) -> timedelta:
        """How long the event lasted (so far, while it is open)."""
        return (self.ended_at or now or utcnow()) - self.started_at

    @property
    def state(self) -> str:
        """ "open" (mail held), "recovering" (handed back now) or "ended"."""
        if self.ended_at is not None:
            return "ended"
        return "open" if self.recovery_started_at is None else "recovering"


def events_page(
    session: Session, domain: Domain, *, page: int = 1, per_page: int = 50
) -> tuple[list[EventRow], int]:
    """One page of the domain's continuity events, newest first, and how many in all."""
    e = ContinuityEvent
    total = session.scalar(select(func.count(e.id)).where(e.domain_id == domain.id)) or 0
    rows = session.execute(
        select(
            e.id,
            e.started_at,
            e.ended_at,
            e.reason,
            e.started_by,
            # Set when an admin began the end: shown once the event has ended.
            case((e.ended_at.is_not(None), e.ended_by), else_=None),
            e.recovery_started_at,
            e.held,
            e.handed_back,
        )
        .where(e.domain_id == domain.id)
        .order_by(e.started_at.desc(), e.id.desc())
        .limit(per_page)
        .offset((max(1, page) - 1) * per_page)
    ).all()
    return [EventRow(*row) for row in rows], total


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
    primary_check: PrimaryCheck | None
    recovering_since: datetime | None = None
    mail: MailCounts | None = None
    mail_since: datetime | None = None

    @property
    def continuity_state(self) -> str:
        """What is known of the primary: "outage" (a continuity event is open and mail is
        held), "recovering" (the event's mail is handed back now), "normal" (its last
        check succeeded), "failing" (its last check failed) or "not_checked"."""
        if self.outage_since is not None:
            return "outage" if self.recovering_since is None else "recovering"
        if self.primary_check is None:
            return "not_checked"
        return "normal" if self.primary_check.ok else "failing"


@dataclass(frozen=True)
class PrimaryCheck:
    """The last check of a domain's primary server by the gateway's monitor."""

    at: datetime
    ok: bool


def last_primary_check(domain: Domain) -> PrimaryCheck | None:
    """The last check of ``domain``'s primary server, or None when none is known.

    The gateway's monitor checks the primary and records the outcome on the domain
    (``last_check_at``, ``last_check_ok``); until it has, no check is known (a "Test
    connection" in the Control Panel tries settings that may not be saved, so it is no
    check of the primary) and the overview says "not checked yet", never "normal".
    """
    if domain.last_check_at is None or domain.last_check_ok is None:
        return None
    return PrimaryCheck(domain.last_check_at, domain.last_check_ok)


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
        return _count(session, condition)

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
    outage = session.execute(
        select(ContinuityEvent.started_at, ContinuityEvent.recovery_started_at)
        .where(ContinuityEvent.domain_id == domain.id, ContinuityEvent.ended_at.is_(None))
        .order_by(ContinuityEvent.started_at)
        .limit(1)
    ).first()
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    return Overview(
        settings=domain_state(domain),
        people=people,
        people_disabled=disabled,
        covered=covered,
        covered_without_emergency_password=missing,
        listed=listed_count(session, domain),
        last_sync=last_sync,
        outage_since=outage.started_at if outage else None,
        primary_check=last_primary_check(domain),
        recovering_since=outage.recovery_started_at if outage else None,
        mail=mail_counts(session, domain.id, today),
        mail_since=today,
    )


def _count(session: Session, condition: ColumnElement[bool]) -> int:
    """How many people meet ``condition``."""
    return session.scalar(select(func.count()).select_from(Person).where(condition)) or 0


def domains_visible(session: Session, domain_ids: Iterable[int] | None) -> list[Domain]:
    """The domains an admin sees in the scope selector (None: a global admin, all)."""
    query = select(Domain).order_by(Domain.name)
    if domain_ids is not None:
        ids = list(domain_ids)
        query = query.where(Domain.id.in_(ids) if ids else false())
    return list(session.scalars(query))
