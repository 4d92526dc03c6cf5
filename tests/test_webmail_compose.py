"""Composing in the webmail: what a person types in To, Cc and Bcc, the message built for
the relay, and the fields of a reply or a forward filled from a (hostile) message.

Pure rules: no server. What the relay receives is in test_webmail_sending.py.
"""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import SMTP
from email.policy import default as default_policy

import pytest

from portal.webmail.compose import (
    MAX_RECIPIENTS,
    ComposeError,
    build_message,
    envelope_recipients,
    format_recipients,
    forward_fields,
    parse_recipients,
    reply_fields,
)
from portal.webmail.message import parse

ANA = ("Ana García", "ana@acme.test")


def built(**changes: object) -> EmailMessage:
    """A message as the compose page builds it, with ``changes``."""
    fields: dict[str, object] = {
        "sender": ANA,
        "to": [("Bo", "bo@example.test")],
        "cc": [],
        "bcc": [],
        "subject": "Hello",
        "body": "Hi Bo.\n",
        "attachments": [],
        "domain": "acme.test",
    }
    fields.update(changes)
    return build_message(**fields)  # type: ignore[arg-type]


def wire(message: EmailMessage) -> bytes:
    """The bytes the relay would get."""
    return message.as_bytes(policy=SMTP)


def header_names(raw: bytes) -> list[str]:
    """The names of the top-level header fields of a message, in order."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line[:1] not in (" ", "\t")]


# --- recipients --------------------------------------------------------------------------


def test_the_usual_ways_of_typing_recipients_are_read() -> None:
    typed = 'a@x.test, "Berg, Bo" <bo@Example.TEST>; Cy Young <cy@y.test>,  d@z.test e@z.test'

    assert parse_recipients(typed) == [
        ("", "a@x.test"),
        ("Berg, Bo", "bo@example.test"),
        ("Cy Young", "cy@y.test"),
        ("", "d@z.test"),
        ("", "e@z.test"),
    ]


def test_a_recipient_typed_twice_is_written_to_once() -> None:
    assert parse_recipients("a@x.test, A <A@X.test>, a@x.test") == [("", "a@x.test")]


def test_an_international_domain_is_sent_to_in_its_ascii_form() -> None:
    assert parse_recipients("Jo <jo@bücher.test>") == [("Jo", "jo@xn--bcher-kva.test")]


@pytest.mark.parametrize(
    ("typed", "named"),
    [
        ("bob", "bob"),
        ("Bo Berg", "Bo Berg"),
        ("bo@", "bo@"),
        ("@example.test", "@example.test"),
        ("bo@localhost", "bo@localhost"),
        ("bo@exa mple.test", "bo@exa mple.test"),
        ("bo..berg@example.test", "bo..berg@example.test"),
        ("bo@-bad-.test", "bo@-bad-.test"),
        ("bo@[127.0.0.1]", "bo@[127.0.0.1]"),
        ("<bo@example.test> trailing", "<bo@example.test> trailing"),
        ('"bo berg"@example.test', '"bo berg"@example.test'),
    ],
)
def test_an_address_that_is_none_is_refused_by_name(typed: str, named: str) -> None:
    with pytest.raises(ComposeError) as refused:
        parse_recipients(f"ok@example.test, {typed}", field="cc")

    assert named in refused.value.message
    assert refused.value.field == "cc"


def test_an_accented_local_part_is_refused_with_the_reason() -> None:
    """Sending to it needs SMTPUTF8 at every hop; the person is told so plainly."""
    with pytest.raises(ComposeError) as refused:
        parse_recipients("josé@ejemplo.test", field="to")

    assert "josé@ejemplo.test" in refused.value.message
    assert "accents" in refused.value.message


@pytest.mark.parametrize("breaker", ["\r", "\n", "\x00", "\r\n"])
def test_line_breaks_and_nul_in_recipients_are_refused(breaker: str) -> None:
    with pytest.raises(ComposeError) as refused:
        parse_recipients(f"bo@example.test{breaker}Bcc: eve@evil.test", field="bcc")

    assert refused.value.field == "bcc"


def test_more_than_a_hundred_recipients_are_refused() -> None:
    many = ", ".join(f"r{i}@example.test" for i in range(MAX_RECIPIENTS + 1))

    with pytest.raises(ComposeError) as refused:
        parse_recipients(many)

    assert str(MAX_RECIPIENTS) in refused.value.message


def test_the_hundred_count_to_cc_and_bcc_together() -> None:
    def people(prefix: str, count: int) -> list[tuple[str, str]]:
        return [("", f"{prefix}{i}@example.test") for i in range(count)]

    assert len(envelope_recipients(people("t", 50), people("c", 30), people("b", 20))) == 100
    with pytest.raises(ComposeError):
        envelope_recipients(people("t", 50), people("c", 30), people("b", 21))
    with pytest.raises(ComposeError):
        built(to=people("t", 50), cc=people("c", 30), bcc=people("b", 21))


def test_sending_needs_a_recipient_but_a_draft_does_not() -> None:
    with pytest.raises(ComposeError) as refused:
        envelope_recipients([], [], [])

    assert refused.value.field == "to"
    assert "To" not in built(to=[])


def test_the_envelope_carries_bcc_once_each() -> None:
    assert envelope_recipients(
        [("", "a@x.test")], [("", "A@x.test"), ("", "b@x.test")], [("", "c@x.test")]
    ) == ["a@x.test", "b@x.test", "c@x.test"]


def test_recipients_shown_in_a_form_read_back_the_same() -> None:
    recipients = [
        ('Bo "the boss" Berg, jr.', "bo@example.test"),
        ("back\\slash", "b@example.test"),
        ("", "c@example.test"),
    ]

    assert parse_recipients(format_recipients(recipients)) == recipients


# --- the message ---------------------------------------------------------------------------


def test_the_message_is_from_the_person_with_no_bcc_header() -> None:
    message = built(
        to=[("Bo", "bo@example.test")],
        cc=[("", "cy@example.test")],
        bcc=[("Hidden", "hidden@example.test")],
    )
    raw = wire(message)
    read = email.message_from_bytes(raw, policy=default_policy)

    assert read["From"].addresses[0].addr_spec == "ana@acme.test"
    assert read["From"].addresses[0].display_name == "Ana García"
    assert str(read["To"]) == "Bo <bo@example.test>"
    assert str(read["Cc"]) == "cy@example.test"
    assert "Bcc" not in header_names(raw)
    assert b"hidden@example.test" not in raw
    assert read["Message-ID"].endswith("@acme.test>")
    assert read["Date"] is not None


def test_a_subject_or_name_with_line_breaks_adds_no_header() -> None:
    message = built(
        to=[("Bo\r\nBcc: eve@evil.test", "bo@example.test")],
        subject="Hi\r\nBcc: eve@evil.test\nX-Evil: 1",
        body="Hello\n",
    )
    raw = wire(message)
    read = email.message_from_bytes(raw, policy=default_policy)

    assert "Bcc" not in header_names(raw) and "X-Evil" not in header_names(raw)
    assert str(read["Subject"]) == "Hi Bcc: eve@evil.test X-Evil: 1"


def test_an_encoded_newline_typed_in_a_subject_stays_text() -> None:
    """The email package decodes an encoded word in a header it is given: a subject with
    ``=?UTF-8?Q?x=0A...?=`` would carry a line break to the recipient's program."""
    message = built(subject="Re: =?UTF-8?Q?x=0ABcc:_eve@evil.test?=")
    read = email.message_from_bytes(wire(message), policy=default_policy)

    assert "\n" not in str(read["Subject"])
    assert "Bcc" not in header_names(wire(message))


