"""Delivery status notifications and delay notices (gateway/dsn.py): the notices are
parsed back with the email package and read as a sender's mail program would, and one
goes through a real aiosmtpd relay with ``MAIL FROM:<>``."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from typing import Any

import pytest

from gateway.dsn import (
    HEADER_LIMIT,
    REPLY_LIMIT,
    Notice,
    RecipientReport,
    build_delay,
    build_failure,
    should_notify,
)
from tests.servers.smtp import Collect, smtp_server

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ARRIVAL = NOW - timedelta(hours=4, minutes=10)
MTA = "gw.example.net"
POSTMASTER = "MAILER-DAEMON@gw.example.net"
ORIGINAL = (
    b"Received: from client.example.org by gw.example.net\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Message-ID: <q3@example.org>\r\n"
    b"\r\n"
    b"SECRET-BODY-LINE: the figures themselves\r\n"
)
NOTICE_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "auto-submitted",
    "mime-version",
    "content-type",
}
RECIPIENT_FIELDS = {
    "final-recipient",
    "action",
    "status",
    "remote-mta",
    "diagnostic-code",
    "last-attempt-date",
}


def failure(*reports: Any, original: bytes = ORIGINAL, **options: Any) -> Notice:
    """A failure notice about ``original`` for alice@example.org, at NOW."""
    options.setdefault("language", "en")
    return build_failure(
        original,
        "alice@example.org",
        list(reports),
        arrival=ARRIVAL,
        reporting_mta=MTA,
        from_address=POSTMASTER,
        now=NOW,
        **options,
    )


def delay(*reports: Any, **options: Any) -> Notice:
    """A delay notice about ORIGINAL for alice@example.org, retried until 5 days after arrival."""
    options.setdefault("language", "en")
    return build_delay(
        ORIGINAL,
        "alice@example.org",
        list(reports),
        arrival=ARRIVAL,
        retry_until=ARRIVAL + timedelta(days=5),
        reporting_mta=MTA,
        from_address=POSTMASTER,
        now=NOW,
        **options,
    )


def parse(notice: Notice) -> EmailMessage:
    """The notice as the sender's mail program reads it."""
    parsed = message_from_bytes(notice.data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(notice: Notice) -> tuple[EmailMessage, str, list[Message], str]:
    """The notice, its words, its delivery-status blocks and its attached headers."""
    parsed = parse(notice)
    payload: Any = parsed.get_payload()
    human, status, headers = payload
    return parsed, human.get_content(), status.get_payload(), headers.get_content()


def recipient_block(notice: Notice, index: int = 0) -> Message:
    """The per-recipient delivery-status fields of the index-th recipient."""
    return parts(notice)[2][1 + index]


def test_failure_is_a_multipart_report_with_the_three_parts() -> None:
    notice = failure(
        RecipientReport(
            "bob@example.com", 550, "5.1.1 <bob@example.com>: user unknown", "mx.example.com"
        )
    )
    parsed, words, blocks, headers = parts(notice)

    assert notice.rcpt_to == "alice@example.org"
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parsed.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert {name.lower() for name in parsed} == NOTICE_HEADERS
    assert parsed["To"] == "alice@example.org"
    assert parsed["From"].addresses[0].addr_spec == POSTMASTER
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Message-ID"].endswith("@gw.example.net>")
    assert parsed["Date"].datetime == NOW
    assert parsed["Subject"] == "Undelivered mail: Quarterly figures"

    assert "could not be delivered" in words
    assert (
        "bob@example.com: the receiving server (mx.example.com) refused it and answered "
        '"550 5.1.1 <bob@example.com>: user unknown"' in words
    )
    per_message, per_recipient = blocks
    assert per_message["Reporting-MTA"] == "dns; gw.example.net"
    assert per_message["Arrival-Date"] == "Mon, 30 Nov 2026 07:50:00 +0000"
    assert "Original-Envelope-Id" not in per_message
    assert {name.lower() for name in per_recipient} == RECIPIENT_FIELDS
    assert per_recipient["Final-Recipient"] == "rfc822; bob@example.com"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.example.com"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.com>: user unknown"
    assert per_recipient["Last-Attempt-Date"] == "Mon, 30 Nov 2026 12:00:00 +0000"


def test_the_original_headers_are_attached_and_its_body_is_not() -> None:
    notice = failure(("bob@example.com", 550, "no such user", None))
    headers = parts(notice)[3]

    assert "Subject: Quarterly figures" in headers
    assert "Message-ID: <q3@example.org>" in headers
    assert "Received: from client.example.org" in headers
    assert b"SECRET-BODY-LINE" not in notice.data


def test_the_notice_is_seven_bit_with_crlf_lines_a_relay_takes() -> None:
    notice = failure(
        ("josé@example.es", 550, "5.1.1 usuario desconocido: josé", "mx.example.es"),
        original=ORIGINAL.replace(b"Quarterly figures", "Reunión mañana".encode()),
        language="es",
    )
    lines = notice.data.split(b"\r\n")

    assert notice.data.isascii()
    assert b"\n" not in notice.data.replace(b"\r\n", b"")
    assert max(len(line) for line in lines) <= 998


@pytest.mark.parametrize(
    ("code", "reply", "status"),
    [
        (550, "5.1.1 <bob@example.com>: Recipient address rejected", "5.1.1"),
        (550, "550 5.1.1 user unknown", "5.1.1"),
        (550, "550-5.1.1 The email account does not exist.\r\n550 5.1.1 Try again.", "5.1.1"),
        (552, "Requested mail action aborted: exceeded storage allocation", "5.2.2"),
        (552, "5.3.4 Message size exceeds fixed limit", "5.3.4"),
        (550, "Mailbox unavailable", "5.0.0"),
        (553, "mailbox name not allowed", "5.1.3"),
        (554, "4.7.1 a class that contradicts the reply code", "5.0.0"),
        (521, "no mail here", "5.0.0"),
        (451, "4.3.0 Temporary lookup failure", "4.3.0"),
        (451, "local error in processing", "4.3.0"),
        (421, "service not available", "4.3.2"),
        (452, "", "4.3.1"),
        (None, "connect to mx.example.com[192.0.2.1]:25: Connection refused", "4.4.1"),
    ],
)
def test_status_comes_from_the_enhanced_code_or_else_from_the_reply_code(
    code: int | None, reply: str, status: str
) -> None:
    block = recipient_block(failure(("bob@example.com", code, reply, "mx.example.com")))

    assert block["Status"] == status
    assert block["Action"] == "failed"


def test_a_multiline_reply_is_one_diagnostic_line_without_repeated_codes() -> None:
    reply = "550-5.1.1 The email account does not exist.\r\n550 5.1.1 Please try again."
    block = recipient_block(failure(("bob@example.com", 550, reply, "mx.example.com")))

    assert block["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 The email account does not exist. 5.1.1 Please try again."
    )


def test_an_unreachable_server_is_said_in_words_and_in_a_non_smtp_diagnostic() -> None:
    notice = failure(("bob@example.com", None, "Connection refused", None))
    _, words, blocks, _ = parts(notice)

    assert "we tried for 4 hours, but could not reach the receiving server" in words
    assert blocks[1]["Diagnostic-Code"] == "X-Continuity; Connection refused"
    assert "Remote-MTA" not in blocks[1]


def test_partial_failure_reports_each_recipient_with_its_own_status() -> None:
    notice = failure(
        ("bob@example.com", 550, "5.1.1 user unknown", "mx.example.com"),
        ("carol@example.com", 552, "mailbox full", "mx.example.com"),
    )
    blocks = parts(notice)[2]

    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; bob@example.com",
        "rfc822; carol@example.com",
    ]
    assert [b["Status"] for b in blocks[1:]] == ["5.1.1", "5.2.2"]


