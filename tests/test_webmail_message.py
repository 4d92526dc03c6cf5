"""Reading messages for the webmail: charsets, encodings, headers, parts and hostile input."""

import base64
import random
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.webmail.message import header_text, parse, part_bytes, safe_filename
from tests.webmail_corpus import corpus


def message(headers: str, body: bytes | str = b"hello\n") -> bytes:
    """A message from header lines (LF-separated) and a body."""
    if isinstance(body, str):
        body = body.encode()
    return headers.strip("\n").encode() + b"\n\n" + body


# --- bodies: charsets and transfer encodings ---------------------------------------------------


def test_utf8_body_and_header():
    raw = message(
        "Subject: =?UTF-8?B?w6l0w6kg4oKs?=\nContent-Type: text/plain; charset=utf-8",
        "Grüße, 日本語 €\n",
    )
    parsed = parse(raw)
    assert parsed.subject == "été €"
    assert parsed.text == "Grüße, 日本語 €\n"
    assert parsed.html is None


def test_iso_8859_1_is_read_as_windows_1252():
    """Mailers label Windows-1252 text ISO-8859-1; browsers read it so, and so do we."""
    raw = message(
        "Content-Type: text/plain; charset=ISO-8859-1",
        "Caf\xe9 \x80 5, \x93quoted\x94 \x81".encode("latin-1"),
    )
    assert parse(raw).text == "Café € 5, “quoted” \x81"


def test_windows_1252_html():
    raw = message(
        "Content-Type: text/html; charset=windows-1252",
        "<p>\x84Anf\xfchrung\x93 \x85 \x99</p>".encode("latin-1"),
    )
    assert parse(raw).html == "<p>„Anführung“ … ™</p>"


def test_quoted_printable_body():
    raw = message(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable",
        "Caf=C3=A9 au lait, a line that is soft=\n-broken, and =E2=82=AC=3D5\n",
    )
    assert parse(raw).text == "Café au lait, a line that is soft-broken, and €=5\n"


def test_base64_body():
    text = "Ça va? Ünïcödé.\n"
    raw = message(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64",
        base64.encodebytes(text.encode()),
    )
    assert parse(raw).text == text


def test_no_charset_utf8_then_windows_1252():
    """Undeclared 8-bit text: UTF-8 when it is valid UTF-8, Windows-1252 otherwise."""
    assert parse(message("Subject: x", "caf\u00e9\n".encode())).text == "café\n"
    assert parse(message("Subject: x", b"caf\xe9 \x80\n")).text == "café €\n"


def test_unknown_charset_reads_utf8_with_replacement():
    raw = message("Content-Type: text/plain; charset=x-no-such-charset", b"ok \xc3\xa9 \xff\n")
    assert parse(raw).text == "ok é \ufffd\n"


def test_python_codecs_that_are_not_charsets_are_not_applied():
    """charset=unicode_escape must not turn the text \\u003c into a real '<'."""
    raw = message(
        "Content-Type: text/html; charset=unicode_escape", b"\\u003cscript\\u003ealert(1)\n"
    )
    assert parse(raw).html == "\\u003cscript\\u003ealert(1)\n"
    raw = message("Content-Type: text/plain; charset=base64_codec", b"aGk=\n")
    assert parse(raw).text == "aGk=\n"


def test_utf7_is_decoded_so_the_sanitiser_sees_the_markup():
    raw = message("Content-Type: text/html; charset=utf-7", b"+ADw-script+AD4-alert(1)\n")
    assert parse(raw).html == "<script>alert(1)\n"


def test_other_charsets_koi8_shift_jis_and_gb2312_as_gb18030():
    assert parse(message("Content-Type: text/plain; charset=koi8-r", "Привет".encode("koi8-r")))
    assert (
        parse(message("Content-Type: text/plain; charset=koi8-r", "Привет".encode("koi8-r"))).text
        == "Привет"
    )
    assert (
        parse(message("Content-Type: text/plain; charset=shift_jis", "日本".encode("sjis"))).text
        == "日本"
    )
    # GB2312-labelled mail often holds GBK/GB18030 characters (here 镕, not in GB2312).
    raw = message("Content-Type: text/plain; charset=gb2312", "朱镕基".encode("gb18030"))
    assert parse(raw).text == "朱镕基"


def test_nul_in_a_body_becomes_a_replacement_character():
    raw = message("Content-Type: text/html\nContent-Transfer-Encoding: quoted-printable", "a=00b")
    assert parse(raw).html == "a\ufffdb"


