"""Sending from the webmail through a real aiosmtpd relay that keeps what it received:
per-recipient refusals, a relay that is down or says no, Bcc only in the envelope, the
DKIM signature on what arrived, hostile subjects that add no header, and the hourly
count of recipients."""

from __future__ import annotations

import datetime
import email
import ssl
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from continuity.localslapd import free_port
from portal.access import Principal
from portal.audit_texts import audit_sentences
from portal.webmail import sending
from portal.webmail.compose import build_message, parse_recipients, reply_fields
from portal.webmail.message import parse
from portal.webmail.sending import (
    MessageRefused,
    RelayDown,
    SenderRefused,
    recipients_per_hour,
    recipients_sent_last_hour,
    record_sent,
    send,
)
from roster.config import Config
from roster.dkim import dns_records, new_private_key
from roster.domains import add_domain
from roster.models import AuditEvent, Domain, Person, utcnow
from tests.servers.smtp import Primary

SENDER = "ana@acme.test"


@pytest.fixture
def relay() -> Iterator[Primary]:
    """An SMTP relay on loopback whose answers a test can set; it keeps what it took."""
    server = Primary().start()
    yield server
    server.stop()


def through(relay: Primary, **outbound: str) -> Config:
    """A configuration whose [outbound] relay is ``relay``."""
    return Config(outbound={"relay": f"127.0.0.1:{relay.port}", **outbound})


def message(
    to: str = "bo@example.test", cc: str = "", bcc: str = "", subject: str = "Figures"
) -> EmailMessage:
    """A message from Ana as the compose page builds it."""
    return build_message(
        sender=("Ana García", SENDER),
        to=parse_recipients(to),
        cc=parse_recipients(cc),
        bcc=parse_recipients(bcc),
        subject=subject,
        body="The numbers are in.\n",
        attachments=[],
        domain="acme.test",
    )


def header_names(raw: bytes) -> list[str]:
    """The names of a message's top-level header fields, in order."""
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\n") if line[:1] not in (" ", "\t")]


# --- what arrives ------------------------------------------------------------------------


def test_the_relay_gets_the_message_with_bcc_only_in_the_envelope(relay: Primary) -> None:
    everyone = ["bo@example.test", "cy@example.test", "hidden@example.test"]

    result = send(
        through(relay),
        message(to="bo@example.test", cc="cy@example.test", bcc="hidden@example.test"),
        SENDER,
        everyone,
        dkim=None,
    )

    assert result.accepted == everyone and result.refused == {}
    (received,) = relay.handler.wait_for(1)
    assert received.sender == SENDER
    assert received.recipients == everyone
    assert "Bcc" not in header_names(received.content)
    assert b"hidden@example.test" not in received.content
    read = email.message_from_bytes(received.content, policy=default_policy)
    assert str(read["From"]) == "Ana García <ana@acme.test>"
    assert read.get_content().replace("\r\n", "\n") == "The numbers are in.\n"


def test_each_refused_recipient_is_reported_and_the_others_get_it(relay: Primary) -> None:
    relay.handler.replies = {
        "nobody@example.test": "550 5.1.1 No such user here",
        "full@example.test": "452 4.2.2 Mailbox full",
    }
    everyone = ["bo@example.test", "nobody@example.test", "full@example.test"]

    result = send(through(relay), message(to=", ".join(everyone)), SENDER, everyone, dkim=None)

    assert result.accepted == ["bo@example.test"]
    assert result.refused == {
        "nobody@example.test": (550, "5.1.1 No such user here"),
        "full@example.test": (452, "4.2.2 Mailbox full"),
    }
    assert [m.recipients for m in relay.handler.wait_for(1)] == [["bo@example.test"]]


def test_every_recipient_refused_for_good_is_reported_and_nothing_sent(relay: Primary) -> None:
    relay.handler.rcpt_reply = "550 5.7.1 Relaying denied"
    everyone = ["bo@example.test", "cy@example.test"]

    result = send(through(relay), message(to=", ".join(everyone)), SENDER, everyone, dkim=None)

    assert result.accepted == []
    assert result.refused == dict.fromkeys(everyone, (550, "5.7.1 Relaying denied"))
    assert relay.messages == []


def test_every_recipient_deferred_is_a_relay_that_cannot_send_now(relay: Primary) -> None:
    relay.handler.rcpt_reply = "451 4.3.0 Try again later"

    with pytest.raises(RelayDown) as down:
        send(through(relay), message(), SENDER, ["bo@example.test"], dkim=None)

    assert down.value.reply == (451, "4.3.0 Try again later")
    assert relay.messages == []


