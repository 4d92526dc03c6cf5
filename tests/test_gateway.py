"""The gateway against real servers: mail sent with smtplib to a running gateway reaches
an aiosmtpd primary once, with the client's identity; refusals, callouts, retries and
notices are what a sender and a mail administrator would see. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import secrets
import shutil
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import pytest
from imapclient import IMAPClient
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from continuity.localslapd import free_port, make_test_ca
from gateway.commit import GroupCommitter
from gateway.copier import ANOTHER_WRITER_SECONDS
from gateway.service import Gateway
from gateway.standby_users import refresh_users_file, write_users_file
from roster.config import Config
from roster.db import make_engine, session_factory, transaction
from roster.domains import add_domain, parse_primary
from roster.models import (
    BOUNCED,
    COPY_DONE,
    COPY_FAILED,
    COPY_PENDING,
    DEFERRED,
    DELIVERED,
    Alias,
    Domain,
    MailMessage,
    MailRecipient,
    Person,
    StandbyCopy,
)
from roster.queue import Incoming, new_queue_id, retry_now, store, writing
from tests.directory import Continuity
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import Primary
from tests.standby_fixtures import next_second, standby_store  # noqa: F401 - the fixture, by name


@dataclass
class Mail:
    """A running gateway with its primary and outbound relay."""

    engine: Engine
    gateway: Gateway
    primary: Primary
    relay: Primary

    def send(
        self,
        recipients: list[str],
        *,
        sender: str = "someone@sender.test",
        body: bytes | None = None,
        subject: str = "Hello",
    ) -> str:
        """Send one message; the gateway's 250 reply text."""
        data = (
            body
            or (
                f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
                f"Message-ID: <{time.time_ns()}@sender.test>\r\n\r\nHi there.\r\n"
            ).encode()
        )
        with smtplib.SMTP(
            "127.0.0.1", self.gateway.settings.port, local_hostname="client.test"
        ) as c:
            c.ehlo()
            c.mail(sender)
            for address in recipients:
                code, reply = c.rcpt(address)
                assert code == 250, (address, code, reply)
            code, reply = c.data(data)
        assert code == 250, reply
        return reply.decode()

    def recipients(self) -> list[MailRecipient]:
        """Every recipient row of the queue, oldest first."""
        with Session(self.engine) as session:
            return list(session.scalars(select(MailRecipient).order_by(MailRecipient.id)))

    def wait(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        """Wait until ``condition`` holds (the gateway works in its own threads)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("the gateway did not get there in time")
            self.gateway.wake()
            time.sleep(0.05)

    def retry(self) -> None:
        """What `continuity queue retry --domain` does: everything due now."""
        with transaction(session_factory(self.engine), writing=True) as session:
            retry_now(session, domain_id=None)
        self.gateway.wake()


def people(engine: Engine, primary_port: int) -> None:
    """acme.test (active, all users) with Ana (alias sales@), Bob (disabled); beta.test
    held but not active."""
    with Session(engine) as session, session.begin():
        acme = add_domain(session, "acme.test", "setup", parse_primary(f"127.0.0.1:{primary_port}"))
        acme.primary_tls = "none"
        acme.continuity_active = True
        beta = add_domain(session, "beta.test", "setup", parse_primary(f"127.0.0.1:{primary_port}"))
        beta.primary_tls = "none"
        session.flush()
        for domain, local, disabled, aliases in (
            (acme, "ana", False, ["sales@acme.test"]),
            (acme, "bob", True, []),
            (beta, "carla", False, []),
        ):
            person = Person(
                domain_id=domain.id,
                source="corp",
                external_id=local,
                dn=f"uid={local}",
                mail=f"{local}@{domain.name}",
                disabled=disabled,
            )
            session.add(person)
            session.flush()
            session.add_all(Alias(person_id=person.id, address=a) for a in aliases)


def gateway_config(database_url: str, relay_port: int, **gateway: object) -> Config:
    """A configuration for a gateway on a free loopback port with a local primary."""
    return Config(
        database_url=database_url,
        gateway={
            "listen": f"127.0.0.1:{free_port()}",
            "hostname": "gateway.test",
            "allow_local_primary": True,
            "delivery_workers": 2,
            **gateway,
        },
        outbound={"relay": f"127.0.0.1:{relay_port}"},
    )


@pytest.fixture
def mail(engine: Engine, database_url: str) -> Iterator[Mail]:
    """A gateway delivering to a live primary, with notices through a relay."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    running = Gateway(gateway_config(database_url, relay.port), engine=engine, idle=0.05)
    running.start()
    try:
        yield Mail(engine, running, primary, relay)
    finally:
        running.stop()
        primary.stop()
        relay.stop()


def talking(raw: socket.socket, reader: BinaryIO) -> Callable[[bytes], bytes]:
    """``say(line)`` on a raw SMTP connection: send the line, get the reply's last line."""

    def say(line: bytes) -> bytes:
        raw.sendall(line + b"\r\n")
        reply = reader.readline()
        while reply[3:4] == b"-":
            reply = reader.readline()
        return reply

    return say


@contextmanager
def greeted(mail: Mail) -> Iterator[tuple[socket.socket, BinaryIO, Callable[[bytes], bytes]]]:
    """A raw SMTP connection to the gateway, greeted and past EHLO: (socket, its
    reader, ``say``)."""
    with (
        socket.create_connection(("127.0.0.1", mail.gateway.settings.port), timeout=10) as raw,
        raw.makefile("rb") as reader,
    ):
        say = talking(raw, reader)
        assert reader.readline().startswith(b"220")
        assert say(b"EHLO client.test").startswith(b"250")
        yield raw, reader, say


def test_mail_reaches_the_primary_once_with_the_clients_identity(mail: Mail) -> None:
    """A message to a person, an alias and a disabled person reaches the primary once,
    with our Received line naming its queue id, and XFORWARD telling the real client."""
    reply = mail.send(["ana@acme.test", "sales@acme.test", "bob@acme.test"])
    queue_id = reply.rsplit(" ", 1)[-1]
    assert reply.startswith("2.0.0 Ok: queued as ")
    arrived = mail.primary.handler.wait_for(1)
    mail.wait(lambda: all(r.status == DELIVERED for r in mail.recipients()))
    time.sleep(0.2)
    assert len(mail.primary.messages) == 1
    got = arrived[0]
    assert sorted(got.recipients) == ["ana@acme.test", "bob@acme.test", "sales@acme.test"]
    assert got.sender == "someone@sender.test"
    first_line = got.content.split(b"\r\n", 1)[0]
    assert first_line.startswith(b"Received: from client.test ([127.0.0.1])")
    assert queue_id.encode() in got.content.split(b"\r\n\r\n", 1)[0]
    assert got.xforward.get("ADDR") == "127.0.0.1"
    assert got.xforward.get("HELO") == "client.test"
    with Session(mail.engine) as session:
        stored = session.get(MailMessage, queue_id)
        assert stored is not None and stored.sender == "someone@sender.test"


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("someone@elsewhere.test", b"Relaying denied"),
        ("ana%elsewhere.test@acme.test", b""),
        ("elsewhere.test!ana@acme.test", b""),
        ('"ana@elsewhere.test"@acme.test', b""),
        ('"ana%elsewhere"@acme.test', b""),
        ("ana@[127.0.0.1]", b""),
    ],
)
def test_no_open_relay(mail: Mail, address: str, words: bytes) -> None:
    """Foreign domains, percent hacks, bang paths, quoted routing and address literals
    are refused at RCPT with 550: the gateway relays nothing anywhere."""
    with smtplib.SMTP("127.0.0.1", mail.gateway.settings.port) as client:
        client.ehlo("client.test")
        client.mail("someone@sender.test")
        code, reply = client.rcpt(address)
    assert code == 550, reply
    assert words in reply
    assert mail.recipients() == []


