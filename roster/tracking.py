"""Email Live Tracking: what happened to a domain's mail, read from the queue's own
records (messages, recipients, standby copies, continuity events), never from logs.

The list is newest first and paged by key (received_at, queue_id): a page deep in the
past costs what the first one does, where OFFSET would read every row before it. The
status a person sees comes from one rule, ``shown_status``; the list's status filter is
built from the same table, so the two cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select, true
from sqlalchemy.orm import Session

from roster.identity import find_person
from roster.models import (
    BOUNCED,
    COPY_DONE,
    DEFERRED,
    DELIVERED,
    QUEUED,
    ContinuityEvent,
    MailMessage,
    MailRecipient,
    StandbyCopy,
    utcnow,
)

# What a person sees (the manual's words; the portal translates them).
SHOWN_DELIVERED = "delivered"
SHOWN_DEFERRED = "deferred"
SHOWN_BOUNCED = "bounced"
SHOWN_REFUSED = "refused"  # refused at RCPT: nothing is stored today, kept for later
SHOWN_QUEUED = "queued"
SHOWN_STATUSES = (SHOWN_DELIVERED, SHOWN_DEFERRED, SHOWN_BOUNCED, SHOWN_REFUSED, SHOWN_QUEUED)

# (queue status, via Continuity Service) -> the status shown. Mail that went through a
# continuity event stays "Deferred" ("Aplazado") after the hand-back, as the manual says;
# mail held now is deferred too. A bounce is a bounce either way.
_SHOWN: dict[tuple[str, bool], str] = {
    (QUEUED, False): SHOWN_QUEUED,
    (QUEUED, True): SHOWN_DEFERRED,
    (DEFERRED, False): SHOWN_DEFERRED,
    (DEFERRED, True): SHOWN_DEFERRED,
    (DELIVERED, False): SHOWN_DELIVERED,
    (DELIVERED, True): SHOWN_DEFERRED,
    (BOUNCED, False): SHOWN_BOUNCED,
    (BOUNCED, True): SHOWN_BOUNCED,
}

PAGE = 50


def shown_status(status: str, via_continuity: bool) -> str:
    """The status Email Live Tracking shows for a recipient in this queue state."""
    return _SHOWN.get((status, bool(via_continuity)), SHOWN_QUEUED)


def shown_status_clause(shown: str) -> ColumnElement[bool]:
    """The recipients ``shown_status`` gives ``shown``, as SQL (from the same table)."""
    r = MailRecipient
    pairs = [pair for pair, each in _SHOWN.items() if each == shown]
    if not pairs:
        return false()
    # The queue statuses first, so that the (domain_id, status) index finds the rows.
    return and_(
        r.status.in_(sorted({status for status, _via in pairs})),
        or_(*(and_(r.status == status, r.via_continuity.is_(via)) for status, via in pairs)),
    )


# ---------------------------------------------------------------------------
# The list: filters and the key
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    """What the list is narrowed to (all optional)."""

    since: datetime | None = None
    until: datetime | None = None
    sender: str = ""
    recipient: str = ""
    status: str = ""  # one of SHOWN_STATUSES
    continuity: bool = False  # only recipients via Continuity Service


@dataclass(frozen=True)
class Key:
    """A message's place in the list: (received_at, queue_id)."""

    received_at: datetime
    queue_id: str

    def text(self) -> str:
        """The key as a URL or command line carries it: microseconds, a dash, the id."""
        micros = round(self.received_at.timestamp() * 1_000_000)
        return f"{micros}-{self.queue_id}"


_KEY = re.compile(r"^(\d{1,17})-([0-9A-Z]{1,32})$")
_QUEUE_ID = re.compile(r"^[0-9A-Z]{1,32}$")


