"""The mail-flow chart's figures: a domain's recipients per day (UTC) over the last days,
by what became of them, and the continuity events over those days.

Each recipient is counted once, on the day it arrived (the UTC day of the gateway's 250),
under what became of it since, one rule (``flow_of``, a table like Email Live
Tracking's): delivered to the primary; **via Continuity** (received or held while its
domain was in a continuity event: handed back to the primary since, or still held for
the hand-back); **deferred** (not delivered yet: the primary deferred it, or it waits
for its first try; a recipient deferred and delivered later counts as delivered: the
queue keeps a recipient's state, not a history of its attempts); bounced. A day's
figures add up to the recipients received that day.

The day a recipient arrived is read from its queue id, not from the message's
``received_at``: ids are made from the moment of the 250 (``roster.queue.new_queue_id``:
48 bits of milliseconds first) and sort by it, so a day is a range of ids and the whole
window one range of the index on (domain_id, queue_id, status, via_continuity) (the
recipients' own columns: no read of the messages' rows at all, migration 0012).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, literal, or_, select, union_all
from sqlalchemy.orm import Session

from roster.models import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    QUEUED,
    ContinuityEvent,
    MailRecipient,
    utcnow,
)
from roster.queue import queue_id_floor

DAYS = 14
MAX_DAYS = 92  # [gateway] tracking_days' default: the queue keeps no older rows

FLOW_DELIVERED = "delivered"
FLOW_CONTINUITY = "continuity"
FLOW_DEFERRED = "deferred"
FLOW_BOUNCED = "bounced"
FLOWS = (FLOW_DELIVERED, FLOW_CONTINUITY, FLOW_DEFERRED, FLOW_BOUNCED)

# (queue status, via Continuity Service) -> what the chart counts it as.
_FLOW: dict[tuple[str, bool], str] = {
    (DELIVERED, False): FLOW_DELIVERED,
    (DELIVERED, True): FLOW_CONTINUITY,  # handed back after the event
    (QUEUED, True): FLOW_CONTINUITY,  # held now
    (DEFERRED, True): FLOW_CONTINUITY,
    (QUEUED, False): FLOW_DEFERRED,  # not tried yet
    (DEFERRED, False): FLOW_DEFERRED,
    (BOUNCED, False): FLOW_BOUNCED,
    (BOUNCED, True): FLOW_BOUNCED,
}


def flow_of(status: str, via_continuity: bool) -> str:
    """What the chart counts a recipient in this queue state as (an unknown state: not
    delivered yet)."""
    return _FLOW.get((status, bool(via_continuity)), FLOW_DEFERRED)


@dataclass(frozen=True)
class FlowDay:
    """One UTC day's recipients, by what became of them."""

    day: date
    delivered: int = 0
    continuity: int = 0
    deferred: int = 0
    bounced: int = 0

    @property
    def total(self) -> int:
        """Every recipient received that day."""
        return self.delivered + self.continuity + self.deferred + self.bounced

    def count(self, flow: str) -> int:
        """The day's figure for one of ``FLOWS``."""
        return int(getattr(self, flow))


@dataclass(frozen=True)
class FlowEvent:
    """A continuity event that overlaps the window, numbered from 1 by its start."""

    number: int
    started_at: datetime
    ended_at: datetime | None  # None: still open
    reason: str


@dataclass(frozen=True)
class MailFlow:
    """The figures of the chart: ``days`` from ``start`` (00:00 UTC) to ``end`` (00:00
    UTC after today), oldest first, and the events over them."""

    start: datetime
    end: datetime
    now: datetime
    days: list[FlowDay]
    events: list[FlowEvent] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Every recipient of the window."""
        return sum(day.total for day in self.days)

    @property
    def empty(self) -> bool:
        """No mail in the window at all."""
        return self.total == 0


def window(days: int = DAYS, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The ``days`` UTC days up to and including today's: (first 00:00, next 00:00)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}, got {days}")
    now = (now or utcnow()).astimezone(UTC)
    end = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return end - timedelta(days=days), end


def mail_flow(
    session: Session, domain_id: int, days: int = DAYS, now: datetime | None = None
) -> MailFlow:
    """The domain's recipients per UTC day for the last ``days`` days (today included),
    by ``flow_of``, and its continuity events that overlap them."""
    now = (now or utcnow()).astimezone(UTC)
    start, end = window(days, now)
    floors = [queue_id_floor(start + timedelta(days=n)) for n in range(days + 1)]
    r = MailRecipient
    # One range of the index a day, in one statement: cheaper than sorting the window's
    # rows into days with a CASE (a third of the time on a million rows, SQLite).
    per_day = [
        select(literal(n).label("day"), r.status, r.via_continuity, func.count().label("n"))
        .where(r.domain_id == domain_id, r.queue_id >= floors[n], r.queue_id < floors[n + 1])
        .group_by(r.status, r.via_continuity)
        for n in range(days)
    ]
    rows = session.execute(union_all(*per_day)).all()
    counts = [dict.fromkeys(FLOWS, 0) for _ in range(days)]
    for number, status, via, count in rows:
        counts[int(number)][flow_of(status, via)] += int(count)
    return MailFlow(
        start=start,
        end=end,
        now=now,
        days=[FlowDay((start + timedelta(days=n)).date(), **counts[n]) for n in range(days)],
        events=events_between(session, domain_id, start, end),
    )


def events_between(
    session: Session, domain_id: int, start: datetime, end: datetime
) -> list[FlowEvent]:
    """The domain's continuity events that were open at some moment in [start, end),
    oldest first."""
    e = ContinuityEvent
    rows = session.execute(
        select(e.started_at, e.ended_at, e.reason)
        .where(
            e.domain_id == domain_id,
            e.started_at < end,
            or_(e.ended_at.is_(None), e.ended_at > start),
        )
        .order_by(e.started_at, e.id)
    ).all()
    return [
        FlowEvent(number, row.started_at, row.ended_at, row.reason or "")
        for number, row in enumerate(rows, start=1)
    ]