def test_a_sender_refused_for_good_is_said_so(relay: Primary) -> None:
    relay.handler.senders = {SENDER: "553 5.7.1 Sender address rejected: not owned by you"}

    with pytest.raises(SenderRefused) as refused:
        send(through(relay), message(), SENDER, ["bo@example.test"], dkim=None)

    assert refused.value.reply == (553, "5.7.1 Sender address rejected: not owned by you")
    assert not isinstance(refused.value, RelayDown)
    assert relay.messages == []


def test_a_sender_deferred_is_a_relay_that_cannot_send_now(relay: Primary) -> None:
    relay.handler.senders = {SENDER: "421 4.3.2 Service shutting down"}

    with pytest.raises(RelayDown):
        send(through(relay), message(), SENDER, ["bo@example.test"], dkim=None)


@pytest.mark.parametrize(
    ("reply", "error"),
    [("554 5.7.1 Message refused as spam", MessageRefused), ("451 4.3.0 Queue full", RelayDown)],
)
def test_a_message_refused_after_data(relay: Primary, reply: str, error: type[Exception]) -> None:
    relay.handler.data_reply = reply

    with pytest.raises(error) as refused:
        send(through(relay), message(), SENDER, ["bo@example.test"], dkim=None)

    assert refused.value.reply[0] == int(reply[:3])  # type: ignore[attr-defined]


# --- a relay that cannot be used ---------------------------------------------------------


def test_a_relay_that_is_down_is_relay_down(relay: Primary) -> None:
    relay.stop()
    started = time.monotonic()

    with pytest.raises(RelayDown) as down:
        send(through(relay), message(), SENDER, ["bo@example.test"], dkim=None)

    assert down.value.reply == (0, "the relay refused the connection")
    assert time.monotonic() - started < 5


def test_no_relay_configured_is_relay_down() -> None:
    with pytest.raises(RelayDown) as down:
        send(Config(), message(), SENDER, ["bo@example.test"], dkim=None)

    assert "no [outbound] relay" in str(down.value)


def test_a_relay_that_does_not_answer_in_time_is_relay_down(
    relay: Primary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sending, "TIMEOUT", 0.5)  # 15 s in production; the same path
    relay.handler.hang = 5.0
    started = time.monotonic()

    with pytest.raises(RelayDown) as down:
        send(through(relay), message(), SENDER, ["bo@example.test"], dkim=None)

    assert down.value.reply == (0, "the relay did not answer in time")
    assert time.monotonic() - started < 3
    assert relay.messages == []


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a certificate no authority vouches for."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "relay.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "relay.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "relay.pem", tmp_path / "relay.key")
    return context


def test_a_relay_whose_certificate_nobody_vouches_for_gets_nothing(tmp_path: Path) -> None:
    """STARTTLS, when offered, is checked against the system's authorities: a relay
    (or someone in the middle) with a self-made certificate is not sent the message."""
    relay = Primary(free_port(), tls_context=self_signed(tmp_path)).start()
    try:
        with pytest.raises(RelayDown) as down:
            send(through(relay), message(), SENDER, ["bo@example.test"], dkim=None)
    finally:
        relay.stop()

    assert "TLS with the relay failed" in down.value.reply[1]
    assert relay.messages == []


# --- DKIM --------------------------------------------------------------------------------


def test_what_the_relay_received_verifies_against_the_published_key(relay: Primary) -> None:
    domain = Domain(
        name="acme.test", dkim_selector="continuity202611", dkim_private_key=new_private_key()
    )
    assert domain.dkim_private_key is not None
    key = ("acme.test", "continuity202611", domain.dkim_private_key)
    zone = {name + ".": value.encode() for name, _kind, value in dns_records(domain, None)}

    send(through(relay), message(), SENDER, ["bo@example.test"], dkim=key)

    (received,) = relay.handler.wait_for(1)
    assert header_names(received.content)[0] == "DKIM-Signature"
    assert b" d=acme.test;" in received.content and b" s=continuity202611;" in received.content
    assert dkim.verify(received.content, dnsfunc=lambda name, timeout=5: zone.get(name.decode()))
    tampered = received.content.replace(b"The numbers are in.", b"The numbers are out.")
    assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: zone.get(name.decode()))


def test_a_key_that_cannot_sign_does_not_stop_the_message(relay: Primary) -> None:
    broken = ("acme.test", "continuity202611", "not a key")

    result = send(through(relay), message(), SENDER, ["bo@example.test"], dkim=broken)

    assert result.accepted == ["bo@example.test"]
    (received,) = relay.handler.wait_for(1)
    assert "DKIM-Signature" not in header_names(received.content)