def test_non_ascii_subject_names_and_body_round_trip() -> None:
    message = built(
        to=[("Zoë Ñúñez", "zoe@example.test")],
        subject="Año nuevo — 新年",
        body="¡Hola! Ça va?\n" + "x" * 200 + "\n",
    )
    raw = wire(message)
    read = email.message_from_bytes(raw, policy=default_policy)

    assert raw.isascii()  # no 8-bit data: any relay takes it without 8BITMIME
    assert str(read["Subject"]) == "Año nuevo — 新年"
    assert read["To"].addresses[0].display_name == "Zoë Ñúñez"
    assert read.get_content().replace("\r\n", "\n") == "¡Hola! Ça va?\n" + "x" * 200 + "\n"


def test_attachments_keep_sane_names_and_types() -> None:
    message = built(
        attachments=[
            ("../../etc/passwd", "text/plain", b"root:x:0:0\n"),
            ("report.pdf", "application/pdf", b"%PDF-1.4 ..."),
            ("odd.bin", "not a type; x=<script>", b"\x00\x01"),
            ("forwarded.eml", "message/rfc822", b"From: a@b.test\r\nSubject: hi\r\n\r\nbody\r\n"),
            ("bundle.mime", "multipart/mixed", b"--x\r\n\r\n--x--\r\n"),
        ]
    )
    read = email.message_from_bytes(wire(message), policy=default_policy)
    parts = [(p.get_filename(), p.get_content_type()) for p in read.iter_attachments()]

    assert parts == [
        ("passwd", "text/plain"),
        ("report.pdf", "application/pdf"),
        ("odd.bin", "application/octet-stream"),
        ("forwarded.eml", "message/rfc822"),
        ("bundle.mime", "application/octet-stream"),
    ]
    payloads = [p.get_payload(decode=True) for p in read.iter_attachments()]
    assert payloads[1] == b"%PDF-1.4 ..."
    assert payloads[2] == b"\x00\x01"


