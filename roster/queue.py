"""The mail queue's rules: storing what the gateway accepted, claiming work across
gateways, recording outcomes, and the queries an operator and the Control Panel read.

The queue lives in the roster database, bodies included, so that on PostgreSQL any
gateway on any host can finish another's messages. A claim is a lease on a row
(``claimed_by``, ``claimed_until``): a gateway that dies leaves leases that lapse, and
another gateway takes the rows then.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from roster.continuity import held_domains_clause, held_now
from roster.identity import covered, find_person
from roster.models import (
    BOUNCED,
    COPY_DONE,
    COPY_FAILED,
    COPY_PENDING,
    DEFERRED,
    DELIVERED,
    PENDING_STATES,
    QUEUED,
    ROUTE_PRIMARY,
    Domain,
    MailMessage,
    MailRecipient,
    StandbyCopy,
    UTCDateTime,
    utcnow,
)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@contextmanager
def writing(engine: Engine, *, durable: bool = True) -> Iterator[Connection]:
    """A write transaction on a plain connection, committed at the end. On SQLite it takes
    the write lock at BEGIN (IMMEDIATE): a transaction that read first and then writes
    would otherwise fail at once when another writer committed in between.

    ``durable=False`` is for writes whose loss in a crash of the database server only
    repeats work (a standby copy's claim or outcome: the copy is made again): on
    PostgreSQL the commit then does not wait for its WAL to reach the disk
    (``synchronous_commit = off`` for this transaction; a crash loses at most the last
    fraction of a second of such commits, never anything acknowledged with a 250)."""
    with (
        engine.connect().execution_options(begin_immediate=True) as connection,
        connection.begin(),
    ):
        if not durable and connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        yield connection


def new_queue_id(now: float | None = None) -> str:
    """A 20-character id that sorts by time: 48 bits of milliseconds, 52 random bits."""
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 52) | secrets.randbits(52)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(95, -1, -5))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def queue_id_floor(moment: datetime) -> str:
    """The smallest queue id ``new_queue_id`` can make at ``moment`` (its millisecond,
    random bits all zero): every id made before it sorts below, every id made at or
    after it not below; so a span of time is a range of ids. Exact integer arithmetic
    (no float timestamp to lose a millisecond); a naive ``moment`` is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    millis = (moment - _EPOCH) // timedelta(milliseconds=1)
    value = millis << 52
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(95, -1, -5))


# ---------------------------------------------------------------------------
# Who a recipient is
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipient:
    """What the roster says of a RCPT address in a domain it holds."""

    address: str
    domain_id: int
    known: bool  # a live person or alias of the roster
    person_id: int | None = None
    mailbox: str | None = None  # the person's roster address, when covered


def domain_named(session: Session, name: str) -> Domain | None:
    """The roster's domain of this name, or None."""
    return session.scalar(select(Domain).where(Domain.name == name))


def resolve_recipient(session: Session, domain: Domain, address: str) -> Recipient:
    """Who ``address`` (already normalised, in ``domain``) is, and whether their mail is
    copied to the standby store: an alias maps to its person; a person of another domain
    reached through an alias here is still that person, but their mail to this domain is
    archived only when this domain has the service on too (a domain that never switched
    it on has nothing of its mail in the standby store)."""
    person = find_person(session, address)
    if person is None:
        return Recipient(address, domain.id, known=False)
    mailbox = person.mail if domain.continuity_active and covered(session, person) else None
    return Recipient(address, domain.id, known=True, person_id=person.id, mailbox=mailbox)


# ---------------------------------------------------------------------------
# Storing accepted messages (one transaction for many: the group commit)
# ---------------------------------------------------------------------------
@dataclass
class Incoming:
    """A message the receiver is about to acknowledge."""

    queue_id: str
    sender: str
    body: bytes
    recipients: Sequence[Recipient]
    message_id: str = ""
    client_address: str = ""
    client_name: str = ""
    helo: str = ""
    protocol: str = "ESMTP"
    origin: str = "smtp"
    route: str = ROUTE_PRIMARY
    received_at: datetime = field(default_factory=utcnow)


