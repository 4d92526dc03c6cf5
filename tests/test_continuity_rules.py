"""The failover rules at their edges, each a sequence a mail administrator could live
through: an event started by hand while the primary answers, an event that starts while
a delivery batch is on its way, a primary that fails again at the hand-back (silent, or
answering with a refusal), mail that arrives during a hand-back that stops, and a
monitor that loses its lease during a slow check. Real aiosmtpd primaries, the real
queue runner and monitor, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.monitor import LEASE_NAME, Monitor
from gateway.runner import QueueRunner, RunnerSettings
from roster.config import Config
from roster.continuity import (
    RECOVERING,
    REOPENED,
    begin_recovery,
    event_counts,
    event_left,
    finish_recovery,
    open_event,
    record_check,
    start_event,
)
from roster.db import session_factory, transaction
from roster.locks import Lease
from roster.models import DELIVERED, ContinuityEvent, Domain, MailRecipient, utcnow
from roster.queue import Incoming, Recipient, new_queue_id, store, writing
from roster.service import end_event_by_hand
from roster.tracking import shown_status
from tests.servers.smtp import Primary
from tests.test_gateway import people


@pytest.fixture
def primary() -> Iterator[Primary]:
    """acme.test's primary, up."""
    server = Primary().start()
    yield server
    server.stop()


def acme(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalars(select(Domain.id).where(Domain.name == "acme.test")).one())


def receive(engine: Engine, domain_id: int, count: int = 1) -> list[str]:
    """``count`` messages for Ana stored as the receiver stores them; their queue ids."""
    queue_ids = []
    with writing(engine) as connection:
        for number in range(count):
            queue_id = new_queue_id()
            body = f"Subject: message {number}\r\n\r\nhello\r\n".encode()
            recipient = Recipient("ana@acme.test", domain_id, known=True)
            store(connection, [Incoming(queue_id, "x@sender.test", body, [recipient])])
            queue_ids.append(queue_id)
    return queue_ids


def runner(engine: Engine) -> QueueRunner:
    config = Config(
        database_url=engine.url.render_as_string(hide_password=False),
        gateway={"allow_local_primary": True, "hostname": "gw.test"},
    )
    return QueueRunner(engine, config, RunnerSettings(hostname="gw.test"), "runner-1")


def checks(engine: Engine, domain_id: int, ok: bool, count: int) -> Any:
    """``count`` checks of the monitor; the last transition."""
    transition = None
    for _ in range(count):
        with writing(engine) as connection:
            transition = record_check(connection, domain_id, ok, "250 ok" if ok else "refused")
    return transition


def event_of(engine: Engine, domain_id: int) -> Any:
    with engine.connect() as connection:
        return open_event(connection, domain_id)


def rows(engine: Engine, queue_ids: list[str]) -> dict[str, MailRecipient]:
    with Session(engine) as session:
        found = session.scalars(select(MailRecipient).where(MailRecipient.queue_id.in_(queue_ids)))
        return {row.queue_id: row for row in found}


def subjects(primary: Primary) -> list[bytes]:
    return [m.content.split(b"\r\n", 1)[0] for m in primary.messages]


def test_an_event_started_by_hand_waits_for_recover_after_good_checks(
    engine: Engine, primary: Primary
) -> None:
    """The primary answered its checks for a while; the admin starts an event by hand:
    the hand-back waits for ``recover_after`` (3) good checks counted from the start."""
    people(engine, primary.port)
    domain_id = acme(engine)
    assert checks(engine, domain_id, True, 5) is None
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="keep mail off the primary", actor="admin")
    assert checks(engine, domain_id, True, 2) is None
    assert event_of(engine, domain_id).recovery_started_at is None  # still held
    assert checks(engine, domain_id, True, 1).kind == RECOVERING


def test_a_batch_on_its_way_when_an_event_starts_sends_nothing_more(
    engine: Engine, primary: Primary
) -> None:
    """A runner claimed three messages; the event starts while the primary takes the
    first: the other two stay held, unclaimed, and go with the hand-back, once each."""
    people(engine, primary.port)
    domain_id = acme(engine)
    queue_ids = receive(engine, domain_id, 3)
    taken = primary.handler.handle_DATA

    async def take_then_fail(*args: Any) -> str:
        reply = await taken(*args)
        if len(primary.messages) == 1:
            with writing(engine) as connection:
                start_event(connection, domain_id, reason="by hand", actor="admin")
        return reply

    primary.handler.handle_DATA = take_then_fail  # type: ignore[method-assign]
    delivering = runner(engine)
    delivering.run_once()
    assert subjects(primary) == [b"Subject: message 0"]
    held = rows(engine, queue_ids[1:])
    assert all(row.status == "queued" and row.via_continuity for row in held.values())
    assert all(row.claimed_by is None for row in held.values())  # the hand-back may take them
    assert [shown_status(r.status, r.via_continuity) for r in held.values()] == ["deferred"] * 2
    # The hand-back: each of the two once, and the first not again.
    with writing(engine) as connection:
        begin_recovery(connection, event_of(engine, domain_id).id)
    delivering.run_once()
    assert sorted(subjects(primary)) == [f"Subject: message {n}".encode() for n in range(3)]


