"""The three-month archive's rules: how long the standby store and the queue keep what,
which standby mailboxes retention looks after, which messages still wait for the
primary, and the queue's pruning in chunks.

The IMAP side (expunging the mailboxes) is gateway/retention.py; this module only reads
and writes the roster, so the portal and the command line can ask it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from roster.config import Config
from roster.coverage import covered_clause
from roster.domains import audit
from roster.models import (
    COPY_PENDING,
    PENDING_STATES,
    Domain,
    MailMessage,
    MailRecipient,
    Person,
    RetentionRun,
    StandbyCopy,
    StandbyMailbox,
    utcnow,
)
from roster.queue import writing

LEASE_NAME = "retention"
DEFAULT_RETENTION_DAYS = 92
DEFAULT_GRACE_DAYS = 30
DEFAULT_TRACKING_DAYS = 92
DEFAULT_KEEP_BODIES_DAYS = 7
CHUNK = 500

OK = "ok"
INCOMPLETE = "incomplete"  # some mailboxes could not be reached: the next run tries again
FAILED = "failed"


@dataclass(frozen=True)
class RetentionSettings:
    """The ages, from [standby] and [gateway] with their defaults."""

    retention_days: int = DEFAULT_RETENTION_DAYS
    uncovered_grace_days: int = DEFAULT_GRACE_DAYS
    tracking_days: int = DEFAULT_TRACKING_DAYS
    keep_bodies_days: int = DEFAULT_KEEP_BODIES_DAYS

    @classmethod
    def from_config(cls, config: Config) -> RetentionSettings:
        """The checked configuration's ages."""
        return cls(
            retention_days=config.standby.get("retention_days", DEFAULT_RETENTION_DAYS),
            uncovered_grace_days=config.standby.get("uncovered_grace_days", DEFAULT_GRACE_DAYS),
            tracking_days=config.gateway.get("tracking_days", DEFAULT_TRACKING_DAYS),
            keep_bodies_days=config.gateway.get("keep_bodies_days", DEFAULT_KEEP_BODIES_DAYS),
        )


MAX_RETENTION_DAYS = 36500


class RetentionRefused(ValueError):
    """A domain's retention age that cannot be set; the message says why."""


def set_retention_days(session: Session, domain: Domain, days: int | None, actor: str) -> bool:
    """Give ``domain`` an age of its own for its standby mail (None: the deployment's
    [standby] retention_days), audited; True when it changed."""
    if days is not None and not 1 <= days <= MAX_RETENTION_DAYS:
        raise RetentionRefused(f"the days must be between 1 and {MAX_RETENTION_DAYS}")
    before = domain.retention_days
    if before == days:
        return False
    domain.retention_days = days
    audit(
        session,
        actor,
        "retention.changed",
        domain_id=domain.id,
        before={"retention_days": "default" if before is None else before},
        after={"retention_days": "default" if days is None else days},
    )
    return True


# ---------------------------------------------------------------------------
# The standby mailboxes
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CoveredMailbox:
    """A covered person's standby mailbox and the age its mail is kept to."""

    address: str
    domain_id: int
    retention_days: int
    person_id: int = 0  # who holds the address now


def covered_mailboxes(session: Session, settings: RetentionSettings) -> list[CoveredMailbox]:
    """Every covered person's mailbox (the one coverage rule), with the domain's own age
    where it has one, else the deployment's."""
    found: list[CoveredMailbox] = []
    domains = session.scalars(
        select(Domain).where(Domain.continuity_active.is_(True)).order_by(Domain.name)
    ).all()
    for domain in domains:
        days = domain.retention_days or settings.retention_days
        for address, person_id in session.execute(
            select(Person.mail, Person.id).where(covered_clause(domain)).order_by(Person.mail)
        ):
            found.append(CoveredMailbox(address.lower(), domain.id, days, person_id))
    return found


