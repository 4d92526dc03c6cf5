"""Continuity events: when a domain's primary has failed, how the failure is counted, and
how an event starts, enters recovery (the hand-back) and ends.

The gateway's monitor and its delivery runners report what they see of a primary with
``record_check``; the rules of when that starts or ends an event live here, so that an
admin starting or ending one by hand (Control Panel, command line) goes through the same
steps. While an event is open and not recovering, nothing is delivered to the domain's
primary; in recovery the held mail goes back oldest first, and when none is left the
event ends with its counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, func, insert, or_, select, update

from roster.models import (
    PENDING_STATES,
    ROUTE_PRIMARY,
    ContinuityEvent,
    Domain,
    MailMessage,
    MailRecipient,
    utcnow,
)

STARTED = "started"
RECOVERING = "recovering"
REOPENED = "reopened"
ENDED = "ended"


@dataclass(frozen=True)
class Transition:
    """What a check (or an admin) changed: an event started, entered recovery, failed
    again during recovery, or ended."""

    kind: str
    domain_id: int
    event_id: int
    reason: str = ""


def open_event(connection: Connection, domain_id: int) -> Any:
    """The domain's event that has not ended (a row of continuity_event), or None."""
    return connection.execute(
        select(ContinuityEvent)
        .where(ContinuityEvent.domain_id == domain_id, ContinuityEvent.ended_at.is_(None))
        .order_by(ContinuityEvent.id.desc())
        .limit(1)
    ).first()


def held_domains_clause() -> Select[Any]:
    """Domains whose primary gets nothing now: an event is open and not recovering."""
    return select(ContinuityEvent.domain_id).where(
        ContinuityEvent.ended_at.is_(None), ContinuityEvent.recovery_started_at.is_(None)
    )


def failure_counts(code: int, failover_codes: str) -> bool:
    """True when a refused recipient's reply ``code`` counts as a failure of the whole
    server for this domain (the admin listed it, e.g. 452 or 552 for a full disk)."""
    listed = {part.strip() for part in failover_codes.split(",") if part.strip()}
    return str(code) in listed


def record_check(
    connection: Connection,
    domain_id: int,
    ok: bool,
    reply: str,
    *,
    by_monitor: bool = True,
    silent: bool = False,
    now: datetime | None = None,
) -> Transition | None:
    """Record one check of a domain's primary (the monitor's, or a real delivery's) and
    apply the failover rules; the transition it caused, if any (caller commits).

    A real delivery (``by_monitor=False``) counts failures toward failover but its
    successes do not end an event: only the monitor's checks (or an admin's retry) do.
    A delivery's failure stops a hand-back only when the primary did not answer at all
    (``silent``: no connection, a timeout, a failed TLS handshake): it is down again.
    One that answered with a refusal (421, too many connections) is alive and busy.
    """
    now = now or utcnow()
    # Counted in the database (not read, then written): two writers at once each count.
    connection.execute(
        update(Domain)
        .where(Domain.id == domain_id)
        .values(
            last_check_at=now,
            last_check_ok=ok,
            last_check_reply=reply[:300],
            failures_in_a_row=0 if ok else Domain.failures_in_a_row + 1,
            successes_in_a_row=Domain.successes_in_a_row + 1 if ok else 0,
        )
    )
    domain = connection.execute(
        select(
            Domain.continuity_active,
            Domain.failover_automatic,
            Domain.failures_before_failover,
            Domain.recover_after,
            Domain.failures_in_a_row,
            Domain.successes_in_a_row,
        ).where(Domain.id == domain_id)
    ).one()
    failures, successes = domain.failures_in_a_row, domain.successes_in_a_row
    if not domain.failover_automatic:
        return None
    event = open_event(connection, domain_id)
    if not ok:
        # Only an active domain starts an event: the monitor watches those alone, and one
        # it does not watch would never see its hand-back begin.
        if (
            event is None
            and domain.continuity_active
            and failures >= domain.failures_before_failover
        ):
            return start_event(connection, domain_id, reason=reply, actor="monitor", now=now)
        # A hand-back is stopped by the monitor's checks, and by a delivery the primary
        # did not answer; a delivery it refused (a primary limiting connections) must
        # not hold the mail again.
        if (by_monitor or silent) and event is not None and event.recovery_started_at is not None:
            connection.execute(
                update(ContinuityEvent)
                .where(ContinuityEvent.id == event.id)
                .values(recovery_started_at=None, ended_by=None)  # an admin's End too
            )
            # Mail that came in during the hand-back is held now, like the rest.
            _hold_waiting(connection, domain_id)
            return Transition(REOPENED, domain_id, event.id, reply)
        return None
    if (
        by_monitor
        and event is not None
        and event.recovery_started_at is None
        and successes >= domain.recover_after
    ):
        return begin_recovery(connection, event.id, now=now)
    return None