def test_a_reply_carries_the_threads_ids_and_drops_junk() -> None:
    message = built(
        in_reply_to="<parent@example.test>",
        references=["<root@example.test>", "not an id", "<x y@z>", "<parent@example.test>"],
    )

    assert message["In-Reply-To"] == "<parent@example.test>"
    assert message["References"] == "<root@example.test> <parent@example.test>"


def test_a_long_thread_keeps_its_first_and_newest_ids() -> None:
    ids = [f"<m{i}@example.test>" for i in range(60)]
    message = built(in_reply_to=ids[-1], references=ids)
    kept = str(message["References"]).split()

    assert kept[0] == "<m0@example.test>"
    assert kept[-1] == "<m59@example.test>"
    assert len(kept) == 20


def test_a_subject_too_long_is_refused() -> None:
    with pytest.raises(ComposeError) as refused:
        built(subject="x" * 1000)

    assert refused.value.field == "subject"


# --- replies and forwards ----------------------------------------------------------------

ORIGINAL = (
    b"From: Carla =?UTF-8?Q?P=C3=A9rez?= <carla@sender.test>\r\n"
    b"To: Ana <ana@acme.test>, Bo <bo@acme.test>\r\n"
    b"Cc: cy@other.test, ANA@acme.test\r\n"
    b"Subject: Re: RE: Figures\r\n"
    b"Date: Mon, 30 Nov 2026 08:00:00 +0000\r\n"
    b"Message-ID: <m2@sender.test>\r\n"
    b"In-Reply-To: <m1@sender.test>\r\n"
    b"References: <m0@sender.test> <m1@sender.test>\r\n"
    b"\r\n"
    b"The numbers are in.\r\n\r\nCarla\r\n"
)


def test_a_reply_goes_to_the_sender_with_the_original_quoted() -> None:
    fields = reply_fields(parse(ORIGINAL), {"ana@acme.test"}, all=False)

    assert parse_recipients(fields["to"]) == [("Carla Pérez", "carla@sender.test")]
    assert fields["cc"] == ""
    assert fields["subject"] == "Re: Figures"
    assert "Carla Pérez <carla@sender.test> wrote:" in fields["body"]
    assert "> The numbers are in.\n>\n> Carla\n" in fields["body"]
    assert fields["in_reply_to"] == "<m2@sender.test>"
    assert fields["references"] == ["<m0@sender.test>", "<m1@sender.test>", "<m2@sender.test>"]