def sweep_mailboxes(
    engine: Engine,
    covered: list[CoveredMailbox],
    settings: RetentionSettings,
    now: datetime,
    *,
    dry_run: bool,
) -> tuple[list[str], dict[str, int]]:
    """Bring the roster's list of standby mailboxes in line with who is covered now, and
    return the addresses whose grace is over (to be emptied) and what changed.

    A mailbox is known from the covered people and from every standby copy made (someone
    covered and uncovered between two runs still had copies). One not covered any more
    gets ``uncovered_since`` now; one covered again loses it (its mail was kept); one
    whose grace is over gets ``emptying_since``: the users file lists it again so that
    the master user can sign in to empty it. A dry run writes nothing.
    """
    domain_of = {m.address: m.domain_id for m in covered}
    grace = timedelta(days=settings.uncovered_grace_days)
    counts = {"newly_uncovered": 0, "covered_again": 0}
    with writing(engine) as connection:
        known = {
            row.address: row
            for row in connection.execute(
                select(
                    StandbyMailbox.address,
                    StandbyMailbox.uncovered_since,
                    StandbyMailbox.emptying_since,
                )
            )
        }
        copied = {
            row.mailbox.lower(): row.domain_id
            for row in connection.execute(
                select(
                    StandbyCopy.mailbox, func.min(StandbyCopy.domain_id).label("domain_id")
                ).group_by(StandbyCopy.mailbox)
            )
        }
        new_rows = []
        for address, domain_id in {**copied, **domain_of}.items():
            if address in known:
                continue
            uncovered = None if address in domain_of else now
            new_rows.append(
                {"address": address, "domain_id": domain_id, "uncovered_since": uncovered}
            )
            if uncovered is not None:
                counts["newly_uncovered"] += 1
        again = [a for a, row in known.items() if a in domain_of and row.uncovered_since]
        gone = [a for a, row in known.items() if a not in domain_of and not row.uncovered_since]
        counts["covered_again"] += len(again)
        counts["newly_uncovered"] += len(gone)
        due = sorted(
            a
            for a, row in known.items()
            if a not in domain_of
            and (row.emptying_since or (row.uncovered_since and row.uncovered_since <= now - grace))
        )
        if dry_run:
            connection.rollback()
            return due, counts
        if new_rows:
            connection.execute(insert(StandbyMailbox), new_rows)
        for chunk in _chunks(again):
            connection.execute(
                update(StandbyMailbox)
                .where(StandbyMailbox.address.in_(chunk))
                .values(uncovered_since=None, emptying_since=None)
            )
        for chunk in _chunks(gone):
            connection.execute(
                update(StandbyMailbox)
                .where(StandbyMailbox.address.in_(chunk))
                .values(uncovered_since=now)
            )
        for chunk in _chunks(due):
            connection.execute(
                update(StandbyMailbox)
                .where(StandbyMailbox.address.in_(chunk), StandbyMailbox.emptying_since.is_(None))
                .values(emptying_since=now)
            )
    return due, counts


def emptying_addresses(session: Session) -> list[str]:
    """Mailboxes whose grace is over and that retention has not emptied yet: the users
    file lists them so that the master user can sign in to empty them."""
    return list(
        session.scalars(
            select(StandbyMailbox.address)
            .where(StandbyMailbox.emptying_since.is_not(None))
            .order_by(StandbyMailbox.address)
        )
    )


def still_uncovered(session: Session, address: str) -> bool:
    """True while ``address`` is not covered (checked again just before emptying it)."""
    for domain in session.scalars(select(Domain).where(Domain.continuity_active.is_(True))):
        found = session.scalar(
            select(Person.id).where(covered_clause(domain), func.lower(Person.mail) == address)
        )
        if found is not None:
            return False
    return True


def forget_mailbox(engine: Engine, address: str) -> None:
    """The mailbox was emptied: retention stops looking after it (the users file drops it)."""
    with writing(engine) as connection:
        connection.execute(
            delete(StandbyMailbox).where(
                StandbyMailbox.address == address, StandbyMailbox.emptying_since.is_not(None)
            )
        )


def clear_emptying(engine: Engine, address: str) -> None:
    """Covered again before it was emptied: keep its mail."""
    with writing(engine) as connection:
        connection.execute(
            update(StandbyMailbox)
            .where(StandbyMailbox.address == address)
            .values(uncovered_since=None, emptying_since=None)
        )


# ---------------------------------------------------------------------------
# Mail still waiting for the primary
# ---------------------------------------------------------------------------
@dataclass
class Held:
    """What a standby mailbox holds that still waits for the primary: the queue ids (in
    the gateway's Received line of every copy) and the Message-IDs of those messages."""

    queue_ids: set[str] = field(default_factory=set)
    message_ids: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.queue_ids or self.message_ids)


def held_by_mailbox(session: Session) -> dict[str, Held]:
    """For each standby mailbox, the messages copied to it that some recipient still
    waits for (queued or deferred): retention keeps those whatever their age."""
    waiting = select(MailRecipient.queue_id).where(MailRecipient.status.in_(PENDING_STATES))
    rows = session.execute(
        select(StandbyCopy.mailbox, MailMessage.queue_id, MailMessage.message_id)
        .join(MailMessage, MailMessage.queue_id == StandbyCopy.queue_id)
        .where(StandbyCopy.queue_id.in_(waiting))
    )
    held: dict[str, Held] = {}
    for mailbox, queue_id, message_id in rows:
        entry = held.setdefault(mailbox.lower(), Held())
        entry.queue_ids.add(queue_id)
        if message_id:
            entry.message_ids.add(message_id)
    return held


# ---------------------------------------------------------------------------
# The queue and tracking
# ---------------------------------------------------------------------------
def _recipients_waiting(since: datetime | None = None) -> ColumnElement[bool]:
    """Some recipient of the message still waits (or, with ``since``, was tried since)."""
    condition: ColumnElement[bool] = MailRecipient.status.in_(PENDING_STATES)
    if since is not None:
        condition = or_(condition, MailRecipient.last_attempt_at >= since)
    return exists().where(MailRecipient.queue_id == MailMessage.queue_id, condition)