def start_event(
    connection: Connection,
    domain_id: int,
    *,
    reason: str,
    actor: str,
    now: datetime | None = None,
) -> Transition:
    """Open a continuity event (or return the open one): mail for the domain is held
    from now on, and what already waits for its primary counts as held."""
    now = now or utcnow()
    found = open_event(connection, domain_id)
    if found is not None:
        return Transition(STARTED, domain_id, found.id, found.reason)
    event_id = connection.execute(
        insert(ContinuityEvent)
        .values(domain_id=domain_id, started_at=now, reason=reason[:1000], started_by=actor)
        .returning(ContinuityEvent.id)
    ).scalar_one()
    # The hand-back waits for ``recover_after`` good checks counted from now: an event
    # started by hand while the primary answered would otherwise hand back at once.
    connection.execute(update(Domain).where(Domain.id == domain_id).values(successes_in_a_row=0))
    _hold_waiting(connection, domain_id)
    return Transition(STARTED, domain_id, event_id, reason)


def _waiting_for_primary(domain_id: int) -> ColumnElement[bool]:
    """A domain's recipients that still wait for its primary."""
    return and_(
        MailRecipient.domain_id == domain_id,
        MailRecipient.route == ROUTE_PRIMARY,
        MailRecipient.status.in_(PENDING_STATES),
    )


def _hold_waiting(connection: Connection, domain_id: int, **values: Any) -> None:
    """Mark what waits for the domain's primary as held by its event (received via
    Continuity: Email Live Tracking says so, it keeps the held mail's lifetime and the
    event counts it), setting ``values`` too."""
    connection.execute(
        update(MailRecipient)
        .where(_waiting_for_primary(domain_id))
        .values(via_continuity=True, **values)
    )


def begin_recovery(
    connection: Connection,
    event_id: int,
    *,
    actor: str | None = None,
    now: datetime | None = None,
) -> Transition:
    """The primary answers again (or an admin, ``actor``, ends the event by hand): hand
    the held mail back, oldest first. The event ends once it is all back, ended by
    ``actor`` when one is given."""
    now = now or utcnow()
    event = connection.execute(select(ContinuityEvent).where(ContinuityEvent.id == event_id)).one()
    connection.execute(
        update(ContinuityEvent)
        .where(ContinuityEvent.id == event_id, ContinuityEvent.recovery_started_at.is_(None))
        .values(recovery_started_at=now, ended_by=actor)
    )
    # Due now, in the order they arrived: claims take the oldest first. Everything that
    # waits was held (a message stored as the event started, its mark decided a moment
    # before, is marked here too).
    _hold_waiting(connection, event.domain_id, next_attempt_at=now)
    return Transition(RECOVERING, event.domain_id, event_id)


def finish_recovery(
    connection: Connection, event_id: int, *, actor: str = "monitor"
) -> Transition | None:
    """End an event in recovery once every message it held has been offered to the
    primary since the hand-back began. One that was then deferred for a reason of its own
    (a full mailbox) goes on as ordinary mail; the event does not wait for it."""
    event = connection.execute(select(ContinuityEvent).where(ContinuityEvent.id == event_id)).one()
    if event.ended_at is not None or event.recovery_started_at is None:
        return None
    waiting = connection.scalar(
        select(func.count(MailRecipient.id)).where(
            _waiting_for_primary(event.domain_id),
            MailRecipient.via_continuity.is_(True),
            or_(
                MailRecipient.last_attempt_at.is_(None),
                MailRecipient.last_attempt_at < event.recovery_started_at,
            ),
        )
    )
    if waiting:
        return None
    return end_event(connection, event_id, actor=actor)


