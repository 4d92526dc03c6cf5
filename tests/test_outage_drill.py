"""The outage drill, the product's promise: the primary is up and mail flows to it and to
the standby store; the primary stops; a continuity event starts by itself; mail arriving
during the outage is in the covered people's standby mailboxes; the primary comes back;
every held message reaches it once; the event ends with its counts. Real Dovecot, a real
aiosmtpd primary, the real gateway; on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import secrets
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from imapclient import IMAPClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from continuity.localslapd import free_port
from gateway.service import Gateway
from roster.config import Config
from roster.continuity import start_event
from roster.db import session_factory, transaction
from roster.models import (
    COPY_PENDING,
    DELIVERED,
    PENDING_STATES,
    ContinuityEvent,
    Domain,
    MailRecipient,
    Person,
    StandbyCopy,
)
from roster.queue import queue_sent_copy
from tests.directory import Continuity
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import Primary
from tests.standby_fixtures import next_second, standby_store  # noqa: F401 - the fixture, by name
from tests.test_gateway import people

DURING = 500


@dataclass
class Drill:
    """The running pieces of the drill."""

    engine: Engine
    gateway: Gateway
    primary: Primary
    store: DovecotServer
    run: str

    def send(self, count: int, label: str, threads: int = 10) -> list[str]:
        """Send ``count`` messages to Ana from ``threads`` clients; their Message-IDs."""
        ids = [f"<{label}-{self.run}-{n}@sender.test>" for n in range(count)]

        def client(part: list[str]) -> None:
            with smtplib.SMTP("127.0.0.1", self.gateway.settings.port, timeout=30) as smtp:
                for message_id in part:
                    smtp.sendmail(
                        "someone@sender.test",
                        ["ana@acme.test"],
                        f"Message-ID: {message_id}\r\nSubject: {label}\r\n\r\nbody\r\n".encode(),
                    )

        workers = [threading.Thread(target=client, args=(ids[n::threads],)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return ids

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
        """Wait until ``condition``; how long it took."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not in time: {what}")
            time.sleep(0.05)
        return time.monotonic() - started

    def events(self) -> list[ContinuityEvent]:
        """The continuity events of acme.test."""
        with Session(self.engine) as session:
            return list(session.scalars(select(ContinuityEvent).order_by(ContinuityEvent.id)))

    def waiting(self) -> int:
        """Recipients and standby copies still to do."""
        with Session(self.engine) as session:
            return (
                session.scalar(
                    select(func.count(MailRecipient.id)).where(
                        MailRecipient.status.in_(PENDING_STATES)
                    )
                )
                or 0
            ) + (
                session.scalar(
                    select(func.count(StandbyCopy.id)).where(StandbyCopy.status == COPY_PENDING)
                )
                or 0
            )

    def at_primary(self) -> Counter[str]:
        """How often each Message-ID of this run reached the primary."""
        found: Counter[str] = Counter()
        for message in self.primary.messages:
            match = re.search(rb"^Message-ID: (<[^>]+>)", message.content, re.M | re.I)
            if match and f"-{self.run}-".encode() in match.group(1):
                found[match.group(1).decode()] += 1
        return found

    def delete_from_standby(self, message_id: str) -> None:
        """Delete a message from Ana's standby INBOX over IMAP, as the webmail would."""
        with IMAPClient(self.store.imap[0], port=self.store.imap[1], ssl=False) as client:
            client.plain_login(
                self.store.master_user,
                self.store.master_password,
                authorization_identity="ana@acme.test",
            )
            client.select_folder("INBOX")
            found = client.search(["HEADER", "Message-ID", message_id])
            assert found
            client.delete_messages(found)
            client.expunge()

    def in_standby(self) -> Counter[str]:
        """How often each Message-ID of this run is in Ana's standby INBOX."""
        found: Counter[str] = Counter()
        with IMAPClient(self.store.imap[0], port=self.store.imap[1], ssl=False) as client:
            client.plain_login(
                self.store.master_user,
                self.store.master_password,
                authorization_identity="ana@acme.test",
            )
            client.select_folder("INBOX", readonly=True)
            fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        for item in fetched.values():
            value = item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().split(":", 1)[-1].strip()
            if f"-{self.run}-" in value:
                found[value] += 1
        return found


