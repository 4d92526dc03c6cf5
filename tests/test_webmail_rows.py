"""The message list reads FETCH answers with a few regular expressions (imapclient's
parser cost more than the rest of the page): each row keeps its own header fields and
flags, whatever Dovecot puts around them."""

from __future__ import annotations

from portal.webmail.imap import HEADER_KEY, _rows, _summary


def test_rows_keep_their_own_fields_and_ignore_unsolicited_answers() -> None:
    data = [
        (
            b'7 (UID 31 FLAGS (\\Seen \\Flagged) INTERNALDATE "30-Nov-2026 08:00:00 +0000"'
            b" RFC822.SIZE 2048 BODY[HEADER.FIELDS (FROM TO SUBJECT DATE CONTENT-TYPE)] {61}",
            b"From: Ana <ana@x.test>\r\nSubject: =?utf-8?q?Caf=C3=A9?= UID 99\r\n\r\n",
        ),
        b")",
        b"3 (FLAGS (\\Deleted) UID 12)",  # an unsolicited flag change: no row
        (
            b"8 (UID 32 BODY[HEADER.FIELDS (FROM TO SUBJECT DATE CONTENT-TYPE)] {47}",
            b"Subject: Plans\r\nContent-Type: multipart/mixed\r\n\r\n",
        ),
        b' FLAGS () INTERNALDATE "30-Nov-2026 09:00:00 +0000" RFC822.SIZE 10)',
        b"9 (UID 33 FLAGS () RFC822.SIZE 5"
        b' BODY[HEADER.FIELDS (FROM TO SUBJECT DATE CONTENT-TYPE)] "")',
    ]

    rows = _rows(data)

    assert [row[b"UID"] for row in rows] == [31, 32, 33]
    first, second, third = (_summary(row[b"UID"], row) for row in rows)
    assert (first.subject, first.sender, first.seen, first.flagged) == (
        "Café UID 99",
        "Ana",
        True,
        True,
    )
    assert first.size == 2048 and first.date is not None
    assert (second.subject, second.seen, second.attachment, second.size) == (
        "Plans",
        False,
        True,
        10,
    )
    assert (third.subject, third.size) == ("", 5)
    assert rows[2][HEADER_KEY] == b""


def test_a_line_reads_plain_quoted_encoded_and_raw_8bit_senders() -> None:
    def line(sender: bytes) -> tuple[str, str]:
        header = b"From: " + sender + b"\r\nTo: a@x.test,\r\n b@x.test\r\n\r\n"
        summary = _summary(1, {HEADER_KEY: header})
        return summary.sender, summary.sender_address

    assert line(b"Ana Garc\xc3\xada <ana@x.test>") == ("Ana García", "ana@x.test")
    assert line(b"Jos\xe9 <j@x.test>") == ("José", "j@x.test")  # Latin-1 bytes, no charset
    assert line(b'"P\xc3\xa9rez, Ana" <a@x.test>') == ("Pérez, Ana", "a@x.test")
    assert line(b"=?UTF-8?Q?Jos=C3=A9?= <j@x.test>") == ("José", "j@x.test")
    assert line(b"bo@y.test") == ("bo@y.test", "bo@y.test")
    assert (
        _summary(1, {HEADER_KEY: b"To: A <a@x.test>,\r\n b@x.test\r\n\r\n"}).recipients
        == "A, b@x.test"
    )


def test_dates_read_directly_agree_with_the_email_package() -> None:
    from email.utils import parsedate_to_datetime

    from portal.webmail.imap import _date

    for value in (
        "Mon, 30 Nov 2026 08:00:00 +0000",
        "1 Nov 2026 23:05 -0330",
        "Tue, 3 Feb 2026 10:00:00 +0100 (CET)",
        "30 Nov 2026 08:00:00 GMT",
        "Wed, 4 Mar 2026 10:00:00 +0530",
    ):
        assert _date(value) == parsedate_to_datetime(value), value
    assert _date("Mon, 31 Feb 2026 08:00:00 +0000") is None
    assert _date("not a date") is None


def test_a_resumed_draft_keeps_names_with_commas_as_one_recipient() -> None:
    from portal.webmail.compose import parse_recipients
    from portal.webmail.message import parse
    from portal.webmail.outbox import _from_source

    raw = (
        b'From: a@acme.test\r\nTo: "P\xc3\xa9rez, Ana" <ana@x.test>\r\n'
        b'Bcc: "Berg, Bo" <bo@y.test>\r\nSubject: Plans\r\n\r\nText.\r\n'
    )

    draft = _from_source("draft", parse(raw), set(), raw)

    assert parse_recipients(draft.to) == [("Pérez, Ana", "ana@x.test")]
    assert parse_recipients(draft.bcc, field="bcc") == [("Berg, Bo", "bo@y.test")]