# --- hostile mail answered ---------------------------------------------------------------

HOSTILE = (
    b"From: =?UTF-8?Q?Eve=0D=0ABcc=3A_victim=40evil.test?= <eve@evil.test>\r\n"
    b"To: ana@acme.test\r\n"
    b"Cc: =?UTF-8?Q?Cy=0ABcc=3A_victim2=40evil.test?= <cy@acme.test>\r\n"
    b"Subject: =?UTF-8?Q?x=0ABcc:victim3@evil.test=0D=0AX-Injected:_yes?=\r\n"
    b"Message-ID: <hostile@evil.test>\r\n"
    b"Date: Mon, 30 Nov 2026 08:00:00 +0000\r\n"
    b"\r\n"
    b"Reply to me.\r\n"
)


def test_replying_to_encoded_newlines_adds_no_header(relay: Primary) -> None:
    """Subject and names carry ``=0A``/``=0D=0A`` in encoded words: a reply built from
    them must reach the relay with no Bcc or other header of theirs."""
    fields = reply_fields(parse(HOSTILE), {SENDER}, all=True)
    to, cc = parse_recipients(fields["to"]), parse_recipients(fields["cc"])
    reply = build_message(
        sender=("Ana", SENDER),
        to=to,
        cc=cc,
        bcc=[],
        subject=fields["subject"],
        body=fields["body"],
        attachments=[],
        in_reply_to=fields["in_reply_to"],
        references=fields["references"],
        domain="acme.test",
    )
    everyone = [address for _name, address in [*to, *cc]]

    result = send(through(relay), reply, SENDER, everyone, dkim=None)

    (received,) = relay.handler.wait_for(1)
    assert result.accepted == ["eve@evil.test", "cy@acme.test"]
    assert received.recipients == ["eve@evil.test", "cy@acme.test"]
    assert header_names(received.content) == [
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    ]
    read = email.message_from_bytes(received.content, policy=default_policy)
    assert [a.addr_spec for a in read["To"].addresses] == ["eve@evil.test"]
    assert [a.addr_spec for a in read["Cc"].addresses] == ["cy@acme.test"]
    assert "\n" not in str(read["Subject"]) and "\r" not in str(read["Subject"])
    assert str(read["Subject"]).startswith("Re: x Bcc:victim3@evil.test")


# --- the hourly count --------------------------------------------------------------------


def person_in(engine: Engine, mail: str) -> Person:
    """A person of acme.test in the roster (added with the domain if need be)."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        domain = session.query(Domain).filter_by(name="acme.test").one_or_none()
        if domain is None:
            domain = add_domain(session, "acme.test", "cli:test")
        person = Person(
            domain_id=domain.id, source="corp", external_id=mail, dn=f"uid={mail}", mail=mail
        )
        session.add(person)
    return person


def test_the_recipients_of_the_last_hour_are_counted_per_person(engine: Engine) -> None:
    ana, bo = person_in(engine, SENDER), person_in(engine, "bo@acme.test")
    with Session(engine) as session, session.begin():
        record_sent(session, ana, 3, "10.0.0.1")
        record_sent(session, ana, 40, "10.0.0.1")
        record_sent(session, bo, 7, None)
    with Session(engine) as session, session.begin():  # one from long ago
        record_sent(session, ana, 100, "10.0.0.1")
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.after["recipients"].as_integer() == 100)
            .values(at=utcnow() - timedelta(minutes=61))
        )

    with Session(engine) as session:
        assert recipients_sent_last_hour(session, ana.id) == 43
        assert recipients_sent_last_hour(session, bo.id) == 7
        rows = session.query(AuditEvent).filter_by(action="webmail_sent").all()
        assert {(r.actor, r.domain_id, r.client) for r in rows if r.person_id == ana.id} == {
            (SENDER, ana.domain_id, "10.0.0.1")
        }
        texts = [audit_sentences(r.action, r.before, r.after, r.detail) for r in rows]
    assert ["To 3 recipients."] in texts


def test_a_signed_in_principal_is_recorded_like_a_person(engine: Engine) -> None:
    ana = person_in(engine, SENDER)
    principal = Principal("person", ana.id, SENDER, "Ana", ana.domain_id, 0)
    with Session(engine) as session, session.begin():
        record_sent(session, principal, 2, None)

    with Session(engine) as session:
        assert recipients_sent_last_hour(session, ana.id) == 2


def test_the_hourly_limit_comes_from_the_webmail_table() -> None:
    assert recipients_per_hour(Config()) == 200
    assert recipients_per_hour(Config(webmail={"recipients_per_hour": 30})) == 30