@pytest.fixture
def drill(
    engine: Engine,
    database_url: str,
    standby_store: DovecotServer,  # noqa: F811
) -> Iterator[Drill]:
    """acme.test covered, its primary checked every second, two failures start an event
    and two successes end it; a gateway with its monitor."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    with transaction(session_factory(engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        # Below the Control Panel's floor of 10 s, to keep the drill short.
        acme.probe_interval_seconds = 1
        acme.failures_before_failover = 2
        acme.recover_after = 2
        acme.failover_codes = "452"
    config = Config(
        database_url=database_url,
        gateway={
            "listen": f"127.0.0.1:{free_port()}",
            "hostname": "gateway.test",
            "allow_local_primary": True,
        },
        outbound={"relay": f"127.0.0.1:{relay.port}"},
        standby={
            "lmtp": f"{standby_store.lmtp[0]}:{standby_store.lmtp[1]}",
            "users_file": str(standby_store.users_file),
        },
    )
    running = Gateway(config, engine=engine, idle=0.05)
    running.start()
    next_second()  # Dovecot has read the users file the gateway wrote as it started
    try:
        yield Drill(engine, running, primary, standby_store, secrets.token_hex(4))
    finally:
        running.stop()
        primary.stop()
        relay.stop()


def test_the_outage_drill(drill: Drill) -> None:
    """Primary up, primary killed, the event starts by itself, 500 messages arrive and
    are in the standby mailbox, the primary returns, each held message reaches it once,
    the event ends with its counts, and every held recipient is marked via Continuity."""
    before = drill.send(20, "before")
    drill.wait(lambda: drill.waiting() == 0, "mail before the outage delivered and copied")
    assert set(drill.at_primary()) == set(before)

    drill.primary.stop()
    detected = drill.wait(lambda: len(drill.events()) == 1, "the event starts by itself")
    event = drill.events()[0]
    assert event.started_by == "monitor" and event.ended_at is None
    assert "refused" in event.reason
    print(f"\nevent started {detected:.1f} s after the primary stopped")

    during = drill.send(DURING, "during")
    drill.wait(lambda: drill.waiting() == len(during), "copies of the held mail made")
    in_standby = drill.in_standby()
    assert all(in_standby[m] >= 1 for m in during), "held mail missing from the standby store"

    # Deleting a held message in the standby mailbox (as a person would in the webmail)
    # does not stop its hand-back: the queue keeps its own copy.
    drill.delete_from_standby(during[0])
    assert drill.in_standby()[during[0]] == 0

    drill.primary.start()
    handed = drill.wait(
        lambda: drill.events()[0].ended_at is not None, "the hand-back ends the event", 120
    )
    print(f"event ended {handed:.1f} s after the primary returned")
    at_primary = drill.at_primary()
    assert {m: at_primary[m] for m in during} == dict.fromkeys(during, 1)
    assert {m: at_primary[m] for m in before} == dict.fromkeys(before, 1)
    event = drill.events()[0]
    assert (event.held, event.handed_back) == (DURING, DURING)
    assert event.recovery_started_at is not None and event.ended_by == "monitor"
    with Session(drill.engine) as session:
        via = session.scalars(
            select(MailRecipient.status).where(MailRecipient.via_continuity.is_(True))
        ).all()
    assert via == [DELIVERED] * DURING


def test_a_primary_that_greets_but_answers_a_listed_code_fails_over(drill: Drill) -> None:
    """A primary with a full disk still greets but answers 452 to every recipient; the
    domain lists 452, so the event starts; when the disk has room again, the held mail
    is handed back once and the event ends."""
    drill.primary.handler.rcpt_reply = "452 4.3.1 Insufficient system storage"
    drill.wait(lambda: len(drill.events()) == 1, "the event starts on 452")
    assert "452" in drill.events()[0].reason
    during = drill.send(50, "full-disk")
    drill.wait(lambda: drill.waiting() == len(during), "copies of the held mail made")
    assert drill.at_primary() == Counter()
    drill.primary.handler.rcpt_reply = None
    drill.wait(lambda: drill.events()[0].ended_at is not None, "the event ends", 120)
    assert drill.at_primary() == Counter(dict.fromkeys(during, 1))


def test_a_retry_during_an_event_checks_the_primary_and_counts_toward_recovery(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    """An admin's `continuity queue retry` during an event tries the primary at once;
    with the primary back, two retries (recover_after) start the hand-back."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    with transaction(session_factory(engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        acme.recover_after = 2
        acme_id = acme.id
    tool = Continuity(tmp_path, database_url)
    tool.path.write_text(
        f'[database]\nurl = "{database_url}"\n\n[gateway]\nallow_local_primary = true\n'
        f'hostname = "gateway.test"\n',
        encoding="utf-8",
    )
    config = Config(
        database_url=database_url,
        gateway={"listen": f"127.0.0.1:{free_port()}", "allow_local_primary": True},
        outbound={"relay": f"127.0.0.1:{relay.port}"},
    )
    running = Gateway(config, engine=engine, idle=0.05, monitor=False, copy=False)
    running.start()
    try:
        with engine.begin() as connection:
            start_event(connection, acme_id, reason="by hand", actor="admin@acme.test")
        with smtplib.SMTP("127.0.0.1", running.settings.port) as smtp:
            smtp.sendmail("s@sender.test", ["ana@acme.test"], b"Subject: held\r\n\r\nx\r\n")
        time.sleep(0.5)
        assert primary.messages == []  # held
        primary.stop()
        first = tool.run("queue", "retry", "--domain", "acme.test")
        assert "the primary still fails" in first.stdout
        primary.start()
        second = tool.run("queue", "retry", "--domain", "acme.test")
        assert "the hand-back starts after 2 good checks" in second.stdout
        third = tool.run("queue", "retry", "--domain", "acme.test")
        assert "the primary answers again: the hand-back starts" in third.stdout
        assert len(primary.handler.wait_for(1)) == 1
    finally:
        running.stop()
        primary.stop()
        relay.stop()