# A recipient stored while its domain's mail is held is received via Continuity: the
# same statement decides it, once per row, as it inserts (marking the recipients with an
# UPDATE after the inserts cost a fifth of a group commit's time on PostgreSQL). Built
# once: constructing it anew for every commit cost as much again.
_INSERT_RECIPIENT = (
    insert(MailRecipient)
    .values(
        queue_id=bindparam("b_queue_id"),
        domain_id=bindparam("b_domain_id", type_=Integer),
        address=bindparam("b_address"),
        route=bindparam("b_route"),
        status=QUEUED,
        attempts=0,
        next_attempt_at=bindparam("b_next", type_=UTCDateTime),
        last_reply="",
        via_continuity=held_now(bindparam("b_domain_id", type_=Integer)),
    )
    .inline()
)


@contextmanager
def _together(connection: Connection) -> Iterator[None]:
    """On PostgreSQL the statements inside go to the server one after the other without
    waiting, and their results are read once at the end (psycopg's pipeline mode: a
    group commit's three inserts took three round trips, and a quarter more time);
    elsewhere each runs as it comes. An error in any of them is raised at the end."""
    driver = connection.connection.driver_connection
    if driver is None or connection.dialect.name != "postgresql" or not _pipelines_work():
        yield
        return
    with driver.pipeline():
        yield


@functools.cache
def _pipelines_work() -> bool:
    """Whether psycopg can pipeline here (its libpq must be 14 or later)."""
    import psycopg  # noqa: PLC0415 - PostgreSQL's driver, only where it is used

    return bool(psycopg.Pipeline.is_supported())


def store(connection: Connection, messages: Sequence[Incoming]) -> None:
    """Insert ``messages`` with their recipients and standby copies (caller commits)."""
    if not messages:
        return
    with _together(connection):
        _insert(connection, messages)


def _insert(connection: Connection, messages: Sequence[Incoming]) -> None:
    # inline(): no RETURNING of the new rows' ids, which a pipeline could not read back.
    connection.execute(
        insert(MailMessage).inline(),
        [
            {
                "queue_id": m.queue_id,
                "received_at": m.received_at,
                "sender": m.sender,
                "size": len(m.body),
                "message_id": m.message_id[:255],
                "client_address": m.client_address[:64],
                "client_name": m.client_name[:255],
                "helo": m.helo[:255],
                "protocol": m.protocol[:16],
                "origin": m.origin,
                "body": m.body,
            }
            for m in messages
        ],
    )
    recipients = [
        {
            "b_queue_id": m.queue_id,
            "b_domain_id": r.domain_id if m.route == ROUTE_PRIMARY else None,
            "b_address": r.address,
            "b_route": m.route,
            "b_next": m.received_at,
        }
        for m in messages
        for r in m.recipients
    ]
    if recipients:
        connection.execute(_INSERT_RECIPIENT, recipients)
    copies = []
    for m in messages:
        seen: set[str] = set()
        for r in m.recipients:
            if r.mailbox and r.mailbox not in seen:
                seen.add(r.mailbox)
                copies.append(
                    {
                        "queue_id": m.queue_id,
                        "domain_id": r.domain_id,
                        "person_id": r.person_id,
                        "mailbox": r.mailbox,
                        "status": COPY_PENDING,
                        "attempts": 0,
                        "next_attempt_at": m.received_at,
                        "last_reply": "",
                    }
                )
    if copies:
        connection.execute(insert(StandbyCopy).inline(), copies)


# ---------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------
def worker_name() -> str:
    """This process's name in claims: host, pid and a random tag (pids are reused)."""
    return f"{os.uname().nodename[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


def _claimable(table: Any, now: datetime) -> Any:
    return or_(table.claimed_until.is_(None), table.claimed_until < now)


def deliveries_due(connection: Connection, now: datetime | None = None) -> bool:
    """True when some recipient is due and unclaimed: a read that takes no write lock, so
    idle gateways do not queue on SQLite's one writer just to find nothing."""
    now = now or utcnow()
    table = MailRecipient
    found = connection.scalar(
        select(table.id)
        .where(
            table.status.in_(PENDING_STATES),
            table.next_attempt_at <= now,
            _claimable(table, now),
            _not_held(table),
        )
        .limit(1)
    )
    return found is not None


def _not_held(table: type[MailRecipient]) -> ColumnElement[bool]:
    """Nothing goes to the primary of a domain in a continuity event (until recovery)."""
    return or_(table.domain_id.is_(None), table.domain_id.not_in(held_domains_clause()))