# --- headers ---------------------------------------------------------------------------------


def test_rfc2047_subject_q_and_b_and_adjacent_words_joined():
    """A multi-byte character split across two encoded words is put back together."""
    euro = "€".encode()
    first = base64.b64encode(b"price " + euro[:1]).decode()
    second = base64.b64encode(euro[1:] + b"5").decode()
    raw = message(
        f"Subject: =?utf-8?b?{first}?=\n =?utf-8?b?{second}?= and =?ISO-8859-1?Q?caf=E9_=80?="
    )
    assert parse(raw).subject == "price €5 and café €"


def test_raw_utf8_header_is_read():
    raw = "Subject: Grüße aus Köln\nFrom: Jürgen <j@example.org>\n\nx".encode()
    parsed = parse(raw)
    assert parsed.subject == "Grüße aus Köln"
    assert parsed.from_ == [("Jürgen", "j@example.org")]


def test_from_to_cc_reply_to_decoded_names():
    raw = message(
        "From: =?ISO-8859-1?Q?Andr=E9_M=FCller?= <andre@example.org>\n"
        'To: "Doe, John" <john@example.org>, plain@example.org,\n'
        " =?UTF-8?B?5bGx55Sw?= <yamada@example.jp>\n"
        "Cc: Team: a@example.org, b@example.org;\n"
        "Reply-To: <replies@example.org>"
    )
    parsed = parse(raw)
    assert parsed.from_ == [("André Müller", "andre@example.org")]
    assert parsed.to == [
        ("Doe, John", "john@example.org"),
        ("", "plain@example.org"),
        ("山田", "yamada@example.jp"),
    ]
    assert [address for _, address in parsed.cc] == ["a@example.org", "b@example.org"]
    assert parsed.reply_to == [("", "replies@example.org")]


def test_an_encoded_name_cannot_add_an_address():
    """Names are decoded after the list is split: an encoded ',' or '<' stays in the name."""
    raw = message(
        "From: =?UTF-8?Q?ceo=40example.org_=3Cceo=40example.org=3E=2C_x?="
        " <mallory@attacker.example>"
    )
    assert parse(raw).from_ == [
        ("ceo@example.org <ceo@example.org>, x", "mallory@attacker.example")
    ]


def test_header_text_turns_encoded_newlines_and_controls_into_spaces():
    assert header_text("=?UTF-8?Q?Hi=0D=0ABcc:_victim@example.org=00x?=") == (
        "Hi Bcc: victim@example.org x"
    )
    assert header_text("a\r\n b\tc\x7fd\u2028e") == "a b c d e"
    assert header_text(None) == ""
    parsed = parse(message("Subject: =?UTF-8?Q?Invoice=0ABcc:_v@example.org?="))
    assert parsed.subject == "Invoice Bcc: v@example.org"
    assert "\n" not in parsed.subject


def test_date_message_id_references_in_reply_to():
    raw = message(
        "Date: Tue, 1 Oct 2024 10:00:00 +0000\n"
        "Message-ID: <abc@example.org>\n"
        "In-Reply-To: <parent@example.org> (comment)\n"
        "References: <root@example.org>\n <parent@example.org>"
    )
    parsed = parse(raw)
    assert parsed.date == datetime(2024, 10, 1, 10, 0, tzinfo=UTC)
    assert parsed.message_id == "<abc@example.org>"
    assert parsed.in_reply_to == "<parent@example.org>"
    assert parsed.references == ["<root@example.org>", "<parent@example.org>"]


def test_bad_date_and_message_id_give_none():
    parsed = parse(message("Date: Mon, 99 Foo 99999 99:99:99 +9999\nMessage-ID: no brackets"))
    assert parsed.date is None
    assert parsed.message_id is None


# --- structure: part paths, attachments, part_bytes --------------------------------------------

NESTED = b"""From: a@example.org
Subject: nested
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="B1"

--B1
Content-Type: multipart/alternative; boundary="B2"

--B2
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9
--B2
Content-Type: multipart/related; boundary="B3"

--B3
Content-Type: text/html; charset=utf-8

<p>Logo <img src="cid:logo@example.org"></p>
--B3
Content-Type: image/png
Content-ID: <logo@example.org>
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--B3--
--B2--
--B1
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--B1
Content-Type: message/rfc822

From: b@example.org
Subject: the forwarded one

inner body
--B1
Content-Type: text/plain; charset=utf-8
Content-Disposition: attachment; filename*0*=UTF-8''%C3%BCber%20;
 filename*1*=lange%20Namen.txt

attached text
--B1--
"""