def _copies_waiting() -> ColumnElement[bool]:
    return exists().where(
        StandbyCopy.queue_id == MailMessage.queue_id, StandbyCopy.status == COPY_PENDING
    )


def _final_before(cutoff: datetime) -> list[ColumnElement[bool]]:
    """Received before ``cutoff``, every recipient delivered or bounced (none tried since)
    and every standby copy made or given up."""
    return [MailMessage.received_at < cutoff, ~_recipients_waiting(cutoff), ~_copies_waiting()]


def _with_body_before(cutoff: datetime) -> list[ColumnElement[bool]]:
    """Final, received before ``cutoff``, body still stored."""
    return [
        MailMessage.received_at < cutoff,
        func.length(MailMessage.body) > 0,
        ~_recipients_waiting(),
        ~_copies_waiting(),
    ]


def prune_queue(
    engine: Engine,
    settings: RetentionSettings,
    now: datetime,
    *,
    dry_run: bool,
    between: Callable[[], None] = lambda: None,
    chunk: int = CHUNK,
) -> dict[str, int]:
    """Remove final messages (with their recipients and copies) older than tracking_days
    and drop the bodies of final messages older than keep_bodies_days, ``chunk`` messages
    a transaction (``between`` runs between them: the lease's renewal). A message with a
    recipient or a copy still pending is never touched. A dry run only counts."""
    old = _final_before(now - timedelta(days=settings.tracking_days))
    bodies = _with_body_before(now - timedelta(days=settings.keep_bodies_days))
    counts = {"messages": 0, "recipients": 0, "copies": 0, "bodies": 0}
    if dry_run:
        with Session(engine) as session:
            ids = select(MailMessage.queue_id).where(*old)
            counted: dict[str, int | None] = {}
            counted["messages"] = session.scalar(select(func.count()).select_from(ids.subquery()))
            counted["recipients"] = session.scalar(
                select(func.count(MailRecipient.id)).where(MailRecipient.queue_id.in_(ids))
            )
            counted["copies"] = session.scalar(
                select(func.count(StandbyCopy.id)).where(StandbyCopy.queue_id.in_(ids))
            )
            counted["bodies"] = session.scalar(
                select(func.count()).select_from(
                    select(MailMessage.queue_id)
                    .where(*bodies, ~MailMessage.queue_id.in_(ids))
                    .subquery()
                )
            )
        return {key: int(value or 0) for key, value in counted.items()}
    while True:
        between()
        with writing(engine) as connection:
            chosen = list(
                connection.scalars(
                    select(MailMessage.queue_id)
                    .where(*old)
                    .order_by(MailMessage.received_at)
                    .limit(chunk)
                )
            )
            if not chosen:
                break
            counts["copies"] += _deleted(
                connection.execute(delete(StandbyCopy).where(StandbyCopy.queue_id.in_(chosen)))
            )
            counts["recipients"] += _deleted(
                connection.execute(delete(MailRecipient).where(MailRecipient.queue_id.in_(chosen)))
            )
            counts["messages"] += _deleted(
                connection.execute(delete(MailMessage).where(MailMessage.queue_id.in_(chosen)))
            )
    while True:
        between()
        with writing(engine) as connection:
            chosen = list(
                connection.scalars(
                    select(MailMessage.queue_id)
                    .where(*bodies)
                    .order_by(MailMessage.received_at)
                    .limit(chunk)
                )
            )
            if not chosen:
                break
            counts["bodies"] += _deleted(
                connection.execute(
                    update(MailMessage)
                    .where(MailMessage.queue_id.in_(chosen), *bodies)
                    .values(body=b"")
                )
            )
    return counts


def _deleted(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _chunks(items: list[str], size: int = CHUNK) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------
def start_run(engine: Engine, started_by: str, now: datetime | None = None) -> int:
    """Record a run's start; its id."""
    with writing(engine) as connection:
        return int(
            connection.execute(
                insert(RetentionRun)
                .values(
                    started_at=now or utcnow(),
                    dry_run=False,
                    outcome="running",
                    started_by=started_by[:255],
                    counts={},
                )
                .returning(RetentionRun.id)
            ).scalar_one()
        )


def finish_run(engine: Engine, run_id: int, outcome: str, counts: dict[str, Any]) -> None:
    """Record a run's end, its outcome and its counts."""
    with writing(engine) as connection:
        connection.execute(
            update(RetentionRun)
            .where(RetentionRun.id == run_id)
            .values(finished_at=utcnow(), outcome=outcome, counts=counts)
        )


def retention_due(session: Session, now: datetime, every: timedelta) -> bool:
    """True when no run finished (ok or incomplete) within ``every`` of ``now``."""
    last = session.scalar(
        select(func.max(RetentionRun.finished_at)).where(
            RetentionRun.outcome.in_((OK, INCOMPLETE)), RetentionRun.dry_run.is_(False)
        )
    )
    return last is None or last <= now - every
