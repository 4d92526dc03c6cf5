"""The mail path's commands: ``continuity gateway``, ``continuity queue``,
``continuity tracking`` and ``continuity event``.

Registered on the ``continuity`` group by continuity.cli; kept apart so that the command
line stays one module a subject.
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click
from sqlalchemy import select

from continuity.cli import EXIT_USAGE, State, fail, pass_state
from roster.config import ConfigError
from roster.continuity import RECOVERING, open_event, record_check
from roster.domains import get_domain
from roster.models import Domain
from roster.queue import message_detail, pending_messages, retry_now, writing


@click.group(invoke_without_command=True)
@click.pass_context
def gateway(ctx: click.Context) -> None:
    """Run the gateway: receive mail, deliver it to the primary, copy it to the standby
    (`gateway health`: is the mail path healthy)."""
    if ctx.invoked_subcommand is not None:
        return
    from gateway.service import Gateway

    state: State = ctx.obj
    state.require_schema()
    try:
        running = Gateway(state.config, engine=state.engine)
    except ConfigError as error:
        fail(f"configuration error: {error}", EXIT_USAGE)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    try:
        running.start()
    except OSError as error:
        fail(f"the gateway cannot listen: {error}", 1)
    click.echo(f"gateway: listening on {running.settings.host}:{running.settings.port}", err=True)
    stop.wait()
    running.stop()


@click.group()
def queue() -> None:
    """The mail queue: what waits for delivery, one message, retry now."""


def _when(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


@queue.command("list")
@click.option("--domain", "domain_name", help="Only messages with recipients in this domain.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def queue_list(state: State, domain_name: str | None, as_json: bool) -> None:
    """List the messages still waiting for delivery, oldest first."""
    state.require_schema()
    with state.session() as session:
        domain_id = get_domain(session, domain_name).id if domain_name else None
        rows = pending_messages(session, domain_id=domain_id)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "queue_id": r.queue_id,
                        "received_at": _when(r.received_at),
                        "sender": r.sender,
                        "size": r.size,
                        "recipients": r.recipients,
                        "pending": r.pending,
                        "next_attempt_at": _when(r.next_attempt_at),
                        "last_reply": r.last_reply,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        click.echo("the queue is empty")
        return
    for r in rows:
        click.echo(
            f"{r.queue_id}  {_when(r.received_at)}  {r.size:>9}  <{r.sender}>  "
            f"{r.pending}/{r.recipients} pending  next {_when(r.next_attempt_at)}  {r.last_reply}"
        )


@queue.command("show")
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def queue_show(state: State, queue_id: str, as_json: bool) -> None:
    """Show one message: its envelope and each recipient's and standby copy's state."""
    state.require_schema()
    with state.session() as session:
        found = message_detail(session, queue_id.strip().upper())
        if found is None:
            fail(f"no message with queue id {queue_id}", 1)
        m = found.message
        shown: dict[str, Any] = {
            "queue_id": m.queue_id,
            "received_at": _when(m.received_at),
            "sender": m.sender,
            "size": m.size,
            "message_id": m.message_id,
            "client": m.client_address,
            "helo": m.helo,
            "origin": m.origin,
            "recipients": [
                {
                    "address": r.address,
                    "route": r.route,
                    "status": r.status,
                    "attempts": r.attempts,
                    "next_attempt_at": _when(r.next_attempt_at)
                    if r.status in ("queued", "deferred")
                    else None,
                    "delivered_at": _when(r.delivered_at),
                    "last_reply": r.last_reply,
                }
                for r in found.recipients
            ],
            "standby_copies": [
                {
                    "mailbox": c.mailbox,
                    "status": c.status,
                    "attempts": c.attempts,
                    "copied_at": _when(c.copied_at),
                    "last_reply": c.last_reply,
                }
                for c in found.copies
            ],
        }
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    for key in ("queue_id", "received_at", "sender", "size", "message_id", "client", "helo"):
        click.echo(f"{key}: {shown[key]}")
    for r in shown["recipients"]:
        click.echo(
            f"recipient {r['address']}: {r['status']}, {r['attempts']} attempt(s)"
            + (f", next {r['next_attempt_at']}" if r["next_attempt_at"] else "")
            + (f", delivered {r['delivered_at']}" if r["delivered_at"] else "")
            + (f", last reply: {r['last_reply']}" if r["last_reply"] else "")
        )
    for c in shown["standby_copies"]:
        click.echo(
            f"standby copy {c['mailbox']}: {c['status']}"
            + (f" {c['copied_at']}" if c["copied_at"] else "")
            + (f", last reply: {c['last_reply']}" if c["last_reply"] else "")
        )


@queue.command("retry")
@click.argument("queue_id", required=False)
@click.option("--domain", "domain_name", help="Every waiting message of this domain.")
@pass_state
def queue_retry(state: State, queue_id: str | None, domain_name: str | None) -> None:
    """Make a message (or a domain's waiting messages) due now: the gateway tries at once.

    During a continuity event nothing is sent to the primary until its hand-back; a
    retry then checks the primary at once, as the monitor does, and a success counts
    toward the recovery that starts the hand-back.
    """
    if bool(queue_id) == bool(domain_name):
        fail("give either a QUEUE_ID or --domain D", EXIT_USAGE)
    state.require_schema()
    with state.session(writing=True) as session:
        if domain_name:
            domain_ids = [get_domain(session, domain_name).id]
            count = retry_now(session, domain_id=domain_ids[0])
        else:
            assert queue_id is not None  # noqa: S101 - checked just above
            found = message_detail(session, queue_id.strip().upper())
            if found is None:
                fail(f"no message with queue id {queue_id}", 1)
            domain_ids = sorted({r.domain_id for r in found.recipients if r.domain_id})
            count = retry_now(session, queue_id=queue_id.strip().upper())
    click.echo(f"{count} recipient(s) due now")
    for domain_id in domain_ids:
        _check_held_primary(state, domain_id)


def _check_held_primary(state: State, domain_id: int) -> None:
    """For a domain in a continuity event (not yet handing back): check its primary now
    and count the answer as the monitor would."""
    from gateway.monitor import check_primary
    from gateway.service import settings_from

    with state.engine.connect() as connection:
        event = open_event(connection, domain_id)
        if event is None or event.recovery_started_at is not None:
            return
        domain = connection.execute(select(Domain).where(Domain.id == domain_id)).one()
    settings = settings_from(state.config)
    ok, reply = check_primary(
        state.config, domain, helo=settings.hostname, ca_file=settings.ca_file
    )
    with writing(state.engine) as connection:
        transition = record_check(connection, domain_id, ok, reply)
    if transition is not None and transition.kind == RECOVERING:
        click.echo(f"{domain.name}: the primary answers again: the hand-back starts")
    elif ok:
        click.echo(
            f"{domain.name}: the primary answered ({reply}); the hand-back starts "
            f"after {domain.recover_after} good checks in a row"
        )
    else:
        click.echo(f"{domain.name}: the primary still fails ({reply}); mail stays held")


# ---------------------------------------------------------------------------
# Continuity events by hand
# ---------------------------------------------------------------------------
@click.group()
def event() -> None:
    """Continuity events: start one by hand, end it (the hand-back), list them."""


@event.command("start")
@click.argument("name")
@click.option("--reason", default="", help="Why, in words (kept with the event).")
@pass_state
def event_start(state: State, name: str, reason: str) -> None:
    """Start a continuity event: the domain's mail is held, nothing goes to its primary."""
    from continuity.cli import actor
    from roster.domains import Refused
    from roster.service import start_event_by_hand

    state.require_schema()
    with state.session(writing=True) as session:
        found = get_domain(session, name)
        try:
            event_id = start_event_by_hand(session, found, actor(), reason)
        except Refused as refused:
            fail(str(refused), 1)
    click.echo(
        f"continuity event {event_id} started for {found.name}: its mail is held and kept"
        " in the standby store until the event ends"
    )


@event.command("end")
@click.argument("name")
@pass_state
def event_end(state: State, name: str) -> None:
    """End the open continuity event: the held mail is handed back to the primary."""
    from continuity.cli import actor
    from roster.domains import Refused
    from roster.service import end_event_by_hand

    state.require_schema()
    with state.session(writing=True) as session:
        found = get_domain(session, name)
        try:
            event_id = end_event_by_hand(session, found, actor())
        except Refused as refused:
            fail(str(refused), 1)
    click.echo(
        f"continuity event {event_id} of {found.name} is handing its mail back to the"
        " primary, oldest first; it ends when none is left"
    )


@event.command("list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def event_list(state: State, name: str, as_json: bool) -> None:
    """List the domain's continuity events, newest first, with their counts."""
    from roster.models import utcnow
    from roster.service import events_page

    state.require_schema()
    now = utcnow()
    with state.session() as session:
        found = get_domain(session, name)
        rows, total = events_page(session, found, per_page=1_000_000)
    shown: list[dict[str, Any]] = [
        {
            "id": row.id,
            "state": row.state,
            "started_at": _when(row.started_at),
            "ended_at": _when(row.ended_at),
            "cause": row.cause,
            "started_by": row.started_by,
            "ended_by": row.ended_by,
            "recovery_started_at": _when(row.recovery_started_at),
            "held": row.held,
            "handed_back": row.handed_back,
            "duration_seconds": int(row.duration(now).total_seconds()),
        }
        for row in rows
    ]
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    if not shown:
        click.echo(f"no continuity events for {found.name}")
        return
    for e in shown:
        click.echo(
            f"{e['id']}  {e['state']:<10}  {e['started_at']} .. {e['ended_at'] or 'now'}"
            f"  {_duration(e['duration_seconds'])}  held {e['held']}, handed back"
            f" {e['handed_back']}  started by {e['started_by']}"
            + (f", ended by {e['ended_by']}" if e["ended_by"] else "")
            + (f"  cause: {e['cause']}" if e["cause"] else "")
        )


def _duration(seconds: int) -> str:
    """A duration as 1d 2h 3m (or seconds when under a minute)."""
    if seconds < 60:
        return f"{seconds}s"
    days, rest = divmod(seconds // 60, 24 * 60)
    hours, minutes = divmod(rest, 60)
    return (
        " ".join(f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n)
        or "0m"
    )


# ---------------------------------------------------------------------------
# Email Live Tracking
# ---------------------------------------------------------------------------
@click.group()
def tracking() -> None:
    """Email Live Tracking: a domain's mail newest first, one message's timeline."""


_SHOWN_WORDS = {
    "delivered": "Delivered",
    "deferred": "Deferred",
    "bounced": "Bounced",
    "refused": "Refused",
    "queued": "Queued",
}


def _moment(value: str | None, option: str) -> Any:
    """A time typed on the command line (ISO 8601 in UTC, or 2h / 3d ago)."""
    from roster.tracking import parse_time

    if not value:
        return None
    moment = parse_time(value)
    if moment is None:
        fail(f"{option}: give a time as 2026-11-30T14:05 (UTC) or 2h, 3d ago", EXIT_USAGE)
    return moment


@tracking.command("list")
@click.argument("name")
@click.option(
    "--status",
    type=click.Choice(["delivered", "deferred", "bounced", "refused", "queued"]),
    help="Only messages with a recipient shown with this status.",
)
@click.option("--continuity", is_flag=True, help="Only mail delivered via Continuity Service.")
@click.option("--since", help="Received at or after (2026-11-30T14:05 UTC, or 2h, 3d ago).")
@click.option("--until", help="Received before.")
@click.option("--sender", default="", help="Only this sender address.")
@click.option("--recipient", default="", help="Only this recipient address.")
@click.option("--older", help="The key an earlier page printed: the page after it.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def tracking_list(
    state: State,
    name: str,
    status: str | None,
    continuity: bool,
    since: str | None,
    until: str | None,
    sender: str,
    recipient: str,
    older: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List a domain's messages, newest first, with each recipient's status."""
    from roster.tracking import Filters, list_messages, parse_key

    filters = Filters(
        since=_moment(since, "--since"),
        until=_moment(until, "--until"),
        sender=sender,
        recipient=recipient,
        status=status or "",
        continuity=continuity,
    )
    key = parse_key(older) if older else None
    if older and key is None:
        fail("--older: give the key a page printed (digits, a dash, a queue id)", EXIT_USAGE)
    state.require_schema()
    with state.session() as session:
        found = get_domain(session, name)
        page = list_messages(session, found.id, filters, older_than=key, limit=limit)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "messages": [
                        {
                            "queue_id": m.queue_id,
                            "received_at": _when(m.received_at),
                            "sender": m.sender,
                            "size": m.size,
                            "message_id": m.message_id,
                            "recipients": [
                                {
                                    "address": r.address,
                                    "status": r.shown,
                                    "via_continuity": r.via_continuity,
                                }
                                for r in m.recipients
                            ],
                        }
                        for m in page.messages
                    ],
                    "older": page.older.text() if page.older else None,
                },
                indent=2,
            )
        )
        return
    if not page.messages:
        click.echo("no message matches")
        return
    for m in page.messages:
        shown = ", ".join(
            f"{r.address} {_SHOWN_WORDS[r.shown]}"
            + (" (via Continuity Service)" if r.via_continuity else "")
            for r in m.recipients
        )
        click.echo(f"{_when(m.received_at)}  {m.queue_id}  <{m.sender}>  {shown}")
    if page.older:
        click.echo(f"older messages: add --older {page.older.text()}")


@tracking.command("show")
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def tracking_show(state: State, queue_id: str, as_json: bool) -> None:
    """Show one message: each recipient's status and the message's timeline."""
    from roster.tracking import as_json as plain
    from roster.tracking import clean_queue_id, message_tracking

    cleaned = clean_queue_id(queue_id)
    state.require_schema()
    with state.session() as session:
        found = message_tracking(session, cleaned) if cleaned else None
        if found is None:
            fail(f"no message with queue id {queue_id}", 1)
        shown = {
            "queue_id": found.queue_id,
            "received_at": plain(found.received_at),
            "sender": found.sender,
            "size": found.size,
            "message_id": found.message_id,
            "client": found.client_address,
            "recipients": [
                {
                    "address": r.address,
                    "status": r.shown,
                    "queue_status": r.status,
                    "via_continuity": r.via_continuity,
                    "attempts": r.attempts,
                    "last_reply": r.last_reply,
                    "next_attempt_at": plain(r.next_attempt_at),
                    "delivered_at": plain(r.delivered_at),
                    "handed_back_at": plain(r.handed_back_at),
                    "standby": r.standby_status,
                    "standby_copied_at": plain(r.standby_copied_at),
                }
                for r in found.recipients
            ],
            "timeline": [
                {"at": plain(s.at), "step": s.kind, "address": s.address, "detail": s.detail}
                for s in found.timeline
            ],
            "continuity_events": [
                {
                    "id": e.id,
                    "started_at": plain(e.started_at),
                    "ended_at": plain(e.ended_at),
                    "cause": e.reason,
                }
                for e in found.events
            ],
        }
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    for key in ("queue_id", "received_at", "sender", "size", "message_id", "client"):
        click.echo(f"{key}: {shown[key]}")
    for r in shown["recipients"]:
        click.echo(
            f"recipient {r['address']}: {_SHOWN_WORDS[r['status']]}"
            + (" via Continuity Service" if r["via_continuity"] else "")
            + f", {r['attempts']} attempt(s)"
            + (f", handed back {r['handed_back_at']}" if r["handed_back_at"] else "")
            + (
                f", delivered {r['delivered_at']}"
                if r["delivered_at"] and not r["handed_back_at"]
                else ""
            )
            + (f", standby copy {r['standby']}" if r["standby"] else ", not covered")
            + (f" {r['standby_copied_at']}" if r["standby_copied_at"] else "")
            + (f", last reply: {r['last_reply']}" if r["last_reply"] else "")
        )
    for s in shown["timeline"]:
        click.echo(
            f"  {s['at']}  {s['step']}"
            + (f" {s['address']}" if s["address"] else "")
            + (f" ({s['detail']})" if s["detail"] else "")
        )