def test_part_paths_are_numbered_as_imap_does():
    parsed = parse(NESTED)
    assert parsed.text == "Café"
    assert parsed.html == '<p>Logo <img src="cid:logo@example.org"></p>'
    assert [(a.part, a.filename, a.content_type, a.content_id) for a in parsed.attachments] == [
        ("1.2.2", "attachment-1.2.2.png", "image/png", "logo@example.org"),
        ("2", "report.pdf", "application/pdf", None),
        ("3", "the forwarded one.eml", "message/rfc822", None),
        ("4", "über lange Namen.txt", "text/plain", None),
    ]


def test_part_bytes_returns_decoded_content():
    image = part_bytes(NESTED, "1.2.2")
    assert image is not None
    assert image[0].content_id == "logo@example.org"
    assert image[1] == b"\x89PNG\r\n\x1a\n"
    assert image[0].size == len(image[1])
    pdf = part_bytes(NESTED, "2")
    assert pdf is not None and pdf[1] == b"%PDF-1.4\n"
    forwarded = part_bytes(NESTED, "3")
    assert forwarded is not None
    assert forwarded[1].startswith(b"From: b@example.org\n")
    assert parse(forwarded[1]).text == "inner body"
    text = part_bytes(NESTED, "4")
    assert text is not None and text[1] == b"attached text"


@pytest.mark.parametrize("path", ["1.1", "1.2.1", "1", "1.2", "5", "0", "2.1", "x", "", "1..2"])
def test_part_bytes_offers_only_listed_attachments(path):
    """The bodies and containers are not downloads; nonsense paths give None."""
    assert part_bytes(NESTED, path) is None


def test_single_part_message_body_is_part_one():
    raw = message(
        "Content-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64",
        "JVBERi0=\n",
    )
    parsed = parse(raw)
    assert [(a.part, a.filename) for a in parsed.attachments] == [("1", "a.pdf")]
    assert part_bytes(raw, "1") == (parsed.attachments[0], b"%PDF-")


def test_html_part_with_a_file_name_is_an_attachment_not_the_body():
    """CVE-2024-42008's "photo.png" that is really HTML: offered as a file, never shown."""
    _, raw = next(item for item in corpus() if "42008" in item[0])
    parsed = parse(raw)
    assert parsed.html is None
    assert parsed.text == "Pictures attached."
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [
        ("photo.png", "text/html"),
        ("logo.svg", "image/svg+xml"),
    ]


def test_rfc2231_and_encoded_word_filenames():
    raw = message(
        'Content-Type: multipart/mixed; boundary="b"',
        "--b\nContent-Type: text/plain\n\nbody\n"
        "--b\nContent-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename*=iso-8859-1'de'R%E9sum%E9.pdf\n\nx\n"
        '--b\nContent-Type: application/octet-stream; name="=?UTF-8?B?0J7RgtGH0ZHRgi5kb2M=?="\n'
        "\nx\n--b--\n",
    )
    assert [a.filename for a in parse(raw).attachments] == ["Résumé.pdf", "Отчёт.doc"]