def test_reply_all_copies_the_others_but_never_oneself() -> None:
    fields = reply_fields(parse(ORIGINAL), {"Ana@Acme.test"}, all=True)

    assert parse_recipients(fields["to"]) == [("Carla Pérez", "carla@sender.test")]
    assert parse_recipients(fields["cc"]) == [("Bo", "bo@acme.test"), ("", "cy@other.test")]


def test_a_reply_goes_to_reply_to_when_there_is_one() -> None:
    raw = ORIGINAL.replace(b"Subject:", b"Reply-To: list@lists.test\r\nSubject:")

    fields = reply_fields(parse(raw), {"ana@acme.test"}, all=False)

    assert parse_recipients(fields["to"]) == [("", "list@lists.test")]


def test_replying_to_ones_own_message_writes_to_its_recipients() -> None:
    raw = ORIGINAL.replace(
        b"From: Carla =?UTF-8?Q?P=C3=A9rez?= <carla@sender.test>", b"From: ana@acme.test"
    )

    fields = reply_fields(parse(raw), {"ana@acme.test"}, all=False)

    assert parse_recipients(fields["to"]) == [("Bo", "bo@acme.test")]


def test_a_reply_to_an_html_only_message_quotes_its_text() -> None:
    raw = (
        b"From: carla@sender.test\r\nSubject: Hi\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p{color:red}</style><script>alert(1)</script></head>"
        b"<body><p>First &amp; foremost</p><div>second<br>third</div></body></html>\r\n"
    )

    body = reply_fields(parse(raw), set(), all=False)["body"]

    assert "> First & foremost\n" in body
    assert "> second\n> third" in body
    assert "alert" not in body and "color" not in body


def test_a_hostile_message_fills_no_header_with_a_line_break() -> None:
    raw = (
        b"From: =?UTF-8?Q?Eve=0D=0ABcc=3A_victim=40evil.test?= <eve@evil.test>\r\n"
        b"To: ana@acme.test\r\n"
        b"Cc: =?UTF-8?Q?x=0ABcc=3A?= <cy@acme.test>\r\n"
        b"Subject: =?UTF-8?Q?x=0ABcc:_victim@evil.test?=\r\n"
        b"Message-ID: <id\r\n with-space@evil.test>\r\n"
        b"\r\nhello\r\n"
    )
    fields = reply_fields(parse(raw), {"ana@acme.test"}, all=True)

    message = built(
        to=parse_recipients(fields["to"]),
        cc=parse_recipients(fields["cc"]),
        subject=fields["subject"],
        body=fields["body"],
        in_reply_to=fields["in_reply_to"],
        references=fields["references"],
    )
    raw_out = wire(message)

    assert "\n" not in fields["subject"] and "\n" not in fields["to"]
    assert header_names(raw_out) == [
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    ]
    read = email.message_from_bytes(raw_out, policy=default_policy)
    addresses = [a.addr_spec for name in ("To", "Cc") for a in read[name].addresses]
    assert addresses == ["eve@evil.test", "cy@acme.test"]


def test_a_forward_has_the_original_inline_and_lists_its_attachments() -> None:
    original = EmailMessage()
    original["From"] = "Carla <carla@sender.test>"
    original["To"] = "ana@acme.test"
    original["Subject"] = "Fwd: Plans"
    original["Date"] = "Mon, 30 Nov 2026 08:00:00 +0000"
    original.set_content("See the plan.\n")
    original.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="plan.pdf")
    original.add_attachment(b"a,b\n", maintype="text", subtype="csv", filename="data.csv")

    fields = forward_fields(parse(original.as_bytes()))

    assert fields["to"] == "" and fields["cc"] == ""
    assert fields["subject"] == "Fwd: Plans"
    assert "From: Carla <carla@sender.test>" in fields["body"]
    assert "Subject: Fwd: Plans" in fields["body"]
    assert "See the plan." in fields["body"]
    assert fields["attachments"] == ["2", "3"]
    assert fields["in_reply_to"] is None