def copies_due(connection: Connection, now: datetime | None = None) -> bool:
    """True when some standby copy is due and unclaimed (a read, no write lock)."""
    now = now or utcnow()
    table = StandbyCopy
    found = connection.scalar(
        select(table.id)
        .where(table.status == COPY_PENDING, table.next_attempt_at <= now, _claimable(table, now))
        .limit(1)
    )
    return found is not None


@dataclass
class Delivery:
    """Recipients of one message on one route (and domain), claimed for one attempt."""

    queue_id: str
    sender: str
    route: str
    domain_id: int | None
    recipients: list[tuple[int, str]]  # (recipient row id, address)
    attempts: int
    received_at: datetime
    client_address: str
    client_name: str
    helo: str
    protocol: str
    via_continuity: bool = False
    body: bytes = b""


def claim_deliveries(
    connection: Connection,
    worker: str,
    *,
    limit: int,
    lease: timedelta,
    domain_ids: Iterable[int] | None = None,
    now: datetime | None = None,
) -> list[Delivery]:
    """Take up to ``limit`` due recipient rows for ``worker`` (caller commits), oldest
    first, grouped by message and route; rows claimed by a live gateway are skipped."""
    now = now or utcnow()
    table = MailRecipient
    query = (
        select(table.id)
        .where(
            table.status.in_(PENDING_STATES),
            table.next_attempt_at <= now,
            _claimable(table, now),
        )
        .order_by(table.next_attempt_at, table.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if domain_ids is not None:
        query = query.where(or_(table.domain_id.in_(list(domain_ids)), table.domain_id.is_(None)))
    query = query.where(_not_held(table))
    ids = list(connection.scalars(query))
    if not ids:
        return []
    connection.execute(
        update(table)
        .where(table.id.in_(ids), _claimable(table, now))
        .values(claimed_by=worker, claimed_until=now + lease)
    )
    rows = connection.execute(
        select(
            table.id,
            table.queue_id,
            table.address,
            table.route,
            table.domain_id,
            table.attempts,
            table.via_continuity,
            MailMessage.sender,
            MailMessage.received_at,
            MailMessage.client_address,
            MailMessage.client_name,
            MailMessage.helo,
            MailMessage.protocol,
        )
        .join(MailMessage, MailMessage.queue_id == table.queue_id)
        .where(table.id.in_(ids), table.claimed_by == worker)
        .order_by(MailMessage.received_at, table.id)
    ).all()
    grouped: dict[tuple[str, str, int | None], Delivery] = {}
    for row in rows:
        key = (row.queue_id, row.route, row.domain_id)
        found = grouped.get(key)
        if found is None:
            found = grouped[key] = Delivery(
                queue_id=row.queue_id,
                sender=row.sender,
                route=row.route,
                domain_id=row.domain_id,
                recipients=[],
                attempts=row.attempts,
                received_at=row.received_at,
                client_address=row.client_address,
                client_name=row.client_name,
                helo=row.helo,
                protocol=row.protocol,
            )
        found.recipients.append((row.id, row.address))
        found.attempts = max(found.attempts, row.attempts)
        found.via_continuity = found.via_continuity or row.via_continuity
    # Bodies are read one at a time, just before each is sent (message_body): a batch of
    # a hundred large messages would otherwise sit in memory at once.
    return list(grouped.values())


def message_body(connection: Connection, queue_id: str) -> bytes:
    """A queued message's bytes."""
    return (
        connection.scalar(select(MailMessage.body).where(MailMessage.queue_id == queue_id)) or b""
    )


@dataclass(frozen=True)
class Outcome:
    """What happened to one recipient row in one attempt."""

    recipient_id: int
    status: str  # DELIVERED, DEFERRED or BOUNCED
    reply: str
    next_attempt_at: datetime | None = None


def record_outcomes(
    connection: Connection, worker: str, outcomes: Sequence[Outcome], now: datetime | None = None
) -> None:
    """Write attempt outcomes and release the claims (caller commits)."""
    now = now or utcnow()
    for outcome in outcomes:
        values: dict[str, Any] = {
            "status": outcome.status,
            "last_reply": outcome.reply[:1000],
            "last_attempt_at": now,
            "attempts": MailRecipient.attempts + 1,
            "claimed_by": None,
            "claimed_until": None,
        }
        if outcome.status == DELIVERED:
            values["delivered_at"] = now
        if outcome.next_attempt_at is not None:
            values["next_attempt_at"] = outcome.next_attempt_at
        # Only a row still claimed by this worker: one whose claim lapsed belongs to
        # whoever took it since, and this outcome must not overwrite theirs.
        connection.execute(
            update(MailRecipient)
            .where(MailRecipient.id == outcome.recipient_id, MailRecipient.claimed_by == worker)
            .values(**values)
        )


def renew_claim(
    connection: Connection,
    worker: str,
    recipient_ids: Sequence[int],
    lease: timedelta,
    now: datetime | None = None,
) -> bool:
    """Push this worker's claim on these recipients forward before it sends them; False
    when any of them is no longer its own (the claim lapsed and another took it), or
    when its domain's mail is held now (an event started while the batch was on its way:
    nothing more goes to that primary). What is still its own is then given back
    unsent, for the hand-back to take."""
    now = now or utcnow()
    renewed = connection.execute(
        update(MailRecipient)
        .where(
            MailRecipient.id.in_(list(recipient_ids)),
            MailRecipient.claimed_by == worker,
            _not_held(MailRecipient),
        )
        .values(claimed_until=now + lease)
    )
    if int(getattr(renewed, "rowcount", 0) or 0) == len(recipient_ids):
        return True
    release(connection, worker, recipient_ids)
    return False


def keep_claims(
    connection: Connection,
    worker: str,
    recipient_ids: Sequence[int],
    lease: timedelta,
    now: datetime | None = None,
) -> None:
    """Push this worker's claims on these recipients forward, those it still holds (a
    message to a slow primary can take longer than a claim: RFC 5321 lets each reply
    take minutes)."""
    now = now or utcnow()
    # Rows locked by their outcome being written are skipped (it releases them): the two
    # never wait for each other, so PostgreSQL has no deadlock to break between them.
    free = (
        select(MailRecipient.id)
        .where(MailRecipient.id.in_(list(recipient_ids)), MailRecipient.claimed_by == worker)
        .with_for_update(skip_locked=True)
    )
    connection.execute(
        update(MailRecipient).where(MailRecipient.id.in_(free)).values(claimed_until=now + lease)
    )


def release(connection: Connection, worker: str, recipient_ids: Sequence[int]) -> None:
    """Give back claims without an attempt (a gateway stopping)."""
    connection.execute(
        update(MailRecipient)
        .where(MailRecipient.id.in_(list(recipient_ids)), MailRecipient.claimed_by == worker)
        .values(claimed_by=None, claimed_until=None)
    )


def mark_delay_notified(connection: Connection, recipient_ids: Sequence[int]) -> None:
    """Remember that the sender was told these recipients are delayed."""
    connection.execute(
        update(MailRecipient)
        .where(MailRecipient.id.in_(list(recipient_ids)))
        .values(delay_notified_at=utcnow())
    )


def delay_notified(connection: Connection, recipient_ids: Sequence[int]) -> set[int]:
    """Which of these recipients' senders were already told of a delay."""
    return set(
        connection.scalars(
            select(MailRecipient.id).where(
                MailRecipient.id.in_(list(recipient_ids)),
                MailRecipient.delay_notified_at.is_not(None),
            )
        )
    )


@dataclass
class Copy:
    """A standby copy claimed for one attempt."""

    id: int
    queue_id: str
    mailbox: str
    attempts: int
    sender: str = ""
    body: bytes = b""
    last_reply: str = ""


def claim_copies(
    connection: Connection,
    worker: str,
    *,
    limit: int,
    lease: timedelta,
    now: datetime | None = None,
) -> list[Copy]:
    """Take up to ``limit`` due standby copies for ``worker`` (caller commits)."""
    now = now or utcnow()
    table = StandbyCopy
    ids = list(
        connection.scalars(
            select(table.id)
            .where(
                table.status == COPY_PENDING, table.next_attempt_at <= now, _claimable(table, now)
            )
            .order_by(table.next_attempt_at, table.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not ids:
        return []
    connection.execute(
        update(table)
        .where(table.id.in_(ids), _claimable(table, now))
        .values(claimed_by=worker, claimed_until=now + lease)
    )
    rows = connection.execute(
        select(
            table.id,
            table.queue_id,
            table.mailbox,
            table.attempts,
            table.last_reply,
            MailMessage.sender,
            MailMessage.body,
        )
        .join(MailMessage, MailMessage.queue_id == table.queue_id)
        .where(table.id.in_(ids), table.claimed_by == worker)
        .order_by(table.id)
    ).all()
    return [
        Copy(r.id, r.queue_id, r.mailbox, r.attempts, r.sender, r.body, r.last_reply or "")
        for r in rows
    ]


def renew_copy_claims(
    connection: Connection,
    worker: str,
    copy_ids: Sequence[int],
    lease: timedelta,
    now: datetime | None = None,
) -> set[int]:
    """Push this worker's claim on these copies forward (a batch into a slow store can
    outlast the claim it started with); the ids still its own."""
    now = now or utcnow()
    renewed = connection.execute(
        update(StandbyCopy)
        .where(StandbyCopy.id.in_(list(copy_ids)), StandbyCopy.claimed_by == worker)
        .values(claimed_until=now + lease)
        .returning(StandbyCopy.id)
    )
    return set(renewed.scalars())


@dataclass(frozen=True)
class CopyOutcome:
    """One standby copy's outcome, to be written by ``record_copies``."""

    copy_id: int
    status: str
    reply: str
    next_attempt_at: datetime | None  # None: unchanged
    worker: str  # written only while the copy is still claimed by this worker


# Built once: constructing it at every write was most of the recorder's Python time.
_RECORD_COPY = (
    update(StandbyCopy)
    .where(StandbyCopy.id == bindparam("b_id"), StandbyCopy.claimed_by == bindparam("b_worker"))
    .values(
        status=bindparam("b_status"),
        last_reply=bindparam("b_reply"),
        attempts=StandbyCopy.attempts + 1,
        claimed_by=None,
        claimed_until=None,
        copied_at=func.coalesce(bindparam("b_copied_at", type_=UTCDateTime), StandbyCopy.copied_at),
        next_attempt_at=func.coalesce(
            bindparam("b_next", type_=UTCDateTime), StandbyCopy.next_attempt_at
        ),
    )
)


def record_copies(connection: Connection, outcomes: Sequence[CopyOutcome]) -> None:
    """Write standby copies' outcomes and release their claims (caller commits), each
    only while its copy is still claimed by its worker (a lapsed claim is someone
    else's now). One statement for them all, sent with every copy's values at once."""
    if not outcomes:
        return
    now = utcnow()
    connection.execute(
        _RECORD_COPY,
        [
            {
                "b_id": outcome.copy_id,
                "b_worker": outcome.worker,
                "b_status": outcome.status,
                "b_reply": outcome.reply[:1000],
                "b_copied_at": now if outcome.status == COPY_DONE else None,
                "b_next": outcome.next_attempt_at,
            }
            for outcome in outcomes
        ],
    )


# ---------------------------------------------------------------------------
# What an operator and the Control Panel read
# ---------------------------------------------------------------------------
def retry_now(
    session: Session, *, queue_id: str | None = None, domain_id: int | None = None
) -> int:
    """Make pending recipients (of one message, or of one domain) due now; how many."""
    condition: ColumnElement[bool] = MailRecipient.status.in_(PENDING_STATES)
    if queue_id is not None:
        condition = and_(condition, MailRecipient.queue_id == queue_id)
    if domain_id is not None:
        condition = and_(condition, MailRecipient.domain_id == domain_id)
    result = session.execute(
        update(MailRecipient).where(condition).values(next_attempt_at=utcnow())
    )
    copies: ColumnElement[bool] = StandbyCopy.status == COPY_PENDING
    if queue_id is not None:
        copies = and_(copies, StandbyCopy.queue_id == queue_id)
    if domain_id is not None:
        copies = and_(copies, StandbyCopy.domain_id == domain_id)
    session.execute(update(StandbyCopy).where(copies).values(next_attempt_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class QueueRow:
    """One message of the queue as an operator lists it."""

    queue_id: str
    received_at: datetime
    sender: str
    size: int
    recipients: int
    pending: int
    next_attempt_at: datetime | None
    last_reply: str


def pending_messages(
    session: Session, *, domain_id: int | None = None, limit: int = 1000
) -> list[QueueRow]:
    """Messages with recipients still to deliver, oldest first."""
    pending = MailRecipient.status.in_(PENDING_STATES)
    query = (
        select(
            MailMessage.queue_id,
            MailMessage.received_at,
            MailMessage.sender,
            MailMessage.size,
            func.count(MailRecipient.id),
            func.sum(case((pending, 1), else_=0)),
            func.min(case((pending, MailRecipient.next_attempt_at), else_=None)),
            func.max(MailRecipient.last_reply),
        )
        .join(MailRecipient, MailRecipient.queue_id == MailMessage.queue_id)
        .where(
            MailMessage.queue_id.in_(
                select(MailRecipient.queue_id).where(
                    pending, *([MailRecipient.domain_id == domain_id] if domain_id else [])
                )
            )
        )
        .group_by(
            MailMessage.queue_id, MailMessage.received_at, MailMessage.sender, MailMessage.size
        )
        .order_by(MailMessage.received_at)
        .limit(limit)
    )
    return [QueueRow(*row) for row in session.execute(query)]


@dataclass(frozen=True)
class MessageDetail:
    """A message of the queue with each recipient's and each standby copy's state."""

    message: MailMessage
    recipients: list[MailRecipient]
    copies: list[StandbyCopy]


def message_detail(session: Session, queue_id: str) -> MessageDetail | None:
    """The message with this queue id, or None."""
    message = session.get(MailMessage, queue_id)
    if message is None:
        return None
    recipients = list(
        session.scalars(
            select(MailRecipient)
            .where(MailRecipient.queue_id == queue_id)
            .order_by(MailRecipient.id)
        )
    )
    copies = list(
        session.scalars(
            select(StandbyCopy).where(StandbyCopy.queue_id == queue_id).order_by(StandbyCopy.id)
        )
    )
    return MessageDetail(message, recipients, copies)


@dataclass(frozen=True)
class MailCounts:
    """A domain's mail since a moment: what the Control Panel's overview shows."""

    received: int
    delivered: int
    deferred: int
    bounced: int
    copied: int
    copies_pending: int


def mail_counts(session: Session, domain_id: int, since: datetime) -> MailCounts:
    """Counts of a domain's recipients received, delivered and bounced since ``since``,
    deferred now (held by a continuity event too, as Email Live Tracking shows held
    mail), and standby copies made since then and still pending."""
    r = MailRecipient
    received, delivered, bounced, deferred = session.execute(
        select(
            func.count(r.id),
            func.sum(case((and_(r.status == DELIVERED, r.delivered_at >= since), 1), else_=0)),
            func.sum(case((r.status == BOUNCED, 1), else_=0)),
            func.sum(case((r.status == DEFERRED, 1), else_=0)),
        )
        .join(MailMessage, MailMessage.queue_id == r.queue_id)
        .where(r.domain_id == domain_id, MailMessage.received_at >= since)
    ).one()
    still_deferred = session.scalar(
        select(func.count(r.id)).where(
            r.domain_id == domain_id,
            or_(r.status == DEFERRED, and_(r.status == QUEUED, r.via_continuity.is_(True))),
        )
    )
    s = StandbyCopy
    copied, copies_pending = session.execute(
        select(
            func.sum(case((and_(s.status == COPY_DONE, s.copied_at >= since), 1), else_=0)),
            func.sum(case((s.status == COPY_PENDING, 1), else_=0)),
        ).where(s.domain_id == domain_id)
    ).one()
    del deferred
    return MailCounts(
        received=int(received or 0),
        delivered=int(delivered or 0),
        deferred=int(still_deferred or 0),
        bounced=int(bounced or 0),
        copied=int(copied or 0),
        copies_pending=int(copies_pending or 0),
    )


__all__ = [
    "BOUNCED",
    "COPY_DONE",
    "COPY_FAILED",
    "DEFERRED",
    "DELIVERED",
    "QUEUED",
]


SENT_COPY_HEADER = b"X-Continuity-Sent-Copy: yes\r\n"


def queue_sent_copy(
    connection: Connection, domain: Domain, person_id: int, mailbox: str, message: bytes
) -> str | None:
    """Queue a copy of a message a person sent from the standby webmail for their own
    mailbox at the primary (their Sent folder, by the primary's filter on the
    X-Continuity-Sent-Copy header), when the domain switched that on; its queue id, or
    None when the domain does not want copies. During an event it is held like the
    rest and handed back with it; it gets no standby copy (the webmail keeps Sent)."""
    if not domain.sent_copies_to_primary:
        return None
    queue_id = new_queue_id()
    store(
        connection,
        [
            Incoming(
                queue_id=queue_id,
                sender=mailbox,
                body=SENT_COPY_HEADER + message,
                recipients=[Recipient(mailbox, domain.id, known=True, person_id=person_id)],
                origin="sent-copy",
            )
        ],
    )
    return queue_id