def test_mail_sent_during_the_event_reaches_the_primary_for_sent(drill: Drill) -> None:
    """With the domain's switch on, a copy of what a person sends from the webmail during
    the event is held with the rest and handed to the primary afterwards, marked with the
    header its filter files into Sent; with the switch off, nothing is queued."""
    drill.primary.stop()
    drill.wait(lambda: len(drill.events()) == 1, "the event starts")
    sent = f"Message-ID: <sent-{drill.run}@acme.test>\r\nSubject: from the webmail\r\n\r\nhi\r\n"
    with transaction(session_factory(drill.engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        ana = session.scalars(select(Person).where(Person.mail == "ana@acme.test")).one()
        assert queue_sent_copy(session.connection(), acme, ana.id, ana.mail, sent.encode()) is None
        acme.sent_copies_to_primary = True
        session.flush()
        queued = queue_sent_copy(session.connection(), acme, ana.id, ana.mail, sent.encode())
    assert queued is not None
    drill.primary.start()
    drill.wait(lambda: drill.events()[0].ended_at is not None, "the event ends", 120)
    got = [m for m in drill.primary.messages if f"sent-{drill.run}".encode() in m.content]
    assert len(got) == 1
    assert got[0].content.startswith(b"X-Continuity-Sent-Copy: yes\r\n")
    assert (got[0].sender, got[0].recipients) == ("ana@acme.test", ["ana@acme.test"])