def end_event(
    connection: Connection, event_id: int, *, actor: str, now: datetime | None = None
) -> Transition:
    """Close an event with its counts: recipients held, and handed back to the primary.
    Ended by whoever began its hand-back by hand (``begin_recovery``'s ``actor``), else
    by ``actor``."""
    now = now or utcnow()
    event = connection.execute(select(ContinuityEvent).where(ContinuityEvent.id == event_id)).one()
    held, handed_back = event_counts(connection, event.domain_id, event.started_at)
    connection.execute(
        update(ContinuityEvent)
        .where(ContinuityEvent.id == event_id)
        .values(
            ended_at=now,
            ended_by=func.coalesce(ContinuityEvent.ended_by, actor),
            held=held,
            handed_back=handed_back,
        )
    )
    return Transition(ENDED, event.domain_id, event_id)


def event_counts(connection: Connection, domain_id: int, started_at: datetime) -> tuple[int, int]:
    """Recipients held by the domain's event that started at ``started_at``, and how many
    of them the primary has taken back so far: the counts an event ends with, and the
    hand-back's progress while it runs."""
    counted = select(func.count(MailRecipient.id)).join(
        MailMessage, MailMessage.queue_id == MailRecipient.queue_id
    )
    during = _held_by(domain_id, started_at)
    held = connection.scalar(counted.where(during)) or 0
    handed_back = (
        connection.scalar(counted.where(during, MailRecipient.delivered_at >= started_at)) or 0
    )
    return held, handed_back


def event_left(connection: Connection, domain_id: int, started_at: datetime) -> int:
    """Recipients held by the domain's event that started at ``started_at`` and still
    waiting: the hand-back's "left" (one the primary refused for good has left too)."""
    return (
        connection.scalar(
            select(func.count(MailRecipient.id))
            .join(MailMessage, MailMessage.queue_id == MailRecipient.queue_id)
            .where(_held_by(domain_id, started_at), MailRecipient.status.in_(PENDING_STATES))
        )
        or 0
    )


def _held_by(domain_id: int, started_at: datetime) -> ColumnElement[bool]:
    """The domain's recipients held by its event that started at ``started_at``: via
    Continuity, and arrived during it, or waiting when it started (deferred while the
    primary was failing, or not tried yet: start_event marks them) and tried since or
    waiting still."""
    return and_(
        MailRecipient.domain_id == domain_id,
        MailRecipient.via_continuity.is_(True),
        or_(
            MailMessage.received_at >= started_at,
            MailRecipient.last_attempt_at >= started_at,
            MailRecipient.status.in_(PENDING_STATES),
        ),
    )


def domain_states(connection: Connection, domain_ids: list[int] | None = None) -> dict[int, str]:
    """The continuity state of each domain (of ``domain_ids``, or every one) with an
    event not ended: "outage" (its mail is held) or "recovering" (handed back now); a
    domain without one is left out."""
    if domain_ids is not None and not domain_ids:
        return {}
    query = select(ContinuityEvent.domain_id, ContinuityEvent.recovery_started_at).where(
        ContinuityEvent.ended_at.is_(None)
    )
    if domain_ids is not None:
        query = query.where(ContinuityEvent.domain_id.in_(domain_ids))
    rows = connection.execute(query.order_by(ContinuityEvent.id))
    return {
        domain_id: "outage" if recovery_started_at is None else RECOVERING
        for domain_id, recovery_started_at in rows
    }


def events_in_recovery(connection: Connection) -> list[int]:
    """Ids of the events handing mail back now."""
    return list(
        connection.scalars(
            select(ContinuityEvent.id).where(
                ContinuityEvent.ended_at.is_(None),
                ContinuityEvent.recovery_started_at.is_not(None),
            )
        )
    )


def held_now(domain_id: Any) -> ColumnElement[bool]:
    """True, in SQL, when ``domain_id``'s mail is held now (an open event, not yet
    handing back): a recipient stored then is received via Continuity; during the
    hand-back new mail goes to the primary like any other."""
    return held_domains_clause().where(ContinuityEvent.domain_id == domain_id).exists()