def parse_key(value: str) -> Key | None:
    """A key given back by a link (``Key.text``); None when it is not one."""
    found = _KEY.match(value.strip())
    if not found:
        return None
    try:
        when = datetime.fromtimestamp(int(found.group(1)) / 1_000_000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    micros = int(found.group(1)) % 1_000_000
    return Key(when.replace(microsecond=micros), found.group(2))


def clean_queue_id(value: str) -> str | None:
    """A queue id as typed (any case, spaces around), or None when it cannot be one."""
    cleaned = value.strip().upper()
    return cleaned if _QUEUE_ID.match(cleaned) else None


_RELATIVE = re.compile(r"^(\d{1,5})\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, *, now: datetime | None = None) -> datetime | None:
    """A moment typed by a person, in UTC: ``2026-11-30``, ``2026-11-30 14:05``,
    ``2026-11-30T14:05:09`` (a browser's datetime-local), an offset, or ``2h``/``3d``
    ago; None when it is none of these."""
    text = value.strip()
    relative = _RELATIVE.match(text.lower())
    if relative:
        amount = int(relative.group(1))
        return (now or utcnow()) - timedelta(**{_UNITS[relative.group(2)]: amount})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if not 2000 <= parsed.year <= 9999:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _recipient_matches(domain_id: int | None, filters: Filters) -> list[ColumnElement[bool]]:
    r = MailRecipient
    conditions: list[ColumnElement[bool]] = [r.queue_id == MailMessage.queue_id]
    if domain_id is not None:
        conditions.append(r.domain_id == domain_id)
    if filters.recipient:
        conditions.append(r.address == filters.recipient.strip().lower())
    if filters.status:
        conditions.append(shown_status_clause(filters.status))
    if filters.continuity:
        conditions.append(r.via_continuity.is_(True))
    return conditions


@dataclass(frozen=True)
class RecipientLine:
    """One recipient of a listed message, as the list shows it."""

    address: str
    shown: str
    via_continuity: bool


@dataclass(frozen=True)
class ListedMessage:
    """One message of the list."""

    queue_id: str
    received_at: datetime
    sender: str
    size: int
    message_id: str
    recipients: list[RecipientLine] = field(default_factory=list)

    @property
    def key(self) -> Key:
        """This message's place in the list."""
        return Key(self.received_at, self.queue_id)


@dataclass(frozen=True)
class Page:
    """One page of the list, newest first, with the keys of the pages around it."""

    messages: list[ListedMessage]
    older: Key | None  # the last message here, when there are older ones
    newer: Key | None  # the first message here, when there are newer ones


def list_messages(
    session: Session,
    domain_id: int | None,
    filters: Filters = Filters(),
    *,
    older_than: Key | None = None,
    newer_than: Key | None = None,
    limit: int = PAGE,
) -> Page:
    """A page of the domain's messages (every domain's with None), newest first: the
    ones older than ``older_than``, or newer than ``newer_than``, or the newest."""
    m = MailMessage
    query = select(m.queue_id, m.received_at, m.sender, m.size, m.message_id).where(
        exists().where(*_recipient_matches(domain_id, filters))
    )
    if filters.since is not None:
        query = query.where(m.received_at >= filters.since)
    if filters.until is not None:
        query = query.where(m.received_at < filters.until)
    if filters.sender:
        query = query.where(m.sender.in_(_sender_spellings(filters.sender)))
    few = _few_candidates(session, domain_id, filters)
    if few is not None:
        query = query.where(m.queue_id.in_(sorted(few)))
    elif filters.continuity:
        last = _last_event_end(session, domain_id)
        if last is not None:
            query = query.where(m.received_at <= last)
    backwards = newer_than is not None and older_than is None
    if older_than is not None:
        query = query.where(_before(older_than))
    elif newer_than is not None:
        query = query.where(_after(newer_than))
    if backwards:
        query = query.order_by(m.received_at, m.queue_id)
    else:
        query = query.order_by(m.received_at.desc(), m.queue_id.desc())
    rows = list(session.execute(query.limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    messages = [
        ListedMessage(r.queue_id, r.received_at, r.sender, r.size, r.message_id) for r in rows
    ]
    _attach_recipients(session, messages, domain_id)
    if not messages:
        # Past the end (the rows it pointed at were removed since): lead back from the key.
        return Page([], newer_than if backwards else None, older_than)
    # Forwards: more rows means older ones; coming from a key, there are newer ones.
    older = messages[-1].key if (backwards or more) else None
    newer = messages[0].key if (more if backwards else older_than is not None) else None
    return Page(messages, older, newer)


FEW = 2000
"""A filter that singles out at most this many messages is read through its own index."""


def _sender_spellings(typed: str) -> list[str]:
    """The sender as typed, and in lower case (how most mail spells it)."""
    cleaned = typed.strip()
    return sorted({cleaned, cleaned.lower()})


def _few_candidates(session: Session, domain_id: int | None, filters: Filters) -> set[str] | None:
    """The queue ids a filter singles out, when they are few; None when no filter does.

    Read along the time index, a page with a rare filter (one recipient, a bounce in a
    small domain) would walk back through the whole table to find 50; read through the
    filter's own index and sorted, it costs what the few rows cost. Which way is right
    depends on the value, not the column, so each filter's index is asked for up to
    FEW + 1 rows first.
    """
    r, m = MailRecipient, MailMessage
    found: set[str] | None = None
    probes = []
    narrowing = [
        *([r.address == filters.recipient.strip().lower()] if filters.recipient else []),
        *([shown_status_clause(filters.status)] if filters.status else []),
        *([r.via_continuity == true()] if filters.continuity else []),
    ]
    if narrowing:
        if domain_id is not None:
            narrowing.insert(0, r.domain_id == domain_id)
        probes.append(select(r.queue_id).where(*narrowing))
    if filters.sender:
        probes.append(select(m.queue_id).where(m.sender.in_(_sender_spellings(filters.sender))))
    for probe in probes:
        rows = list(session.scalars(probe.limit(FEW + 1)))
        if len(rows) <= FEW:
            found = set(rows) if found is None else found & set(rows)
    return found


def _last_event_end(session: Session, domain_id: int | None) -> datetime | None:
    """When the last continuity event ended (None while one is open, or if none was):
    mail via Continuity Service was received before that, so the newer mail need not
    be read to find it."""
    e = ContinuityEvent
    scope = [e.domain_id == domain_id] if domain_id is not None else []
    still_open = session.scalar(select(e.id).where(*scope, e.ended_at.is_(None)).limit(1))
    if still_open is not None:
        return None
    return session.scalar(select(func.max(e.ended_at)).where(*scope))


def _before(key: Key) -> ColumnElement[bool]:
    """Rows strictly older than ``key``; written so that an index on (received_at,
    queue_id) is used as a range on both databases."""
    m = MailMessage
    return and_(
        m.received_at <= key.received_at,
        or_(m.received_at < key.received_at, m.queue_id < key.queue_id),
    )


def _after(key: Key) -> ColumnElement[bool]:
    m = MailMessage
    return and_(
        m.received_at >= key.received_at,
        or_(m.received_at > key.received_at, m.queue_id > key.queue_id),
    )


def _attach_recipients(
    session: Session, messages: Sequence[ListedMessage], domain_id: int | None
) -> None:
    if not messages:
        return
    r = MailRecipient
    query = (
        select(r.queue_id, r.address, r.status, r.via_continuity)
        .where(r.queue_id.in_([each.queue_id for each in messages]))
        .order_by(r.queue_id, r.id)
    )
    if domain_id is not None:
        query = query.where(r.domain_id == domain_id)
    found: dict[str, list[RecipientLine]] = {}
    for row in session.execute(query):
        found.setdefault(row.queue_id, []).append(
            RecipientLine(
                row.address, shown_status(row.status, row.via_continuity), row.via_continuity
            )
        )
    for each in messages:
        each.recipients.extend(found.get(each.queue_id, []))


# ---------------------------------------------------------------------------
# One message: each recipient, the standby copies, the timeline
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RecipientState:
    """One recipient of a message in full."""

    address: str
    status: str  # the queue's own
    shown: str  # what a person sees (shown_status)
    attempts: int
    last_attempt_at: datetime | None
    last_reply: str
    next_attempt_at: datetime | None  # while it waits
    delivered_at: datetime | None  # when it reached the primary
    via_continuity: bool
    handed_back_at: datetime | None  # via Continuity and delivered: the hand-back
    standby_copied_at: datetime | None  # when it reached the standby store
    standby_status: str | None  # pending, copied, failed; None: not covered


@dataclass(frozen=True)
class Step:
    """One moment of a message's timeline."""

    at: datetime
    kind: str  # received, held, attempt, delivered, handed_back, bounced, copied
    address: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Tracked:
    """A message with its recipients (of one domain, or all) and its timeline."""

    queue_id: str
    received_at: datetime
    sender: str
    size: int
    message_id: str
    client_address: str
    client_name: str
    helo: str
    origin: str
    recipients: list[RecipientState]
    timeline: list[Step]
    events: list[ContinuityEvent]  # the continuity events it went through


def message_tracking(
    session: Session, queue_id: str, domain_id: int | None = None
) -> Tracked | None:
    """A message as Email Live Tracking shows it; only its recipients in ``domain_id``
    when given (None when it has none there: another domain's mail is not found)."""
    message = session.get(MailMessage, queue_id)
    if message is None:
        return None
    r = MailRecipient
    query = select(r).where(r.queue_id == queue_id).order_by(r.id)
    if domain_id is not None:
        query = query.where(r.domain_id == domain_id)
    rows = list(session.scalars(query))
    if not rows:
        return None
    copies_query = select(StandbyCopy).where(StandbyCopy.queue_id == queue_id)
    if domain_id is not None:
        copies_query = copies_query.where(StandbyCopy.domain_id == domain_id)
    copies = list(session.scalars(copies_query.order_by(StandbyCopy.id)))
    events = _events_met(session, message.received_at, rows)
    copy_of = _copies_by_address(session, rows, copies)
    recipients = []
    for row in rows:
        copy = copy_of.get(row.address)
        handed_back = row.delivered_at if row.via_continuity and row.status == DELIVERED else None
        recipients.append(
            RecipientState(
                address=row.address,
                status=row.status,
                shown=shown_status(row.status, row.via_continuity),
                attempts=row.attempts,
                last_attempt_at=row.last_attempt_at,
                last_reply=row.last_reply,
                next_attempt_at=row.next_attempt_at if row.status in (QUEUED, DEFERRED) else None,
                delivered_at=row.delivered_at,
                via_continuity=row.via_continuity,
                handed_back_at=handed_back,
                standby_copied_at=copy.copied_at if copy is not None else None,
                standby_status=copy.status if copy is not None else None,
            )
        )
    return Tracked(
        queue_id=message.queue_id,
        received_at=message.received_at,
        sender=message.sender,
        size=message.size,
        message_id=message.message_id,
        client_address=message.client_address,
        client_name=message.client_name,
        helo=message.helo,
        origin=message.origin,
        recipients=recipients,
        timeline=_timeline(message.received_at, rows, copies, events),
        events=events,
    )


def _copies_by_address(
    session: Session, rows: Sequence[MailRecipient], copies: Sequence[StandbyCopy]
) -> dict[str, StandbyCopy]:
    """Each recipient address's standby copy: the copy is per person (an alias and the
    person's own address share one), so it is matched through the person."""
    by_mailbox = {copy.mailbox: copy for copy in copies}
    found: dict[str, StandbyCopy] = {}
    for row in rows:
        if row.address in by_mailbox:
            found[row.address] = by_mailbox[row.address]
            continue
        person = find_person(session, row.address) if by_mailbox else None
        if person is not None and person.mail in by_mailbox:
            found[row.address] = by_mailbox[person.mail]
    return found


def _events_met(
    session: Session, received_at: datetime, rows: Sequence[MailRecipient]
) -> list[ContinuityEvent]:
    """The continuity events that held some of these recipients: of their domain, begun
    before the recipient reached the primary (or now) and not ended before it arrived."""
    found: dict[int, ContinuityEvent] = {}
    for row in rows:
        if not row.via_continuity or row.domain_id is None:
            continue
        e = ContinuityEvent
        until = row.delivered_at or row.last_attempt_at or utcnow()
        for event in session.scalars(
            select(e).where(
                e.domain_id == row.domain_id,
                e.started_at <= until,
                or_(e.ended_at.is_(None), e.ended_at >= received_at),
            )
        ):
            found[event.id] = event
    return sorted(found.values(), key=lambda event: event.started_at)


def _timeline(
    received_at: datetime,
    rows: Sequence[MailRecipient],
    copies: Sequence[StandbyCopy],
    events: Sequence[ContinuityEvent],
) -> list[Step]:
    """Received, held by an event, the last attempt known of each recipient, delivered
    (or handed back), bounced, copied to the standby store; oldest first."""
    steps = [Step(received_at, "received")]
    for event in events:
        steps.append(Step(max(received_at, event.started_at), "held", detail=event.reason))
    for row in rows:
        delivered = row.status == DELIVERED and row.delivered_at is not None
        last_is_delivery = delivered and row.last_attempt_at == row.delivered_at
        if row.last_attempt_at is not None and not last_is_delivery:
            steps.append(Step(row.last_attempt_at, "attempt", row.address, row.last_reply))
        if delivered:
            assert row.delivered_at is not None  # noqa: S101 - delivered says so
            kind = "handed_back" if row.via_continuity else "delivered"
            steps.append(Step(row.delivered_at, kind, row.address, row.last_reply))
        elif row.status == BOUNCED:
            at = row.last_attempt_at or received_at
            steps.append(Step(at, "bounced", row.address, row.last_reply))
    for copy in copies:
        if copy.status == COPY_DONE and copy.copied_at is not None:
            steps.append(Step(copy.copied_at, "copied", copy.mailbox))
    order = {"received": 0, "held": 1, "copied": 2, "attempt": 3}
    return sorted(steps, key=lambda step: (step.at, order.get(step.kind, 4)))


# ---------------------------------------------------------------------------
# The domain's continuity events
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EventLine:
    """A continuity event as Email Live Tracking lists it."""

    id: int
    started_at: datetime
    ended_at: datetime | None
    reason: str
    started_by: str
    ended_by: str | None
    recovery_started_at: datetime | None
    held: int
    handed_back: int
    duration: timedelta  # so far, for an open event

    @property
    def open(self) -> bool:
        """True while the event has not ended."""
        return self.ended_at is None


def continuity_events(
    session: Session, domain_id: int, *, limit: int = 20, now: datetime | None = None
) -> list[EventLine]:
    """The domain's continuity events, newest first."""
    now = now or utcnow()
    e = ContinuityEvent
    rows = session.scalars(
        select(e)
        .where(e.domain_id == domain_id)
        .order_by(e.started_at.desc(), e.id.desc())
        .limit(limit)
    )
    return [
        EventLine(
            id=row.id,
            started_at=row.started_at,
            ended_at=row.ended_at,
            reason=row.reason,
            started_by=row.started_by,
            ended_by=row.ended_by if row.ended_at else None,
            recovery_started_at=row.recovery_started_at,
            held=row.held,
            handed_back=row.handed_back,
            duration=(row.ended_at or now) - row.started_at,
        )
        for row in rows
    ]


def as_json(value: Any) -> Any:
    """Times as ISO 8601 (seconds), for the command line's --json."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    return value