def test_delay_notice_says_how_long_and_until_when_nothing_to_do() -> None:
    notice = delay(("bob@example.com", 451, "4.3.0 Temporary failure", "mx.example.com"))
    parsed, words, blocks, _ = parts(notice)
    block = blocks[1]

    assert parsed["Subject"] == "Mail delivery delayed: Quarterly figures"
    assert "has not been delivered yet: it has been waiting for 4 hours" in words
    assert "We keep trying until 2026-12-05 07:50 UTC" in words
    assert "You do not need to do anything now" in words
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.3.0"
    assert block["Will-Retry-Until"] == "Sat, 05 Dec 2026 07:50:00 +0000"
    assert {name.lower() for name in block} == RECIPIENT_FIELDS | {"will-retry-until"}


def test_spanish_notices_speak_spanish() -> None:
    failed = failure(
        ("bob@example.com", 550, "5.1.1 user unknown", "mx.example.com"), language="es"
    )
    parsed, words, _, _ = parts(failed)

    assert parsed["Subject"] == "Correo no entregado: Quarterly figures"
    assert parsed["From"].addresses[0].display_name == "Sistema de entrega de correo"
    assert "Su mensaje no se ha podido entregar" in words
    assert (
        'el servidor de destino (mx.example.com) lo rechazó y respondió "550 5.1.1 user unknown"'
        in words
    )
    assert "could not" not in words

    delayed = delay(("bob@example.com", 451, "try later", None), language="es")
    parsed, words, _, _ = parts(delayed)
    assert parsed["Subject"] == "Entrega de correo retrasada: Quarterly figures"
    assert "lleva 4 horas esperando" in words
    assert "Seguiremos intentándolo hasta el 2026-12-05 07:50 UTC" in words