def test_source_routes_are_refused(mail: Mail) -> None:
    """aiosmtpd would drop a source route and accept the address; the gateway refuses it,
    however the route is spelled."""
    with smtplib.SMTP("127.0.0.1", mail.gateway.settings.port) as client:
        client.ehlo("client.test")
        client.mail("someone@sender.test")
        for route in ("@relay.test:", ",@relay.test:", "(x)@relay.test:", "@a.test,@b.test:"):
            code, _ = client.docmd(f"RCPT TO:<{route}ana@acme.test>")
            assert code == 550, route
        assert client.docmd("RCPT TO:<ana@acme.test>")[0] == 250


def test_unknown_recipients_are_checked_with_the_primary(mail: Mail) -> None:
    """No backscatter: an address the roster does not know is accepted only when the
    primary says it exists, refused when it says no, deferred (450) while it is down; a
    domain with the check off accepts it."""
    mail.primary.handler.known = {"ana@acme.test", "room-12@acme.test"}
    with smtplib.SMTP("127.0.0.1", mail.gateway.settings.port) as client:
        client.ehlo("client.test")
        client.mail("someone@sender.test")
        assert client.rcpt("room-12@acme.test")[0] == 250
        code, reply = client.rcpt("nobody@acme.test")
        assert code == 550 and b"No such user here" in reply
    mail.primary.stop()
    with smtplib.SMTP("127.0.0.1", mail.gateway.settings.port) as client:
        client.ehlo("client.test")
        client.mail("someone@sender.test")
        assert client.rcpt("ghost@acme.test")[0] == 450
        assert client.rcpt("ana@acme.test")[0] == 250  # known people need no primary
    with transaction(session_factory(mail.engine), writing=True) as session:
        session.scalars(
            select(Domain).where(Domain.name == "acme.test")
        ).one().verify_recipients = False
    with smtplib.SMTP("127.0.0.1", mail.gateway.settings.port) as client:
        client.ehlo("client.test")
        client.mail("someone@sender.test")
        assert client.rcpt("ghost2@acme.test")[0] == 250


def test_a_primary_that_is_down_gets_the_mail_when_it_returns(mail: Mail) -> None:
    """Primary down: the message waits (deferred, with the reason); back: delivered once."""
    mail.primary.stop()
    mail.send(["ana@acme.test"])
    mail.wait(lambda: mail.recipients()[0].status == DEFERRED)
    waiting = mail.recipients()[0]
    assert waiting.attempts == 1
    assert "refused" in waiting.last_reply
    assert waiting.next_attempt_at > waiting.last_attempt_at  # type: ignore[operator]
    mail.primary.start()
    mail.retry()
    mail.wait(lambda: mail.recipients()[0].status == DELIVERED)
    assert len(mail.primary.handler.wait_for(1)) == 1


def test_temporary_refusals_are_retried(mail: Mail) -> None:
    """A 451 from the primary defers the recipient with the primary's words kept."""
    mail.primary.handler.rcpt_reply = "451 4.3.0 Mailbox busy, try later"
    mail.send(["ana@acme.test"])
    mail.wait(lambda: mail.recipients()[0].status == DEFERRED)
    assert "Mailbox busy" in mail.recipients()[0].last_reply
    mail.primary.handler.rcpt_reply = None
    mail.retry()
    mail.wait(lambda: mail.recipients()[0].status == DELIVERED)