@pytest.mark.parametrize(
    ("claimed", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        (".bashrc", "bashrc"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("a\x00b\r\nc.txt", "a b c.txt"),
        ('<img src=x onerror="alert(1)">.html', "_img src=x onerror=_alert(1)__.html"),
        ("CON", "_CON"),
        ("lpt1.txt", "_lpt1.txt"),
        ("  report.pdf .  ", "report.pdf"),
        ("", "attachment-2.pdf"),
        ("...", "attachment-2.pdf"),
        (None, "attachment-2.pdf"),
        ("=?UTF-8?Q?=2E=2E=2Fx.sh?=", "x.sh"),
    ],
)
def test_hostile_filenames_are_made_safe(claimed, safe):
    assert safe_filename(claimed, "2", "application/pdf") == safe


def test_long_filename_is_cut_keeping_its_extension():
    name = safe_filename("A" * 400 + ".docx", "3", "application/octet-stream")
    assert len(name) == 150
    assert name.endswith("AAA.docx")
    assert len(safe_filename("B" * 400, "3", "application/octet-stream")) == 150


def test_fallback_names_have_a_sane_extension():
    assert safe_filename(None, "2.1", "application/x-no-such-type") == "attachment-2.1.bin"
    assert safe_filename(None, "4", "message/rfc822") == "attachment-4.eml"
    assert safe_filename(None, "1", "text/plain") == "attachment-1.txt"


def test_corpus_filenames_are_all_safe():
    for _, raw in corpus():
        for attachment in parse(raw).attachments:
            name = attachment.filename
            assert name and len(name) <= 150
            assert not name.startswith((".", " "))
            assert not any(ch in name for ch in '/\\<>:"|?*\x00\r\n\u202e')


# --- malformed and hostile input never raises ----------------------------------------------------

MALFORMED = [
    b"",
    b"\x00\xff\xfe",
    b"no headers at all, just text",
    b"Subject: =?x-bogus?q?a=FF?=\n\nbody",
    b"Subject: =?utf-8?b?!!!not base64?=\n\n",
    b'From: <<<>>>@@@,,,"\nTo: ;;;:\nCc: "unterminated <a@b\n\nx',
    b"Content-Type: multipart/mixed\n\nno boundary parameter",
    b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/html\n\nno end',
    b'Content-Type: multipart/alternative; boundary=""\n\n--\n\nx\n----\n',
    b'Content-Type: text/plain; charset="\xff\xfe"\nContent-Transfer-Encoding: base64\n\n!!!',
    b"Content-Disposition: attachment; filename*0*=bogus''%FF; filename*1=\"\\\"\n\nx",
    b"Content-Type: ;;;/;;;\nContent-Transfer-Encoding: \xff\n\nx",
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n"
    b"\n=ZZ=\n=",
    b"Content-Type: message/rfc822\n\nnot really a message",
    b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\nAction: failed\n",
    b"Subject: " + b"=?utf-8?b?" + b"A" * 100_000 + b"?=\n\n",
    b"Message-ID: <" + b"x" * 10_000 + b">\nReferences: " + b"<a@b> " * 5_000 + b"\n\n",
    b"Content-Type: multipart/mixed; boundary=b0\n\n"
    + b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(2000)
    )
    + b"--b2000\nContent-Type: text/plain\n\ndeep\n",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_messages_never_raise(raw):
    parsed = parse(raw)
    for attachment in parsed.attachments:
        found = part_bytes(raw, attachment.part)
        assert found is not None and found[0] == attachment
    for text in (parsed.subject, *(n + a for n, a in parsed.from_ + parsed.to + parsed.cc)):
        assert not any(ch in text for ch in "\r\n\x00")


def test_mutated_messages_never_raise():
    """Random byte damage to a realistic message: parse and part_bytes still return."""
    rng = random.Random(11)  # noqa: S311 (test data, not security)
    pieces = [
        b"\n",
        b"=?",
        b"?=",
        b"--B1",
        b"--B3",
        b";",
        b'"',
        b"*",
        b"\\",
        b"\x00",
        b"\xff",
        b"=",
    ]
    for _ in range(200):
        data = bytearray(NESTED)
        for _ in range(rng.randint(1, 25)):
            position = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[position] = rng.randrange(256)
            elif choice < 0.7:
                del data[position : position + rng.randint(1, 20)]
            else:
                data[position:position] = rng.choice(pieces)
        raw = bytes(data)
        parsed = parse(raw)
        for attachment in parsed.attachments:
            assert part_bytes(raw, attachment.part) is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.text(max_size=200))
def test_arbitrary_bytes_and_header_values_never_raise(data, value):
    parse(data)
    parse(b"Content-Type: multipart/mixed; boundary=x\n\n--x\n" + data)
    assert "\n" not in header_text(value)
    assert "\n" not in header_text("=?utf-8?q?" + value + "?=")


def test_addresses_survive_encoded_names_holding_a_colon_or_a_comma() -> None:
    # RFC 2047 forbids ":" and "," in an encoded word of a phrase, but senders write
    # them: the address is still the one in angle brackets, and a hidden "Bcc:" in the
    # name adds no recipient.
    raw = (
        b"From: =?UTF-8?Q?Carla=0D=0ABcc:_evil2@x.test?= <carla@sender.test>\r\n"
        b"To: =?UTF-8?Q?Re:_Team?= <j@x.test>, =?UTF-8?Q?P=C3=A9rez,_Ana?= <ana@x.test>,"
        b" bo@y.test\r\nSubject: x\r\n\r\nbody\r\n"
    )

    parsed = parse(raw)

    assert [address for _name, address in parsed.from_] == ["carla@sender.test"]
    assert parsed.to == [("Re: Team", "j@x.test"), ("Pérez, Ana", "ana@x.test"), ("", "bo@y.test")]