def test_envelope_id_is_given_back_as_xtext() -> None:
    notice = failure(("bob@example.com", 550, "no", None), envelope_id="q3+id=1 é")
    per_message = parts(notice)[2][0]

    assert per_message["Original-Envelope-Id"] == "q3+2Bid+3D1+20+C3+A9"


def test_utf8_headers_of_the_original_survive_as_encoded_headers() -> None:
    raw = ORIGINAL.replace(b"Subject: Quarterly figures", "Subject: Reunión mañana".encode())
    encoded = ORIGINAL.replace(b"Quarterly figures", b"=?ISO-8859-1?Q?Caf=E9_con_leche?=")

    raw_notice = failure(("bob@example.com", 550, "no", None), original=raw)
    parsed, _, _, headers = parts(raw_notice)
    assert parsed["Subject"] == "Undelivered mail: Reunión mañana"
    assert b"=?utf-8?" in raw_notice.data
    assert "Subject: Reunión mañana" in headers

    assert parse(failure(("bob@example.com", 550, "no", None), original=encoded))["Subject"] == (
        "Undelivered mail: Café con leche"
    )


def test_a_recipient_address_in_unicode_uses_the_utf8_address_type() -> None:
    block = recipient_block(failure(("josé@example.es", 550, "no", None)))

    assert block["Final-Recipient"] == "utf-8; jos\\x{E9}@example.es"


@pytest.mark.parametrize(
    "subject",
    [
        b"=?UTF-8?Q?hello=0D=0ABcc:_victim@example.net?=",
        b"=?UTF-8?B?aGVsbG8NCkJjYzogdmljdGltQGV4YW1wbGUubmV0?=",
        b"hello =?UTF-8?Q?=3D=3FUTF-8=3FQ=3Fx=3D0ABcc=3A=5Fvictim=40example.net=3F=3D?=",
        b"hello\r\nBcc: victim@example.net",
        b"hello\rBcc: victim@example.net",
        b"hello\x00\x0bBcc: victim@example.net",
        "hello\u2028Bcc: victim@example.net \u202egnp.exe".encode(),
    ],
)
def test_hostile_original_headers_add_no_header_to_the_notice(subject: bytes) -> None:
    original = ORIGINAL.replace(b"Quarterly figures", subject)
    notice = failure(("bob@example.com", 550, "no", None), original=original)
    parsed = parse(notice)

    assert {name.lower() for name in parsed} == NOTICE_HEADERS
    assert "\n" not in parsed["Subject"]
    assert "\r" not in parsed["Subject"]
    assert "\u202e" not in parsed["Subject"]
    assert parsed["Subject"].startswith("Undelivered mail: hello")
    assert [p.get_content_type() for p in parsed.iter_parts()][1:] == [
        "message/delivery-status",
        "text/rfc822-headers",
    ]