def test_a_primary_silent_again_at_the_hand_back_holds_the_mail_again(
    engine: Engine, primary: Primary
) -> None:
    """The primary passes its checks, the hand-back starts, and it is down again when the
    runner connects: the mail is held again and the event stays open (it does not end
    with nothing handed back); when the primary is really back, all of it goes, once."""
    people(engine, primary.port)
    domain_id = acme(engine)
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="down", actor="monitor")
    queue_ids = receive(engine, domain_id, 3)
    assert checks(engine, domain_id, True, 3).kind == RECOVERING
    primary.stop()
    delivering = runner(engine)
    assert delivering.run_once() == 3  # connection refused
    event = event_of(engine, domain_id)
    assert event is not None and event.recovery_started_at is None  # held again
    with writing(engine) as connection:
        assert finish_recovery(connection, event.id) is None  # the monitor's next tick
    primary.start()
    assert checks(engine, domain_id, True, 3).kind == RECOVERING
    delivering.run_once()
    with writing(engine) as connection:
        assert finish_recovery(connection, event.id) is not None
    assert sorted(subjects(primary)) == [f"Subject: message {n}".encode() for n in range(3)]
    with Session(engine) as session:
        ended = session.get(ContinuityEvent, event.id)
        assert ended is not None and (ended.held, ended.handed_back) == (3, 3)
    assert {row.status for row in rows(engine, queue_ids).values()} == {DELIVERED}


def test_a_primary_that_refuses_during_the_hand_back_is_not_held_again(
    engine: Engine, primary: Primary
) -> None:
    """A primary that answers, but closes with 421 (too many connections), is alive: the
    hand-back goes on, the message waits for its next try as ordinary mail."""
    people(engine, primary.port)
    domain_id = acme(engine)
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="down", actor="monitor")
    [queue_id] = receive(engine, domain_id)
    assert checks(engine, domain_id, True, 3).kind == RECOVERING
    primary.handler.data_reply = "421 4.7.0 Too many connections, try again later"
    runner(engine).run_once()
    event = event_of(engine, domain_id)
    assert event.recovery_started_at is not None  # still handing back
    row = rows(engine, [queue_id])[queue_id]
    assert row.status == "deferred" and row.last_reply.startswith("421")


def test_mail_that_came_during_a_hand_back_that_stopped_is_held_like_the_rest(
    engine: Engine, primary: Primary
) -> None:
    """Mail that arrives while the hand-back runs goes to the primary like any other;
    when a failed check stops the hand-back, it is held: Email Live Tracking says so,
    and the event counts it."""
    people(engine, primary.port)
    domain_id = acme(engine)
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="down", actor="monitor")
    assert checks(engine, domain_id, True, 3).kind == RECOVERING
    [queue_id] = receive(engine, domain_id)
    assert not rows(engine, [queue_id])[queue_id].via_continuity  # not held: going now
    assert checks(engine, domain_id, False, 1).kind == REOPENED
    row = rows(engine, [queue_id])[queue_id]
    assert row.via_continuity and shown_status(row.status, row.via_continuity) == "deferred"
    with engine.connect() as connection:
        event = open_event(connection, domain_id)
        assert event_counts(connection, domain_id, event.started_at) == (1, 0)


def test_a_monitor_that_lost_its_lease_during_a_slow_check_records_nothing(
    engine: Engine, primary: Primary
) -> None:
    """A primary that answers slowly keeps the monitor's check past its lease, and
    another gateway's monitor takes over: the first one's result is not counted too."""
    people(engine, primary.port)
    domain_id = acme(engine)
    config = Config(
        database_url=engine.url.render_as_string(hide_password=False),
        gateway={"allow_local_primary": True, "hostname": "gw.test"},
    )
    monitor = Monitor(engine, config, hostname="gw.test")
    monitor.lease = Lease(engine, LEASE_NAME, 1)
    assert monitor._hold()  # noqa: SLF001 - elected
    primary.handler.hang = 2.5  # RCPT answered after 2.5 s: the lease lapses meanwhile
    other = Lease(engine, LEASE_NAME, 60)

    def take_over() -> None:
        time.sleep(1.6)
        other.acquire()

    taker = threading.Thread(target=take_over)
    taker.start()
    monitor.run_once()
    taker.join()
    with Session(engine) as session:
        domain = session.get(Domain, domain_id)
        assert domain is not None and domain.last_check_at is None
    assert not monitor.holding
    other.release()