def test_a_refused_recipient_gets_a_notice_and_the_others_their_mail(mail: Mail) -> None:
    """5xx for one recipient: the others are delivered; the sender gets an RFC 3464
    notice from the null sender through the relay, naming the refused address."""
    mail.primary.handler.replies["bob@acme.test"] = "550 5.2.1 Mailbox disabled"
    mail.send(["ana@acme.test", "bob@acme.test"], sender="writer@sender.test")
    mail.wait(
        lambda: {r.address: r.status for r in mail.recipients()}.get("bob@acme.test") == BOUNCED
    )
    got = mail.primary.handler.wait_for(1)
    assert got[0].recipients == ["ana@acme.test"]
    notices = mail.relay.handler.wait_for(1)
    assert notices[0].sender == "<>"  # aiosmtpd's spelling of the null sender
    assert notices[0].recipients == ["writer@sender.test"]
    report = email.message_from_bytes(notices[0].content, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert b"bob@acme.test" in notices[0].content
    assert b"Mailbox disabled" in notices[0].content


def test_the_notice_speaks_the_domains_language(mail: Mail) -> None:
    """A domain whose language is Spanish sends its failure notices in Spanish."""
    with transaction(session_factory(mail.engine), writing=True) as session:
        session.scalars(select(Domain).where(Domain.name == "acme.test")).one().language = "es"
    mail.primary.handler.replies["bob@acme.test"] = "550 5.2.1 Mailbox disabled"
    mail.send(["bob@acme.test"], sender="writer@sender.test")
    notice = mail.relay.handler.wait_for(1)[0].content
    assert b"Subject: Correo no entregado" in notice


def test_no_notice_for_a_notice(mail: Mail) -> None:
    """A refused message from the null sender is bounced without any notice (no loop)."""
    mail.primary.handler.replies["bob@acme.test"] = "550 5.2.1 Mailbox disabled"
    mail.send(["bob@acme.test"], sender="")
    mail.wait(lambda: mail.recipients()[0].status == BOUNCED)
    with Session(mail.engine) as session:
        assert session.scalars(select(MailMessage.sender)).one() == ""
    time.sleep(0.5)
    assert mail.relay.messages == []
    assert len(mail.recipients()) == 1


def test_bad_messages_get_the_right_reply_and_nothing_is_stored(mail: Mail) -> None:
    """NUL bytes, a mail loop and an 8-bit header without SMTPUTF8 are refused; a
    message declared larger than the limit is refused at MAIL; nothing is queued."""
    loop = b"".join(b"Received: from a by b; x\r\n" for _ in range(101))
    for body in (
        b"Subject: x\r\n\r\nbad\0byte\r\n",
        loop + b"Subject: x\r\n\r\nhi\r\n",
        "Subject: caf\u00e9\r\n\r\nhi\r\n".encode(),
    ):
        with smtplib.SMTP("127.0.0.1", mail.gateway.settings.port) as client:
            client.ehlo("client.test")
            client.mail("someone@sender.test")
            client.rcpt("ana@acme.test")
            code, _ = client.data(body)
        assert code == 554
    with smtplib.SMTP("127.0.0.1", mail.gateway.settings.port) as client:
        client.ehlo("client.test")
        code, _ = client.mail("someone@sender.test", [f"SIZE={60 * 1024 * 1024}"])
        assert code == 552
    assert mail.recipients() == []


def test_bare_line_feeds_never_pass_on(mail: Mail) -> None:
    """A message with bare LF and bare CR reaches the primary with CRLF lines only."""
    mail.send(["ana@acme.test"], body=b"Subject: x\r\n\r\none\ntwo\rthree\r\n")
    got = mail.primary.handler.wait_for(1)[0].content
    assert b"one\r\ntwo\r\nthree\r\n" in got
    assert got.count(b"\n") == got.count(b"\r\n")


def test_an_outside_sender_cannot_mark_a_message_as_sent_by_the_recipient(mail: Mail) -> None:
    """The header that has the primary file a webmail's sent copy in Sent is written by
    Continuity alone: one that comes from outside, in any case and folded, is dropped,
    and the rest of the message reaches the primary as it was sent."""
    body = (
        b"From: someone@sender.test\r\n"
        b"X-Continuity-Sent-Copy: yes\r\n"
        b"Subject: I resign\r\n"
        b"x-continuity-SENT-copy:\r\n yes\r\n"
        b"X-Continuity-Sent-Copy-Note: not ours\r\n"
        b"\r\n"
        b"X-Continuity-Sent-Copy: yes (in the body, text like any other)\r\n"
    )
    mail.send(["ana@acme.test"], body=body)
    got = mail.primary.handler.wait_for(1)[0].content
    head, text_part = got.split(b"\r\n\r\n", 1)
    assert head.startswith(b"Received: ")  # ours, folded, then the sender's headers
    assert head[head.index(b"\r\nFrom: ") + 2 :].split(b"\r\n") == [
        b"From: someone@sender.test",
        b"Subject: I resign",
        b"X-Continuity-Sent-Copy-Note: not ours",
    ]
    assert text_part == b"X-Continuity-Sent-Copy: yes (in the body, text like any other)\r\n"


def test_message_data_past_the_memory_for_receiving_waits_for_room(
    engine: Engine, database_url: str
) -> None:
    """With 1 MiB for message data at once, a 700 KB message while another 700 KB one is
    still coming gets 452 4.3.1 (the sender tries again); once the first is stored, the
    same message is taken. Nothing is held afterwards."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    running = Gateway(
        gateway_config(database_url, relay.port, receive_memory_mb=1), engine=engine, idle=0.05
    )
    running.start()
    block = (b"x" * 998 + b"\r\n") * 700
    try:
        mail = Mail(engine, running, primary, relay)
        with greeted(mail) as (raw, _reader, say):
            assert say(b"MAIL FROM:<first@sender.test>").startswith(b"250")
            assert say(b"RCPT TO:<ana@acme.test>").startswith(b"250")
            assert say(b"DATA").startswith(b"354")
            raw.sendall(b"Subject: first\r\n\r\n" + block)
            mail.wait(lambda: running.handler.memory.used >= len(block))
            second = b"Subject: second\r\n\r\n" + block
            with smtplib.SMTP("127.0.0.1", running.settings.port) as client:
                client.ehlo("client.test")
                with pytest.raises(smtplib.SMTPDataError) as refused:
                    client.sendmail("second@sender.test", ["ana@acme.test"], second)
                assert refused.value.smtp_code == 452
                assert b"4.3.1" in refused.value.smtp_error
                assert say(b".").startswith(b"250")  # the first one, stored
                client.sendmail("second@sender.test", ["ana@acme.test"], second)
        arrived = primary.handler.wait_for(2)
        assert sorted(m.sender for m in arrived) == ["first@sender.test", "second@sender.test"]
        assert running.handler.memory.used == 0
    finally:
        running.stop()
        primary.stop()
        relay.stop()


def test_a_client_that_disconnects_in_data_leaves_nothing(mail: Mail) -> None:
    """Half a message stores nothing and the server keeps serving."""
    with (
        socket.create_connection(("127.0.0.1", mail.gateway.settings.port), timeout=10) as raw,
        raw.makefile("rb") as reader,
    ):
        reader.readline()
        for line in (
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@sender.test>\r\n",
            b"RCPT TO:<ana@acme.test>\r\n",
            b"DATA\r\n",
        ):
            raw.sendall(line)
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
        raw.sendall(b"Subject: half\r\n\r\nthe first half of")
    time.sleep(0.3)
    assert mail.recipients() == []
    mail.send(["ana@acme.test"])
    assert len(mail.primary.handler.wait_for(1)) == 1


def test_the_queue_is_shared_by_claims(mail: Mail, database_url: str) -> None:
    """A second gateway on the same roster never delivers a message the first one has."""
    other = Gateway(gateway_config(database_url, mail.relay.port), engine=mail.engine, idle=0.05)
    other.start()
    try:
        for _ in range(30):
            mail.send(["ana@acme.test"])
        mail.wait(lambda: all(r.status == DELIVERED for r in mail.recipients()), timeout=60)
    finally:
        other.stop()
    time.sleep(0.3)
    assert len(mail.primary.messages) == 30
    ids = [m.content.split(b" id ", 1)[1][:20] for m in mail.primary.messages]
    assert len(set(ids)) == 30


def test_standby_copies_wait_for_covered_people(mail: Mail) -> None:
    """Only covered people get a standby copy row: Ana (twice addressed, one copy), not
    disabled Bob, not Carla of an inactive domain."""
    mail.send(["ana@acme.test", "sales@acme.test", "bob@acme.test", "carla@beta.test"])
    with Session(mail.engine) as session:
        copies = list(session.scalars(select(StandbyCopy)))
    assert [c.mailbox for c in copies] == ["ana@acme.test"]


@pytest.fixture
def mail_with_standby(
    engine: Engine,
    database_url: str,
    standby_store: DovecotServer,  # noqa: F811
) -> Iterator[Mail]:
    """A gateway that also copies covered people's mail into a real Dovecot."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    config = gateway_config(database_url, relay.port, copy_workers=2)
    config = Config(
        database_url=config.database_url,
        gateway=config.gateway,
        outbound=config.outbound,
        standby={
            "lmtp": f"{standby_store.lmtp[0]}:{standby_store.lmtp[1]}",
            "users_file": str(standby_store.users_file),
        },
    )
    running = Gateway(config, engine=engine, idle=0.05)
    running.start()
    try:
        yield Mail(engine, running, primary, relay)
    finally:
        running.stop()
        primary.stop()
        relay.stop()
        if not standby_store.running:
            standby_store.start()


def standby_subjects(server: DovecotServer, address: str) -> list[str]:
    """The subjects in ``address``'s standby INBOX, read as the portal reads them."""
    with IMAPClient(server.imap[0], port=server.imap[1], ssl=False, timeout=20) as client:
        client.plain_login(
            server.master_user, server.master_password, authorization_identity=address
        )
        if client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0:
            return []
        fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        return [
            fetched[uid][b"BODY[HEADER.FIELDS (SUBJECT)]"]
            .decode()
            .strip()
            .removeprefix("Subject: ")
            for uid in sorted(fetched)
        ]


def copies(engine: Engine) -> list[StandbyCopy]:
    """Every standby copy row."""
    with Session(engine) as session:
        return list(session.scalars(select(StandbyCopy).order_by(StandbyCopy.id)))


def test_covered_people_find_their_mail_in_the_standby_store(
    mail_with_standby: Mail,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    """A message to Ana (and her alias), disabled Bob and Carla of an inactive domain:
    one copy in Ana's standby INBOX, none for the others; all reach the primary."""
    mail = mail_with_standby
    subject = f"standby {secrets.token_hex(4)}"
    mail.send(
        ["ana@acme.test", "sales@acme.test", "bob@acme.test", "carla@beta.test"], subject=subject
    )
    mail.wait(lambda: [c.status for c in copies(mail.engine)] == [COPY_DONE])
    assert standby_subjects(standby_store, "ana@acme.test").count(subject) == 1
    assert [c.mailbox for c in copies(mail.engine)] == ["ana@acme.test"]
    assert not standby_store.maildir("bob@acme.test").exists()
    assert not standby_store.maildir("carla@beta.test").exists()
    # One delivery per domain (each domain has its own primary; here the same server).
    arrived = mail.primary.handler.wait_for(2)
    assert sorted(r for m in arrived for r in m.recipients) == [
        "ana@acme.test",
        "bob@acme.test",
        "carla@beta.test",
        "sales@acme.test",
    ]


def test_mail_to_a_domain_without_the_service_is_not_archived_through_an_alias(
    mail_with_standby: Mail,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    """Ana (acme.test, covered) also has an address in beta.test, a domain that never
    switched the service on: mail to it reaches her at the primary, but nothing of
    beta.test's mail goes to the standby store."""
    mail = mail_with_standby
    # A write transaction that waits for the running gateway's (SQLite: BEGIN IMMEDIATE).
    with transaction(session_factory(mail.engine), writing=True) as session:
        ana = session.scalars(select(Person).where(Person.mail == "ana@acme.test")).one()
        session.add(Alias(person_id=ana.id, address="ana.garcia@beta.test"))
    subject = f"through beta {secrets.token_hex(4)}"
    mail.send(["ana.garcia@beta.test"], subject=subject)
    mail.send(["sales@acme.test"], subject=f"{subject} and acme")
    mail.wait(lambda: [c.status for c in copies(mail.engine)] == [COPY_DONE])
    assert [s for s in standby_subjects(standby_store, "ana@acme.test") if subject in s] == [
        f"{subject} and acme"
    ]
    arrived = mail.primary.handler.wait_for(2)
    assert sorted(r for m in arrived for r in m.recipients) == [
        "ana.garcia@beta.test",
        "sales@acme.test",
    ]


def test_a_gateway_that_does_not_write_the_users_file_tries_a_refused_copy_once_more(
    engine: Engine,
    database_url: str,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    """With several gateways, one writes the store's users file. Another one's copy for a
    person covered a moment ago, refused as unknown because the file lags the roster,
    is tried again after the writer's next look at the roster (it was failed for good,
    and the person's standby mailbox missed the message); refused again, it fails."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    write_users_file(standby_store.users_file, ["someone-else@acme.test"])
    next_second()
    base = gateway_config(database_url, relay.port, copy_workers=1)
    config = Config(
        database_url=base.database_url,
        gateway=base.gateway,
        outbound=base.outbound,
        standby={"lmtp": f"{standby_store.lmtp[0]}:{standby_store.lmtp[1]}"},
    )
    running = Gateway(config, engine=engine, idle=0.05)
    running.start()
    mail = Mail(engine, running, primary, relay)
    try:
        subject = f"lagging {secrets.token_hex(4)}"
        mail.send(["ana@acme.test"], subject=subject)
        mail.wait(lambda: [c.attempts for c in copies(engine)] == [1])
        (refused,) = copies(engine)
        assert refused.status == COPY_PENDING
        wait = (refused.next_attempt_at - datetime.now(UTC)).total_seconds()
        assert 10 < wait <= ANOTHER_WRITER_SECONDS
        # The writing gateway's next look at the roster puts Ana in the file.
        write_users_file(standby_store.users_file, ["someone-else@acme.test", "ana@acme.test"])
        next_second()
        due_now(engine)
        mail.wait(lambda: [c.status for c in copies(engine)] == [COPY_DONE])
        assert standby_subjects(standby_store, "ana@acme.test").count(subject) == 1

        # Not in the file however long one waits: the second refusal is final.
        write_users_file(standby_store.users_file, ["someone-else@acme.test"])
        next_second()
        mail.send(["ana@acme.test"], subject="never")
        mail.wait(lambda: [c.attempts for c in copies(engine)][1:] == [1])
        due_now(engine)
        mail.wait(lambda: [c.status for c in copies(engine)] == [COPY_DONE, COPY_FAILED])
    finally:
        running.stop()
        primary.stop()
        relay.stop()
        refresh_users_file_from(engine, standby_store)


def due_now(engine: Engine) -> None:
    """Every pending standby copy due now (time passes, without waiting it)."""
    with Session(engine) as session, session.begin():
        session.execute(
            update(StandbyCopy)
            .where(StandbyCopy.status == COPY_PENDING)
            .values(next_attempt_at=datetime.now(UTC))
        )


def refresh_users_file_from(engine: Engine, store: DovecotServer) -> None:
    """The users file back to the roster's covered people (for the tests after)."""
    with Session(engine) as session:
        refresh_users_file(session, store.users_file)


def test_a_standby_store_that_is_down_delays_the_copy_never_the_primary(
    mail_with_standby: Mail,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    """Dovecot stopped: the primary still gets the message at once, the copy waits with
    the reason; Dovecot back: the copy lands."""
    mail = mail_with_standby
    standby_store.stop()
    subject = f"while the store is down {secrets.token_hex(4)}"
    mail.send(["ana@acme.test"], subject=subject)
    assert len(mail.primary.handler.wait_for(1)) == 1
    mail.wait(lambda: copies(mail.engine)[0].attempts >= 1)
    waiting = copies(mail.engine)[0]
    assert waiting.status == COPY_PENDING and waiting.last_reply.strip()
    standby_store.start()
    mail.retry()
    mail.wait(lambda: copies(mail.engine)[0].status == COPY_DONE)
    assert standby_subjects(standby_store, "ana@acme.test").count(subject) == 1


def test_a_person_covered_a_moment_ago_gets_a_copy(
    mail_with_standby: Mail,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    """Bob is re-enabled just before a message arrives: the store learns of him when
    his copy is first refused, and the copy lands."""
    mail = mail_with_standby
    # The gateway wrote the users file without Bob as it started. Dovecot looks at the
    # file at most once a second: in the second of that write it may still hold the last
    # test's list, with Bob, and take his copy without refusing it first.
    next_second()
    with transaction(session_factory(mail.engine), writing=True) as session:
        session.scalars(select(Person).where(Person.mail == "bob@acme.test")).one().disabled = False
    subject = f"welcome back {secrets.token_hex(4)}"
    mail.send(["bob@acme.test"], subject=subject)
    mail.wait(lambda: [c.status for c in copies(mail.engine)] == [COPY_DONE])
    assert standby_subjects(standby_store, "bob@acme.test").count(subject) == 1


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 (and localhost)."""
    return make_test_ca(tmp_path_factory.mktemp("gateway-tls"))


def test_starttls_in_and_a_verified_primary_out(
    engine: Engine, database_url: str, certificates: tuple[Path, Path, Path]
) -> None:
    """The gateway offers STARTTLS with its configured certificate; to a primary that
    offers STARTTLS it delivers over TLS, checking the certificate with [gateway] ca_file,
    and refuses to deliver in clear or to a certificate it cannot check."""
    ca, cert, key = certificates
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    primary, relay = Primary(tls_context=server_side).start(), Primary().start()
    people(engine, primary.port)
    with transaction(session_factory(engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        acme.primary_tls = "starttls"
    config = gateway_config(
        database_url,
        relay.port,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        ca_file=str(ca),
    )
    running = Gateway(config, engine=engine, idle=0.05)
    running.start()
    mail = Mail(engine, running, primary, relay)
    try:
        with smtplib.SMTP("127.0.0.1", running.settings.port) as client:
            client.ehlo("client.test")
            assert client.has_extn("starttls")
            client.starttls(context=ssl.create_default_context(cafile=str(ca)))
            client.ehlo("client.test")
            client.sendmail("someone@sender.test", ["ana@acme.test"], b"Subject: tls\r\n\r\nx\r\n")
        got = primary.handler.wait_for(1)
        assert b"with ESMTPS" in got[0].content.split(b"\r\n\r\n")[0]
        mail.wait(lambda: mail.recipients()[0].status == DELIVERED)
    finally:
        running.stop()
    # Without the CA the primary's certificate cannot be checked: nothing is delivered.
    untrusting = Gateway(gateway_config(database_url, relay.port), engine=engine, idle=0.05)
    untrusting.start()
    mail = Mail(engine, untrusting, primary, relay)
    try:
        mail.send(["ana@acme.test"])
        mail.wait(lambda: mail.recipients()[-1].status == DEFERRED)
        assert "TLS" in mail.recipients()[-1].last_reply
        assert len(primary.messages) == 1
    finally:
        untrusting.stop()
        primary.stop()
        relay.stop()


def test_tls_sessions_leave_a_busy_sender_its_whole_connection_limit(
    engine: Engine, database_url: str, certificates: tuple[Path, Path, Path]
) -> None:
    """STARTTLS makes aiosmtpd announce the same connection a second time: counted twice
    and given back once, each TLS session left its sender one connection fewer, until a
    busy sender could hold one at a time. After several TLS sessions a client still has
    its whole limit, and the server counts no connection that has ended."""
    ca, cert, key = certificates
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    config = gateway_config(
        database_url,
        relay.port,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        max_connections_per_client=2,
    )
    running = Gateway(config, engine=engine, idle=0.05)
    running.limits.exempt = lambda _client: False  # type: ignore[method-assign]  # loopback as a remote client
    running.start()
    try:
        for number in range(3):
            with smtplib.SMTP("127.0.0.1", running.settings.port) as client:
                client.starttls(context=ssl.create_default_context(cafile=str(ca)))
                client.sendmail(
                    "tls@sender.test", ["ana@acme.test"], f"Subject: {number}\r\n\r\nx\r\n"
                )
        with (
            socket.create_connection(("127.0.0.1", running.settings.port), timeout=10) as one,
            socket.create_connection(("127.0.0.1", running.settings.port), timeout=10) as two,
        ):
            assert one.recv(100).startswith(b"220") and two.recv(100).startswith(b"220")
        assert running.controller is not None
        deadline = time.monotonic() + 10
        while running.controller.connections.open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.controller.connections.open == set()
    finally:
        running.stop()
        primary.stop()
        relay.stop()


def test_the_sender_is_told_of_a_delay_once_and_of_the_end(mail: Mail) -> None:
    """A message waiting past the warning time gets one delay notice; past its lifetime
    it is given up with a failure notice (both through the relay, from the null sender)."""
    mail.primary.handler.rcpt_reply = "451 4.3.0 Mailbox busy"
    mail.send(["ana@acme.test"], sender="writer@sender.test")
    mail.wait(lambda: mail.recipients()[0].status == DEFERRED)
    with transaction(session_factory(mail.engine), writing=True) as session:
        message = session.scalars(select(MailMessage)).one()
        message.received_at = message.received_at - timedelta(hours=5)
    mail.retry()
    notices = mail.relay.handler.wait_for(1)
    assert b"Action: delayed" in notices[0].content
    mail.retry()
    mail.wait(lambda: mail.recipients()[0].attempts >= 3)
    assert len(mail.relay.messages) == 1  # told once
    with transaction(session_factory(mail.engine), writing=True) as session:
        message = session.scalars(select(MailMessage).where(MailMessage.origin == "smtp")).one()
        message.received_at = message.received_at - timedelta(days=5)
    mail.retry()
    mail.wait(lambda: mail.recipients()[0].status == BOUNCED)
    notices = mail.relay.handler.wait_for(2)
    assert b"Action: failed" in notices[1].content
    assert b"Mailbox busy" in notices[1].content


def test_an_operator_reads_and_retries_the_queue_from_the_command_line(
    mail: Mail, tmp_path: Path, database_url: str
) -> None:
    """`continuity queue list|show|retry`: the waiting message with its reason, one
    message's recipients, and a retry that delivers at once once the primary is back."""
    mail.primary.stop()
    reply = mail.send(["ana@acme.test"], sender="writer@sender.test")
    queue_id = reply.rsplit(" ", 1)[-1]
    mail.wait(lambda: mail.recipients()[0].status == DEFERRED)
    command = Continuity(tmp_path, database_url)
    command.configure()
    listed = command.run("queue", "list", "--domain", "acme.test", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["queue_id"], r["sender"], r["pending"]) for r in rows] == [
        (queue_id, "writer@sender.test", 1)
    ]
    assert "refused" in rows[0]["last_reply"]
    shown = command.run("queue", "show", queue_id.lower())
    assert (
        shown.exit_code == 0 and "recipient ana@acme.test: deferred, 1 attempt(s)" in shown.stdout
    )
    assert command.run("queue", "show", "NOSUCHID").exit_code == 1
    assert command.run("queue", "retry").exit_code == 2
    mail.primary.start()
    retried = command.run("queue", "retry", queue_id)
    assert retried.exit_code == 0 and "1 recipient(s) due now" in retried.stdout
    mail.gateway.wake()
    mail.wait(lambda: mail.recipients()[0].status == DELIVERED)
    assert command.run("queue", "list").stdout.strip() == "the queue is empty"


def test_malformed_commands_and_long_lines_get_replies_and_the_server_goes_on(mail: Mail) -> None:
    """Garbage, NUL in a command, an over-long line and a bad address are answered with
    errors; the same connection can still send a message."""
    with greeted(mail) as (_raw, _reader, say):
        assert say(b"FROBNICATE").startswith(b"500")
        assert say(b"MAIL FROM:<a\x00b@sender.test>")[:1] == b"5"
        assert say(b"MAIL FROM:<" + b"a" * 2000 + b"@sender.test>").startswith(b"500")
        assert say(b"MAIL FROM:<not an address>")[:1] == b"5"
        assert say(b"MAIL FROM:<a@sender.test>").startswith(b"250")
        assert say(b"RCPT TO:<ana@acme.test>").startswith(b"250")
        assert say(b"DATA").startswith(b"354")
        assert say(b"Subject: still here\r\n\r\nyes\r\n.").startswith(b"250")
    assert len(mail.primary.handler.wait_for(1)) == 1


def test_a_smuggled_end_of_data_is_no_end_and_what_follows_the_real_end_is_read(
    mail: Mail,
) -> None:
    """The gateway reads DATA in blocks: an end of data after a bare LF (SMTP smuggling)
    ends nothing, so the commands after it are the message's text, not a second message
    to bob; a line over the limit gets 500 and nothing is kept; a QUIT sent in the same
    packet as the real end of data is answered after the 250."""
    with greeted(mail) as (raw, reader, say):

        def envelope() -> None:
            assert say(b"MAIL FROM:<a@sender.test>").startswith(b"250")
            assert say(b"RCPT TO:<ana@acme.test>").startswith(b"250")
            assert say(b"DATA").startswith(b"354")

        envelope()
        assert say(b"Subject: long\r\n\r\n" + b"x" * 2000 + b"\r\n.").startswith(b"500")
        envelope()
        raw.sendall(
            b"Subject: first\r\n\r\nhi\n.\r\nMAIL FROM:<evil@sender.test>\r\n"
            b"RCPT TO:<bob@acme.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n"
        )
        assert reader.readline().startswith(b"250 2.0.0 Ok: queued as ")
        assert reader.readline().startswith(b"221")
    (got,) = mail.primary.handler.wait_for(1)
    assert got.recipients == ["ana@acme.test"]
    assert b"Subject: first" in got.content and b"Subject: smuggled" in got.content
    time.sleep(0.3)
    assert [r.address for r in mail.recipients()] == ["ana@acme.test"]


def test_a_client_connected_when_the_gateway_stops_hears_421_and_nothing_half_sent_is_kept(
    engine: Engine, database_url: str
) -> None:
    """Stopping the gateway in the middle of a client's DATA tells the client 421 and
    closes the connection (it will try again: it never had a 250), and keeps nothing of
    the half-sent message."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    gateway = Gateway(gateway_config(database_url, relay.port), engine=engine, idle=0.05)
    gateway.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", gateway.settings.port), timeout=10) as raw,
            raw.makefile("rb") as reader,
        ):
            say = talking(raw, reader)

            assert reader.readline().startswith(b"220")
            assert say(b"EHLO client.test").startswith(b"250")
            assert say(b"MAIL FROM:<a@sender.test>").startswith(b"250")
            assert say(b"RCPT TO:<ana@acme.test>").startswith(b"250")
            assert say(b"DATA").startswith(b"354")
            raw.sendall(b"Subject: half\r\n\r\nthe first half\r\n")
            gateway.stop()
            assert reader.readline().startswith(b"421 4.3.2")
            assert reader.readline() == b""
    finally:
        primary.stop()
        relay.stop()
    with Session(engine) as session:
        assert session.scalars(select(MailMessage)).all() == []


def test_a_sender_the_primary_refuses_costs_only_its_own_message(mail: Mail) -> None:
    """Regression: a refusal at MAIL (a sender the primary's policy refuses) was taken as
    a failure of the whole session, and every later message of the batch was bounced
    with it. Now only that message is refused; the others of the batch are delivered."""
    with transaction(session_factory(mail.engine), writing=True) as session:
        # The primary is stopped to gather the three into one batch, not to fail over.
        session.scalars(
            select(Domain).where(Domain.name == "acme.test")
        ).one().failover_automatic = False
    mail.primary.stop()
    mail.primary.handler.senders["spoofed@sender.test"] = "550 5.7.1 Sender refused by policy"
    for sender in ("first@sender.test", "spoofed@sender.test", "third@sender.test"):
        mail.send(["ana@acme.test"], sender=sender)
    mail.wait(lambda: all(r.attempts >= 1 for r in mail.recipients()))
    mail.primary.start()
    mail.retry()
    mail.wait(lambda: all(r.status in (DELIVERED, BOUNCED) for r in mail.recipients()))
    got = sorted(m.sender for m in mail.primary.handler.wait_for(2))
    assert got == ["first@sender.test", "third@sender.test"]
    statuses = {r.status for r in mail.recipients()}
    assert statuses == {DELIVERED, BOUNCED}
    # A policy refusal (5.7.x) is not told to the sender: it is usually forged.
    time.sleep(0.3)
    assert mail.relay.messages == []


def test_a_client_that_leaves_while_its_commit_waits_stores_nothing(
    engine: Engine, database_url: str
) -> None:
    """Regression: a client that left during the group commit (aiosmtpd cancels its
    handler) made the committer's thread die on the cancelled future, and nothing was
    stored after it. Its message is not stored (no 250 could be sent); the next is."""
    committer = GroupCommitter(engine)
    gone = Incoming(queue_id=new_queue_id(), sender="a@sender.test", body=b"x", recipients=[])
    kept = Incoming(queue_id=new_queue_id(), sender="b@sender.test", body=b"y", recipients=[])
    cancelled = committer.submit(gone)
    assert cancelled.cancel()
    committer.start()
    try:
        committer.submit(kept).result(timeout=20)
        after = Incoming(queue_id=new_queue_id(), sender="c@sender.test", body=b"z", recipients=[])
        committer.submit(after).result(timeout=20)
    finally:
        committer.stop()
    with Session(engine) as session:
        stored = set(session.scalars(select(MailMessage.queue_id)))
    assert stored == {kept.queue_id, after.queue_id}


def test_a_message_that_cannot_be_stored_fails_alone(engine: Engine, database_url: str) -> None:
    """A group commit with one message the database refuses (its queue id is taken)
    stores the others: only the refused message's sender hears of a failure (a 451),
    whatever point of the commit the database reports it at (on PostgreSQL, at the end
    of the group's pipelined inserts)."""
    taken = Incoming(queue_id=new_queue_id(), sender="a@sender.test", body=b"x", recipients=[])
    with writing(engine) as connection:
        store(connection, [taken])
    committer = GroupCommitter(engine, threads=1)  # one thread: the four are one group
    good = [
        Incoming(queue_id=new_queue_id(), sender=f"{n}@sender.test", body=b"y", recipients=[])
        for n in range(3)
    ]
    again = Incoming(queue_id=taken.queue_id, sender="b@sender.test", body=b"z", recipients=[])
    futures = [committer.submit(message) for message in (good[0], again, *good[1:])]
    committer.start()  # all four are waiting: they make one group
    try:
        outcomes = [f.exception(timeout=20) for f in futures]
    finally:
        committer.stop()
    assert [error is None for error in outcomes] == [True, False, True, True]
    with Session(engine) as session:
        stored = session.execute(select(MailMessage.queue_id, MailMessage.sender)).all()
    assert sorted(stored) == sorted(
        [(taken.queue_id, "a@sender.test"), *((m.queue_id, m.sender) for m in good)]
    )


def test_a_commit_after_the_database_dropped_the_connection_is_stored(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committing thread keeps its connection between commits. PostgreSQL ends it
    (a restart, an administrator's pg_terminate_backend) between two messages: the next
    message is still stored, on a new connection, and its sender hears 250, not 451."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop a connection")
    # The thread that kept the connection commits next, however long the wait took.
    monkeypatch.setattr("gateway.commit.HELD_IDLE_SECONDS", 600.0)
    committer = GroupCommitter(engine, threads=1)
    committer.start()
    try:
        first = Incoming(queue_id=new_queue_id(), sender="a@sender.test", body=b"x", recipients=[])
        committer.submit(first).result(timeout=20)
        with engine.connect() as admin:
            ended = admin.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
            assert ended >= 1
            others = text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

            def left() -> int:
                admin.rollback()  # pg_stat_activity holds still within a transaction
                return int(admin.execute(others).scalar_one())

            deadline = time.monotonic() + 10  # the backends end a moment after the signal
            while left() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert left() == 0
        after = Incoming(queue_id=new_queue_id(), sender="b@sender.test", body=b"y", recipients=[])
        assert committer.submit(after).exception(timeout=20) is None
    finally:
        committer.stop()
    with Session(engine) as session:
        stored = set(session.scalars(select(MailMessage.queue_id)))
    assert stored == {first.queue_id, after.queue_id}


def test_a_stalled_commit_holds_back_no_other_message_on_postgresql(engine: Engine) -> None:
    """On PostgreSQL two groups may be committing at once: a message whose commit is held
    up (here by another transaction's lock on its row) does not hold back the messages
    after it. On SQLite, with its one writer, the next message waits, and both are
    stored once the lock goes."""
    committer = GroupCommitter(engine)
    stalled = Incoming(queue_id=new_queue_id(), sender="a@sender.test", body=b"x", recipients=[])
    nextone = Incoming(queue_id=new_queue_id(), sender="b@sender.test", body=b"y", recipients=[])
    with engine.connect() as blocker:
        if engine.dialect.name == "sqlite":
            blocker.execution_options(begin_immediate=True)
            blocker.begin()  # BEGIN IMMEDIATE: the one write lock
        else:
            blocker.begin()
            store(blocker, [stalled])  # the same queue id, not committed: its row is locked
        committer.start()
        try:
            first = committer.submit(stalled)
            deadline = time.monotonic() + 10
            while not first.running() and time.monotonic() < deadline:
                time.sleep(0.01)
            second = committer.submit(nextone)
            with contextlib.suppress(FutureTimeout):
                second.result(timeout=0.5 if engine.dialect.name == "sqlite" else 10)
            seen = first.running(), first.done(), second.done()
        finally:
            blocker.rollback()
            committer.stop()
    first.result(timeout=0)
    second.result(timeout=0)
    # The first was being committed; the second was stored while the first waited, on
    # PostgreSQL only.
    assert seen == (True, False, engine.dialect.name == "postgresql")
    with Session(engine) as session:
        stored = set(session.scalars(select(MailMessage.queue_id)))
    assert stored == {stalled.queue_id, nextone.queue_id}


def test_every_connection_of_the_gateway_commits_durably(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Regression: `continuity gateway` read the schema before making its engine durable,
    and that pooled connection kept SQLite's synchronous=NORMAL: a 250 could rest on a
    commit a power cut undoes. Every connection the gateway uses is FULL (2). (SQLite's
    setting: PostgreSQL waits for its log to reach the disk by default.)"""
    path = tmp_path / "roster.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    try:
        with engine.connect() as early:
            early.exec_driver_sql("SELECT 1")
        Gateway(gateway_config(url, free_port()), engine=engine, receive=False)
        with writing(engine) as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    finally:
        engine.dispose()