@pytest.mark.parametrize(
    "reply",
    [
        "user unknown\r\nBcc: victim@example.net\r\n\r\nInjected body",
        "user unknown\nFinal-Recipient: rfc822; someone@else.example",
        "user unknown\x00\x00Status: 2.0.0",
        "=?UTF-8?Q?user_unknown=0D=0ABcc:_victim@example.net?=",
        "user unknown\r\n\r\n--boundary\r\nContent-Type: text/html\r\n\r\n<script>",
    ],
)
def test_a_hostile_reply_adds_no_field_or_header(reply: str) -> None:
    notice = failure(("bob@example.com", 550, reply, "mx.example.com"))
    parsed, words, blocks, _ = parts(notice)

    assert {name.lower() for name in parsed} == NOTICE_HEADERS
    assert len(blocks) == 2
    assert {name.lower() for name in blocks[1]} == RECIPIENT_FIELDS
    assert blocks[1]["Status"] == "5.0.0"
    diagnostic = blocks[1]["Diagnostic-Code"]
    assert diagnostic.startswith("smtp; 550 ")
    assert "user" in diagnostic
    assert not set(diagnostic) & {"\r", "\n", "\x00"}
    assert "\x00" not in words
    assert b"\x00" not in notice.data


def test_a_hostile_remote_name_or_recipient_makes_no_field() -> None:
    notice = failure(
        ("bob@example.com\r\nBcc: victim@example.net", 550, "no", "mx.example.com\r\nX-Evil: 1")
    )
    block = recipient_block(notice)

    assert {name.lower() for name in block} == RECIPIENT_FIELDS - {"remote-mta"}
    assert block["Final-Recipient"] == "rfc822; bob@example.com Bcc: victim@example.net"


def test_a_long_reply_is_capped() -> None:
    block = recipient_block(failure(("bob@example.com", 550, "x " * 20_000, None)))

    assert len(block["Diagnostic-Code"]) < REPLY_LIMIT + 20
    assert block["Diagnostic-Code"].endswith("...")


def test_a_huge_hostile_body_is_never_read() -> None:
    """Only the header block is looked at: a 50 MB body of broken MIME, NULs and a line
    with no end changes nothing, and the message is never read past its headers (the
    stand-in below fails the test on any other way of reading it)."""
    headers = ORIGINAL.split(b"\r\n\r\n")[0].replace(
        b"Subject:", b'Content-Type: multipart/mixed; boundary="b"\r\nSubject:'
    )
    body = b"--b\r\nContent-Type: message/rfc822\r\n\r\n--b\x00" + b"A" * (50 * 1024 * 1024)
    stored = headers + b"\r\n\r\n" + body

    class StoredMessage:
        """A message's bytes that may only be sliced, and not past the header limit."""

        def __len__(self) -> int:
            return len(stored)

        def __getitem__(self, key: slice) -> bytes:
            assert isinstance(key, slice)
            assert key.stop is not None
            assert key.stop <= HEADER_LIMIT + 4
            return stored[key]

    original: Any = StoredMessage()
    notice = failure(("bob@example.com", 550, "no", None), original=original)

    assert should_notify("alice@example.org", original)
    assert len(notice.data) < 10_000
    assert b"AAAA" not in notice.data
    assert parse(notice)["Subject"] == "Undelivered mail: Quarterly figures"
    assert "Content-Type: multipart/mixed" in parts(notice)[3]


def test_a_header_block_past_the_limit_is_cut_at_a_line_end() -> None:
    original = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"y" * 60) for i in range(5000))
    notice = failure(("bob@example.com", 550, "no", None), original=original + b"\r\nbody")
    headers = parts(notice)[3]

    assert len(headers) <= HEADER_LIMIT
    assert all(line.startswith("X-Filler-") and line.endswith("y") for line in headers.splitlines())