def test_the_hand_back_counts_the_mail_that_waited_when_the_event_started(
    engine: Engine, primary: Primary
) -> None:
    """Mail deferred while the primary was failing, and mail not tried yet, is held by
    the event from its start: the hand-back's "of M" counts it from the first page."""
    people(engine, primary.port)
    domain_id = acme(engine)
    primary.stop()
    [deferred] = receive(engine, domain_id)
    runner(engine).run_once()  # connection refused: deferred
    assert rows(engine, [deferred])[deferred].status == "deferred"
    receive(engine, domain_id)  # not tried yet
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="down", actor="monitor")
    receive(engine, domain_id)  # during the event
    event = event_of(engine, domain_id)
    with engine.connect() as connection:
        assert event_counts(connection, domain_id, event.started_at) == (3, 0)
        assert event_left(connection, domain_id, event.started_at) == 3


def test_a_held_message_the_primary_refuses_for_good_is_not_left_to_hand_back(
    engine: Engine, primary: Primary
) -> None:
    people(engine, primary.port)
    domain_id = acme(engine)
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="down", actor="monitor")
    receive(engine, domain_id)
    with writing(engine) as connection:
        recipient = Recipient("sales@acme.test", domain_id, known=True)
        body = b"Subject: to sales\r\n\r\nhello\r\n"
        store(connection, [Incoming(new_queue_id(), "x@sender.test", body, [recipient])])
    assert checks(engine, domain_id, True, 3).kind == RECOVERING
    primary.handler.replies["sales@acme.test"] = "550 5.1.1 No such user here"
    runner(engine).run_once()
    event = event_of(engine, domain_id)
    with engine.connect() as connection:
        assert event_counts(connection, domain_id, event.started_at) == (2, 1)
        assert event_left(connection, domain_id, event.started_at) == 0


def by_hand(engine: Engine, domain_id: int) -> None:
    """An admin presses End continuity event."""
    with transaction(session_factory(engine), writing=True) as session:
        domain = session.get(Domain, domain_id)
        assert domain is not None
        end_event_by_hand(session, domain, "boss@acme.test")


def test_an_event_ended_by_hand_is_ended_by_the_admin_unless_the_primary_fails_again(
    engine: Engine, primary: Primary
) -> None:
    people(engine, primary.port)
    domain_id = acme(engine)
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="maintenance", actor="admin@acme.test")
    receive(engine, domain_id)
    by_hand(engine, domain_id)
    runner(engine).run_once()
    event = event_of(engine, domain_id)
    with writing(engine) as connection:
        assert finish_recovery(connection, event.id) is not None
    with Session(engine) as session:
        ended = session.get(ContinuityEvent, event.id)
        assert ended is not None and ended.ended_by == "boss@acme.test"

    # Ended by hand, then the primary fails again: the monitor's own end, later.
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="again", actor="admin@acme.test")
    by_hand(engine, domain_id)
    assert checks(engine, domain_id, False, 1).kind == REOPENED
    assert checks(engine, domain_id, True, 3).kind == RECOVERING
    second = event_of(engine, domain_id)
    with writing(engine) as connection:
        ended_now = finish_recovery(connection, second.id)
    assert ended_now is not None
    with Session(engine) as session:
        again = session.get(ContinuityEvent, second.id)
        assert again is not None and again.ended_by == "monitor"


def test_a_delay_notice_for_held_mail_gives_the_held_mails_deadline(
    engine: Engine, primary: Primary
) -> None:
    """Held mail lives max_held_days (30), not the ordinary 5: a sender told of a delay
    during the hand-back is given that deadline."""
    people(engine, primary.port)
    domain_id = acme(engine)
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="down", actor="monitor")
    received = utcnow() - timedelta(days=10)
    with writing(engine) as connection:
        recipient = Recipient("ana@acme.test", domain_id, known=True)
        body = b"From: x@sender.test\r\nSubject: held\r\n\r\nhello\r\n"
        incoming = Incoming(
            new_queue_id(), "x@sender.test", body, [recipient], received_at=received
        )
        store(connection, [incoming])
    assert checks(engine, domain_id, True, 3).kind == RECOVERING
    primary.handler.rcpt_reply = "451 4.3.0 try later"
    relay = Primary().start()
    try:
        delivering = QueueRunner(
            engine,
            Config(
                database_url=engine.url.render_as_string(hide_password=False),
                gateway={"allow_local_primary": True, "hostname": "gw.test"},
            ),
            RunnerSettings(hostname="gw.test", relay=("127.0.0.1", relay.port)),
            "runner-1",
        )
        delivering.run_once()  # deferred, and a delay notice queued
        delivering.run_once()  # the notice goes out
        [notice] = relay.handler.wait_for(1)
    finally:
        relay.stop()
    found = re.search(rb"Will-Retry-Until: ([^\r\n]+)", notice.content)
    assert found is not None
    until = parsedate_to_datetime(found.group(1).decode())
    assert abs(until - (received + timedelta(days=30))) < timedelta(seconds=2)
