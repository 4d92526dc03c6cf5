"""Delivery batches against primaries that behave as real ones do at the edges: one
that refuses the DATA command itself (Postfix's smtpd_data_restrictions: the
transaction stays open), one that drops the connection at XFORWARD, one that greets
with 554, and one so slow that a message outlasts its claim. Each message keeps its
own fate: nothing else in the batch is bounced for it, nothing is left unrecorded,
nothing is sent twice."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from continuity.localslapd import free_port
from gateway.runner import QueueRunner, RunnerSettings
from roster.config import Config
from roster.models import BOUNCED, DEFERRED, DELIVERED, Domain, MailRecipient, utcnow
from roster.queue import Incoming, Recipient, new_queue_id, store, writing
from tests.servers.smtp import Primary, PrimaryHandler, _Controller, _XforwardSMTP
from tests.test_gateway import people


class PostfixLike(_XforwardSMTP):
    """Refuses DATA for a bounce to several people (reject_multi_recipient_bounce),
    keeping the transaction open as Postfix does, and XFORWARD inside a transaction."""

    async def smtp_XFORWARD(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's name)
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        await super().smtp_XFORWARD(arg)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        envelope = self.envelope
        if envelope is not None and envelope.mail_from == "<>" and len(envelope.rcpt_tos) > 1:
            await self.push("550 5.5.3 <DATA>: Data command rejected: Multi-recipient bounce")
            return
        await super().smtp_DATA(arg)


class RefusesDataAndCloses(_XforwardSMTP):
    """Answers the DATA command with 554 and hangs up."""

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        await self.push("554 5.7.1 <DATA>: no more from you")
        self.transport.close()


class DropsAtXforward(_XforwardSMTP):
    async def smtp_XFORWARD(self, arg: str) -> None:  # noqa: N802
        self.transport.close()


class WithoutXforward(PrimaryHandler):
    async def handle_EHLO(  # noqa: N802 (aiosmtpd's name)
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return responses


class Kind(Primary):
    """A primary served by ``smtp`` (an aiosmtpd SMTP class of this file)."""

    def __init__(self, smtp: type, handler: PrimaryHandler | None = None) -> None:
        super().__init__()
        self.smtp = smtp
        self.handler = handler or PrimaryHandler()

    def start(self) -> Kind:
        self._controller = _Controller(
            self.handler, self.port, smtp=self.smtp, server_hostname="primary.test"
        )
        self._controller.start()
        return self


@pytest.fixture
def relay() -> Iterator[Primary]:
    server = Primary().start()
    yield server
    server.stop()


def runner(
    engine: Engine, relay: Primary, worker: str = "runner-1", **settings: Any
) -> QueueRunner:
    config = Config(
        database_url=engine.url.render_as_string(hide_password=False),
        gateway={"allow_local_primary": True, "hostname": "gw.test"},
    )
    return QueueRunner(
        engine,
        config,
        RunnerSettings(hostname="gw.test", relay=("127.0.0.1", relay.port), **settings),
        worker,
    )


def queue(
    engine: Engine, *messages: tuple[str, list[str]], age: timedelta | None = None
) -> list[str]:
    """Messages (sender, recipients) for acme.test, oldest first; their queue ids."""
    with Session(engine) as session:
        domain_id = session.scalars(select(Domain.id).where(Domain.name == "acme.test")).one()
    queue_ids = []
    with writing(engine) as connection:
        for number, (sender, recipients) in enumerate(messages):
            queue_id = new_queue_id()
            body = f"From: someone@sender.test\r\nSubject: m{number}\r\n\r\nhi\r\n".encode()
            received = utcnow() - (age or timedelta(0)) - timedelta(seconds=len(messages) - number)
            store(
                connection,
                [
                    Incoming(
                        queue_id,
                        sender,
                        body,
                        [Recipient(a, domain_id, known=True) for a in recipients],
                        received_at=received,
                    )
                ],
            )
            queue_ids.append(queue_id)
    return queue_ids


def states(engine: Engine) -> dict[tuple[str, str], tuple[str, int, str]]:
    with Session(engine) as session:
        return {
            (r.queue_id, r.address): (r.status, r.attempts, r.last_reply)
            for r in session.scalars(select(MailRecipient))
        }


@pytest.mark.parametrize("xforward", [True, False], ids=["xforward", "plain"])
def test_a_refused_data_command_costs_only_its_own_message(
    engine: Engine, relay: Primary, xforward: bool
) -> None:
    primary = Kind(PostfixLike, None if xforward else WithoutXforward()).start()
    try:
        people(engine, primary.port)
        bounce, first, second = queue(
            engine,
            ("", ["ana@acme.test", "sales@acme.test"]),  # a bounce to two people
            ("one@sender.test", ["ana@acme.test"]),
            ("two@sender.test", ["ana@acme.test"]),
        )
        runner(engine, relay).run_once()
    finally:
        primary.stop()
    found = states(engine)
    assert found[(bounce, "ana@acme.test")][0] == BOUNCED
    assert "Multi-recipient bounce" in found[(bounce, "ana@acme.test")][2]
    assert found[(first, "ana@acme.test")][0] == DELIVERED
    assert found[(second, "ana@acme.test")][0] == DELIVERED, found
    assert sorted(m.sender for m in primary.messages) == ["one@sender.test", "two@sender.test"]
    assert relay.messages == []  # no notice: the refused message had the null sender


def test_a_drop_at_xforward_is_recorded_and_an_old_message_expires(
    engine: Engine, relay: Primary
) -> None:
    primary = Kind(DropsAtXforward).start()
    try:
        people(engine, primary.port)
        [fresh] = queue(engine, ("fresh@sender.test", ["ana@acme.test"]))
        [old] = queue(engine, ("old@sender.test", ["ana@acme.test"]), age=timedelta(days=6))
        runner(engine, relay).run_once()
    finally:
        primary.stop()
    found = states(engine)
    status, attempts, reply = found[(old, "ana@acme.test")]
    assert (status, attempts) == (BOUNCED, 1)  # past the 5-day lifetime: given up, told
    status, attempts, reply = found[(fresh, "ana@acme.test")]
    assert (status, attempts) == (DEFERRED, 1) and "closed" in reply
    delivering = runner(engine, relay)
    delivering.run_once()  # the failure notice, queued with the outcome, goes out
    [notice] = relay.handler.wait_for(1)
    assert notice.recipients == ["old@sender.test"]


def test_a_primary_that_greets_with_554_defers_the_mail(engine: Engine, relay: Primary) -> None:
    """A 5xx greeting refuses the session, not the message: it waits, nobody is told."""
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def greet() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(b"554 5.3.2 primary.test no service for you now\r\n")

    serving = threading.Thread(target=greet)
    serving.start()
    try:
        people(engine, port)
        [queue_id] = queue(engine, ("writer@sender.test", ["ana@acme.test"]))
        runner(engine, relay).run_once()
    finally:
        stop.set()
        serving.join()
        listener.close()
    status, attempts, reply = states(engine)[(queue_id, "ana@acme.test")]
    assert (status, attempts) == (DEFERRED, 1) and reply.startswith("554")
    time.sleep(0.3)
    assert relay.messages == []


def test_a_message_slower_than_its_claim_is_sent_once(engine: Engine, relay: Primary) -> None:
    """Each RCPT answered after 1.5 s, claims of 1 s, two runners: the claim is kept
    while the message is on its way, so the other runner never sends it too."""
    primary = Primary().start()
    primary.handler.hang = 1.5
    try:
        people(engine, primary.port)
        queue(engine, ("slow@sender.test", ["ana@acme.test", "sales@acme.test"]))
        lease = timedelta(seconds=1)
        first = runner(engine, relay, "runner-1", lease=lease)
        second = runner(engine, relay, "runner-2", lease=lease)
        working = threading.Thread(target=first.run_once)
        working.start()
        deadline = time.monotonic() + 4
        while working.is_alive() and time.monotonic() < deadline:
            second.run_once()
            time.sleep(0.2)
        working.join()
    finally:
        primary.stop()
    assert len(primary.messages) == 1
    assert {s for s, _a, _r in states(engine).values()} == {DELIVERED}


def test_a_data_refusal_before_a_hang_up_is_still_that_messages_answer(
    engine: Engine, relay: Primary
) -> None:
    """The primary refuses DATA with 554 and closes: that message is bounced with the
    primary's words; the next one, which met the closed session, waits."""
    primary = Kind(RefusesDataAndCloses).start()
    try:
        people(engine, primary.port)
        refused, waiting = queue(
            engine,
            ("one@sender.test", ["ana@acme.test"]),
            ("two@sender.test", ["ana@acme.test"]),
        )
        runner(engine, relay).run_once()
    finally:
        primary.stop()
    found = states(engine)
    status, _attempts, reply = found[(refused, "ana@acme.test")]
    assert status == BOUNCED and reply.startswith("554")
    assert found[(waiting, "ana@acme.test")][0] == DEFERRED