@pytest.mark.parametrize(
    ("sender", "notify"),
    [
        ("alice@example.org", True),
        ("<alice@example.org>", True),
        ('"alice smith"@example.org', True),
        ("alice@[192.0.2.7]", True),
        ("alice@bücher.example", True),
        ("", False),
        ("<>", False),
        ("MAILER-DAEMON@example.org", False),
        ("mailer-daemon@example.org", False),
        ("alice", False),
        ("alice@localhost", False),
        ("alice@example.org\r\nBcc: victim@example.net", False),
        ("alice smith@example.org", False),
        ("alice@exa_mple.org", False),
        ("alice@@example.org", False),
        ("josé@example.org", False),
        ("a" * 65 + "@example.org", False),
    ],
)
def test_should_notify_only_a_real_sender(sender: str, notify: bool) -> None:
    assert should_notify(sender, ORIGINAL) is notify


def test_auto_submitted_mail_still_gets_its_notice() -> None:
    """RFC 3834 concerns responders; a DSN goes to any non-null reverse-path (RFC 5321 6.1)."""
    original = b"Auto-Submitted: auto-generated\r\n" + ORIGINAL

    assert should_notify("tickets@example.org", original)


def test_no_notice_about_a_delivery_report_whatever_its_sender() -> None:
    original = (
        b"From: MAILER-DAEMON@broken.example\r\n"
        b'Content-Type: multipart/report; report-type="delivery-status"; boundary="x"\r\n'
        b"\r\n--x--\r\n"
    )

    assert not should_notify("bounces@broken.example", original)
    assert should_notify(
        "alice@example.org", b"Content-Type: multipart/report; report-type=x\r\n\r\n"
    )


def test_a_notice_for_a_null_sender_is_refused() -> None:
    with pytest.raises(ValueError, match="should_notify"):
        build_failure(
            ORIGINAL,
            "",
            [("bob@example.com", 550, "no", None)],
            arrival=ARRIVAL,
            reporting_mta=MTA,
            from_address=POSTMASTER,
        )


def test_a_unicode_sender_domain_is_written_in_ascii() -> None:
    notice = build_failure(
        ORIGINAL,
        "alice@bücher.example",
        [("bob@example.com", 550, "no", None)],
        arrival=ARRIVAL,
        reporting_mta=MTA,
        from_address=POSTMASTER,
    )

    assert notice.rcpt_to == "alice@xn--bcher-kva.example"
    assert parse(notice)["To"] == "alice@xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("build", "code", "language"),
    [(failure, 250, "en"), (delay, 550, "en"), (failure, 550, "fr"), (failure, 650, "en")],
)
def test_wrong_calls_are_refused(build: Any, code: int, language: str) -> None:
    with pytest.raises(ValueError):
        build(("bob@example.com", code, "x", None), language=language)


def test_a_notice_goes_through_a_real_relay_with_a_null_sender() -> None:
    notice = failure(
        ("bob@example.com", 550, "5.1.1 user unknown", "mx.example.com"),
        original=ORIGINAL.replace(b"Quarterly figures", "Reunión mañana".encode()),
        language="es",
    )
    relay = Collect()  # the outbound relay
    with smtp_server(relay) as port, smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("gw.example.net")
        refused = smtp.sendmail("", [notice.rcpt_to], notice.data)

    assert refused == {}
    (arrived,) = relay.envelopes
    assert arrived.mail_from == "<>"  # aiosmtpd's spelling of the null reverse-path
    assert arrived.rcpt_tos == ["alice@example.org"]
    assert arrived.original_content == notice.data
    received: Any = message_from_bytes(arrived.original_content, policy=policy.default)
    assert received["Subject"] == "Correo no entregado: Reunión mañana"
    status = received.get_payload()[1].get_payload()
    assert status[1]["Status"] == "5.1.1"
    assert status[1]["Final-Recipient"] == "rfc822; bob@example.com"
