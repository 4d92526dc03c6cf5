"""The service's figures as the roster holds them: what waits in the queue and why, the
primaries' last checks, continuity events, the directory sync's last runs, sign-ins.

Read at the moment they are asked for (by the portal's /metrics and the health
commands), so that they are the same whichever portal worker answers and however many
gateways on however many hosts share the roster: no process keeps counts of its own.
Each read is an aggregate over an index (the pending recipients, the last hour of the
queue, small tables) or, for the sign-ins of the audit trail, which only grows,
incremental (``AppendOnlyTally``).

The roster keeps no running totals of mail, and retention removes delivered mail after
``[gateway] tracking_days``: mail is therefore given as what waits now and what arrived
in the last hour, not as counters since the beginning.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, and_, case, func, literal, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from roster.continuity import RECOVERING, domain_states
from roster.models import (
    COPY_PENDING,
    PENDING_STATES,
    AuditEvent,
    ContinuityEvent,
    Domain,
    MailMessage,
    MailRecipient,
    RunLock,
    SignInThrottle,
    StandbyCopy,
    SyncRun,
    utcnow,
)
from roster.queue import queue_id_floor
from roster.syncruns import RUNNING, SyncHealth, sync_health

# The lease the gateways' monitor holds and renews about every second while its gateway
# runs (gateway.monitor.LEASE_NAME; roster imports nothing of the gateway, a test pins
# the two equal). A lease alive means some gateway of the deployment is alive.
MONITOR_LEASE = "gateway-monitor"

# What a waiting recipient is waiting for.
QUEUED = "queued"  # not tried yet, or due again
DEFERRED = "deferred"  # tried, refused for now, waiting for its next attempt
HELD = "held"  # its domain is in a continuity event: kept until the primary is back
HANDING_BACK = "handing_back"  # held, and being handed back to the primary now
WAITING_STATES = (QUEUED, DEFERRED, HELD, HANDING_BACK)

RELAY = "(relay)"
"""The domain label of what goes out through [outbound] relay (the gateway's notices)."""

LAST_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Waiting:
    """Recipients of one domain waiting in one state."""

    domain: str
    state: str
    recipients: int
    oldest_received_at: datetime | None
    # Due and claimed by no live gateway: a delivery should be trying them now.
    overdue: int = 0
    overdue_since: datetime | None = None


@dataclass(frozen=True)
class PrimaryState:
    """A domain's settings that matter to its health, its primary's last check and its
    continuity event, if one is open."""

    domain: str
    active: bool
    has_primary: bool
    probe_interval_seconds: int
    last_check_at: datetime | None
    last_check_ok: bool | None
    failures_in_a_row: int
    event_started_at: datetime | None = None
    recovery_started_at: datetime | None = None


@dataclass(frozen=True)
class EventTotals:
    """A domain's continuity events since the beginning: how many started, and the
    recipients the ended ones held and handed back (counted when an event ends)."""

    domain: str
    started: int
    held: int
    handed_back: int


@dataclass(frozen=True)
class SyncFigures:
    """The last finished run of one directory source."""

    source: str
    mode: str
    outcome: str
    started_at: datetime
    finished_at: datetime | None
    entries_read: int
    changes: dict[str, int]
    last_success_at: datetime | None


@dataclass(frozen=True)
class MonitorLease:
    """Who holds the gateways' monitor lease, and until when."""

    holder: str | None
    expires_at: datetime | None

    def alive(self, now: datetime) -> bool:
        """True while the lease has not expired: its gateway renewed it lately."""
        return self.expires_at is not None and self.expires_at > now


@dataclass
class Figures:
    """Everything /metrics shows, read in one go."""

    now: datetime
    waiting: list[Waiting] = field(default_factory=list)
    copies: list[Waiting] = field(default_factory=list)
    messages_last_hour: int = 0
    recipients_last_hour: dict[tuple[str, str], int] = field(default_factory=dict)
    primaries: list[PrimaryState] = field(default_factory=list)
    events: list[EventTotals] = field(default_factory=list)
    monitor: MonitorLease = field(default_factory=lambda: MonitorLease(None, None))
    sync: list[SyncFigures] = field(default_factory=list)
    # Every source configured or seen: (a run going now, degraded as /health says).
    sync_sources: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    # None when they could not be counted this time (sign_ins_error says why).
    sign_ins: dict[tuple[str, str], int] | None = field(default_factory=dict)
    sign_ins_error: str | None = None
    locked: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Domains, primaries and continuity events
# ---------------------------------------------------------------------------
def domain_names(connection: Connection) -> dict[int, str]:
    """Every domain's name by id (a small table)."""
    return {row.id: row.name for row in connection.execute(select(Domain.id, Domain.name))}


def primaries(connection: Connection) -> list[PrimaryState]:
    """Each domain's primary as the monitor last saw it, with its open event."""
    open_events = {
        row.domain_id: row
        for row in connection.execute(
            select(
                ContinuityEvent.domain_id,
                ContinuityEvent.started_at,
                ContinuityEvent.recovery_started_at,
            )
            .where(ContinuityEvent.ended_at.is_(None))
            .order_by(ContinuityEvent.id)
        )
    }
    found = []
    for row in connection.execute(
        select(
            Domain.id,
            Domain.name,
            Domain.continuity_active,
            Domain.primary_host,
            Domain.probe_interval_seconds,
            Domain.last_check_at,
            Domain.last_check_ok,
            Domain.failures_in_a_row,
        ).order_by(Domain.name)
    ):
        event = open_events.get(row.id)
        found.append(
            PrimaryState(
                domain=row.name,
                active=bool(row.continuity_active),
                has_primary=row.primary_host is not None,
                probe_interval_seconds=row.probe_interval_seconds,
                last_check_at=row.last_check_at,
                last_check_ok=row.last_check_ok,
                failures_in_a_row=row.failures_in_a_row,
                event_started_at=event.started_at if event else None,
                recovery_started_at=event.recovery_started_at if event else None,
            )
        )
    return found


def event_totals(connection: Connection, names: dict[int, str]) -> list[EventTotals]:
    """Per domain: events started, recipients held and handed back by the ended ones."""
    ended = ContinuityEvent.ended_at.is_not(None)
    rows = connection.execute(
        select(
            ContinuityEvent.domain_id,
            func.count(),
            func.sum(case((ended, ContinuityEvent.held), else_=0)),
            func.sum(case((ended, ContinuityEvent.handed_back), else_=0)),
        ).group_by(ContinuityEvent.domain_id)
    )
    return sorted(
        (
            EventTotals(names.get(domain_id, str(domain_id)), count, int(held), int(back))
            for domain_id, count, held, back in rows
        ),
        key=lambda totals: totals.domain,
    )


def monitor_lease(connection: Connection) -> MonitorLease:
    """The gateways' monitor lease as the roster holds it."""
    row = connection.execute(
        select(RunLock.holder, RunLock.expires_at).where(RunLock.name == MONITOR_LEASE)
    ).first()
    return MonitorLease(row.holder, row.expires_at) if row else MonitorLease(None, None)


# ---------------------------------------------------------------------------
# The queue
# ---------------------------------------------------------------------------
def _state(status: str, via_continuity: bool, domain_id: int | None, events: Any) -> str:
    held, recovering = events
    if domain_id is not None and domain_id in held:
        return HELD
    if domain_id is not None and via_continuity and domain_id in recovering:
        return HANDING_BACK
    return DEFERRED if status == DEFERRED else QUEUED


def _event_domains(connection: Connection) -> tuple[set[int], set[int]]:
    """Domains whose mail is held now, and those handing it back."""
    states = domain_states(connection)
    held = {domain_id for domain_id, state in states.items() if state != RECOVERING}
    return held, set(states) - held


def _received_at(connection: Connection, queue_ids: set[str]) -> dict[str, datetime]:
    if not queue_ids:
        return {}
    return dict(
        connection.execute(
            select(MailMessage.queue_id, MailMessage.received_at).where(
                MailMessage.queue_id.in_(sorted(queue_ids))
            )
        ).all()
    )


def _pending(status: Any) -> ColumnElement[bool]:
    """The pending states written out in the statement, not bound: so SQLite sees that
    the partial index of due recipients (ix_mail_recipient_due) holds exactly these
    rows, and reads it instead of an index of the whole table."""
    return cast(
        ColumnElement[bool],
        status.in_([literal(state, literal_execute=True) for state in PENDING_STATES]),
    )


def waiting(connection: Connection, names: dict[int, str], now: datetime) -> list[Waiting]:
    """The recipients waiting for delivery, by domain and state, with the oldest's
    arrival and those overdue (due, and no live gateway has them).

    One pass over the pending recipients (a partial index holds exactly them); the
    oldest message of each group is its smallest queue id (queue ids sort by time), so
    the messages table is read only for those few.
    """
    r = MailRecipient
    due = and_(r.next_attempt_at <= now, or_(r.claimed_until.is_(None), r.claimed_until < now))
    rows = connection.execute(
        select(
            r.domain_id,
            r.status,
            r.via_continuity,
            func.count(),
            func.min(r.queue_id),
            func.sum(case((due, 1), else_=0)),
            func.min(case((due, r.next_attempt_at), else_=None)),
        )
        .where(_pending(r.status))
        .group_by(r.via_continuity, r.status, r.domain_id)
    ).all()
    events = _event_domains(connection)
    merged: dict[tuple[str, str], list[Any]] = {}
    for domain_id, status, via, count, oldest_id, overdue, overdue_since in rows:
        state = _state(status, bool(via), domain_id, events)
        domain = RELAY if domain_id is None else names.get(domain_id, str(domain_id))
        if state == HELD:
            overdue, overdue_since = 0, None  # held mail waits on purpose
        entry = merged.setdefault((domain, state), [0, None, 0, None])
        entry[0] += count
        entry[1] = oldest_id if entry[1] is None else min(entry[1], oldest_id)
        entry[2] += int(overdue or 0)
        if overdue_since is not None:
            entry[3] = overdue_since if entry[3] is None else min(entry[3], overdue_since)
    arrived = _received_at(connection, {entry[1] for entry in merged.values() if entry[1]})
    return [
        Waiting(domain, state, count, arrived.get(oldest_id), overdue, since)
        for (domain, state), (count, oldest_id, overdue, since) in sorted(merged.items())
    ]


def standby_copies(connection: Connection, names: dict[int, str]) -> list[Waiting]:
    """Standby copies not made yet, by domain, with the oldest's arrival."""
    s = StandbyCopy
    rows = connection.execute(
        select(s.domain_id, func.count(), func.min(s.queue_id))
        .where(s.status == COPY_PENDING)
        .group_by(s.domain_id)
    ).all()
    arrived = _received_at(connection, {oldest for _, _, oldest in rows if oldest})
    return sorted(
        (
            Waiting(names.get(domain_id, str(domain_id)), "pending", count, arrived.get(oldest))
            for domain_id, count, oldest in rows
        ),
        key=lambda item: item.domain,
    )


def last_hour(
    connection: Connection, names: dict[int, str], now: datetime
) -> tuple[int, dict[tuple[str, str], int]]:
    """Messages received in the last hour, and their recipients by domain and where they
    stand now (delivered, bounced, or one of the waiting states).

    By queue id, whose range both tables index: a message's id is made as it arrives.
    """
    floor = queue_id_floor(now - LAST_HOUR)
    messages = connection.scalar(
        select(func.count()).select_from(MailMessage).where(MailMessage.queue_id >= floor)
    )
    r = MailRecipient
    rows = connection.execute(
        select(r.domain_id, r.status, r.via_continuity, func.count())
        .where(r.queue_id >= floor)
        # In this order SQLite does not mistake the (domain_id, status) index, read whole,
        # for a cheaper way than the range of queue ids.
        .group_by(r.via_continuity, r.status, r.domain_id)
    ).all()
    events = _event_domains(connection)
    counts: Counter[tuple[str, str]] = Counter()
    for domain_id, status, via, count in rows:
        if status in PENDING_STATES:
            status = _state(status, bool(via), domain_id, events)
        domain = RELAY if domain_id is None else names.get(domain_id, str(domain_id))
        counts[(domain, status)] += count
    return int(messages or 0), dict(counts)


# ---------------------------------------------------------------------------
# The directory sync
# ---------------------------------------------------------------------------
def sync_figures(
    session: Session, sources: list[str], stale_after: timedelta, now: datetime
) -> tuple[list[SyncFigures], SyncHealth]:
    """The last finished run of each source (with its counts), and the sync's health as
    /health and `continuity sync status` judge it."""
    health = sync_health(session, sources, stale_after, now)
    latest = {run.source: run for run in health.runs}
    newest_finished = (
        select(func.max(SyncRun.id)).where(SyncRun.outcome != RUNNING).group_by(SyncRun.source)
    )
    figures = []
    for run in session.scalars(
        select(SyncRun).where(SyncRun.id.in_(newest_finished)).order_by(SyncRun.source)
    ):
        if sources and run.source not in sources:
            continue
        view = latest.get(run.source)
        changes = {k: v for k, v in (run.counts or {}).items() if isinstance(v, int)}
        figures.append(
            SyncFigures(
                source=run.source,
                mode=run.mode,
                outcome=run.outcome,
                started_at=run.started_at,
                finished_at=run.finished_at,
                entries_read=run.entries_read,
                changes=changes,
                last_success_at=view.last_success_at if view else None,
            )
        )
    return figures, health


# ---------------------------------------------------------------------------
# Sign-ins
# ---------------------------------------------------------------------------
SIGN_IN_ACTIONS = ("sign_in", "sign_in.failed", "account.locked")


class AppendOnlyTally:
    """Counts of the rows of a table that only grows (the audit trail), by a key, kept
    up to date by reading only the rows added since the last look.

    Every look counts the rows whose id is above the settled mark afresh, and adds to
    the settled counts the rows up to a mark once that mark is ``settle_seconds`` old: a
    row whose id was given out before a look but whose transaction commits after it (a
    sign-in's takes a few milliseconds) is invisible to that look, and counted only if
    its range is read again later. The first look counts every row up to the highest id
    it sees, provisionally: once that mark is ``settle_seconds`` old, its whole range is
    counted once more, so that rows in flight during the first look count too. One tally
    per process; the counts are the roster's, so every process arrives at the same ones.
    """

    def __init__(
        self,
        count: Callable[[Connection, int | None, int | None], Counter[Any]],
        last_id: Callable[[Connection], int | None],
        settle_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count, self._last_id = count, last_id
        self.settle_seconds, self._clock = settle_seconds, clock
        self._lock = threading.Lock()
        self._settled: Counter[Any] | None = None
        self._mark: int | None = None  # rows with an id up to here are in _settled
        self._first: tuple[float, int] | None = None  # (when, mark) of a provisional first look
        self._seen: list[tuple[float, int]] = []  # (when, highest id then)

    def read(self, connection: Connection) -> Counter[Any]:
        """The counts now."""
        with self._lock:
            now = self._clock()
            highest = self._last_id(connection)
            if self._settled is None:
                if highest is None:
                    return Counter()
                self._settled = self._count(connection, None, highest)
                self._mark, self._first = highest, (now, highest)
            else:
                if self._first is not None and now - self._first[0] >= self.settle_seconds:
                    # The first look's range, counted again now that it has settled (the
                    # oldest look: it ripens before any later one).
                    self._settled = self._count(connection, None, self._first[1])
                    self._first = None
                if highest is not None:
                    self._seen.append((now, highest))
                ripe = [mark for seen, mark in self._seen if now - seen >= self.settle_seconds]
                if ripe and max(ripe) > (self._mark or 0):
                    self._settled += self._count(connection, self._mark, max(ripe))
                    self._mark = max(ripe)
                self._seen = [(s, m) for s, m in self._seen if now - s < self.settle_seconds]
            # The newest rows are counted afresh: some may not have been visible before.
            found = Counter(self._settled)
            found += self._count(connection, self._mark, None)
            return found


def _count_sign_ins(
    connection: Connection, above: int | None, up_to: int | None
) -> Counter[tuple[str, str]]:
    """Sign-in audit rows by (action, detail) with above < id <= up_to."""
    a = AuditEvent
    query = select(a.action, a.detail, func.count()).where(a.action.in_(SIGN_IN_ACTIONS))
    if above is not None:
        query = query.where(a.id > above)
    if up_to is not None:
        query = query.where(a.id <= up_to)
    counts: Counter[tuple[str, str]] = Counter()
    for action, detail, count in connection.execute(query.group_by(a.action, a.detail)):
        # Only a successful sign-in's detail is worth a label (its method); a refusal's
        # says whether the directory could be asked, an account lock's names someone.
        if action == "sign_in.failed":
            detail = "directory_unreachable" if detail else ""
        elif action != "sign_in":
            detail = ""
        counts[(action, detail)] += count
    return counts


def _last_audit_id(connection: Connection) -> int | None:
    return connection.scalar(select(func.max(AuditEvent.id)))


def sign_in_tally(settle_seconds: float = 60.0) -> AppendOnlyTally:
    """A tally of sign-ins, refusals and account locks from the audit trail."""
    return AppendOnlyTally(_count_sign_ins, _last_audit_id, settle_seconds)


def locked_now(connection: Connection, now: datetime) -> dict[str, int]:
    """Sign-in locks in force now, by what is locked (account, person, client)."""
    t = SignInThrottle
    counts: Counter[str] = Counter()
    for (key,) in connection.execute(select(t.key).where(t.locked_until > now)):
        kind = str(key).split(":", 1)[0]
        counts[kind if kind in ("account", "person", "client") else "other"] += 1
    return dict(counts)


# ---------------------------------------------------------------------------
# All at once
# ---------------------------------------------------------------------------
def read_figures(
    session: Session,
    *,
    sources: list[str],
    stale_after: timedelta,
    sign_ins: AppendOnlyTally | None = None,
    now: datetime | None = None,
) -> Figures:
    """Every figure /metrics shows, from one roster session (the caller's transaction)."""
    now = now or utcnow()
    connection = session.connection()
    names = domain_names(connection)
    figures = Figures(now=now)
    figures.waiting = waiting(connection, names, now)
    figures.copies = standby_copies(connection, names)
    figures.messages_last_hour, figures.recipients_last_hour = last_hour(connection, names, now)
    figures.primaries = primaries(connection)
    figures.events = event_totals(connection, names)
    figures.monitor = monitor_lease(connection)
    figures.sync, health = sync_figures(session, sources, stale_after, now)
    degraded = {reason.source for reason in health.reasons}
    running = {run.source for run in health.runs if run.outcome == RUNNING}
    figures.sync_sources = {
        source: (source in running, source in degraded)
        for source in sorted(set(sources) | degraded | {run.source for run in health.runs})
    }
    if sign_ins is not None:
        try:
            # Apart, so that a count that fails (a statement timeout on a huge audit
            # trail) leaves the sign-ins out of this scrape, not every figure.
            with session.begin_nested():  # the SAVEPOINT at the next connection()
                figures.sign_ins = dict(sign_ins.read(session.connection()))
        except SQLAlchemyError as error:
            figures.sign_ins, figures.sign_ins_error = None, type(error).__name__
    figures.locked = locked_now(connection, now)
    return figures
