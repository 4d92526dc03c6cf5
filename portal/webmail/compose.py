"""Composing a message: recipients read from what a person typed, the message built for
the relay, and the fields of a reply or a forward filled from the message answered.

Everything that reaches a header passes through here, typed or taken from a hostile
message: line breaks and other controls become spaces, so a subject or a name can never
start a header of its own; addresses are ASCII local parts at IDNA-encoded domains (no
SMTPUTF8 needed at the relay); From is always the person's own address, never typed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from html.parser import HTMLParser
from typing import Any

from flask_babel import gettext as _

from portal.webmail.message import ParsedMessage, safe_filename
from roster.domains import RosterError, normalise_domain

MAX_RECIPIENTS = 100
"""Recipients of one message, To, Cc and Bcc together."""
MAX_SUBJECT = 998
MAX_NAME = 200
MAX_REFERENCES = 20

Recipient = tuple[str, str]
"""(display name, address); the name may be empty."""


class ComposeError(ValueError):
    """What a person typed cannot be sent; ``message`` says why in their language and
    ``field`` names the form field to show it at."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


# RFC 5322 dot-atom: the local parts every relay takes without quoting or SMTPUTF8.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_FORBIDDEN_IN_INPUT = re.compile("[\r\n\x00]")
_MESSAGE_ID = re.compile(r"[!-;=?-~]{1,250}")  # printable ASCII without < > or spaces


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` as one header line: controls and line breaks as spaces, runs of spaces as
    one, and RFC 2047's ``=?`` defused (the email package would decode an encoded word
    in a typed subject into the line break it hides)."""
    text = _CONTROLS.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = text.replace("=?", "=\u200b?")
    return text[:limit] if limit is not None else text


def check_address(text: str, field: str = "to") -> str:
    """``text`` as an address the relay takes (ASCII local part, IDNA domain), or a
    ComposeError naming it."""
    address = text.strip()
    local, at, domain = address.rpartition("@")
    shown = one_line(address, 100)
    if not at or not local or not domain:
        raise ComposeError(_("“%(address)s” is not an email address.", address=shown), field)
    if not local.isascii():
        raise ComposeError(
            _(
                "“%(address)s” cannot be sent to from here: only addresses without accents"
                " or other special letters before the @ can.",
                address=shown,
            ),
            field,
        )
    if len(local) > 64 or not _LOCAL_PART.fullmatch(local):
        raise ComposeError(_("“%(address)s” is not an email address.", address=shown), field)
    try:
        ascii_domain = normalise_domain(domain)
    except RosterError:
        raise ComposeError(
            _("“%(address)s” is not an email address: its domain is not valid.", address=shown),
            field,
        ) from None
    result = f"{local}@{ascii_domain}"
    if len(result) > 254:
        raise ComposeError(_("“%(address)s” is too long to be an address.", address=shown), field)
    return result


def _split_top_level(text: str) -> list[str]:
    """``text`` cut at commas and semicolons outside quotes and angle brackets."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = angled = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"' and not angled:
            quoted = not quoted
        elif char == "<" and not quoted:
            angled = True
        elif char == ">" and not quoted:
            angled = False
        elif char in ",;" and not quoted and not angled:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return [piece.strip() for piece in pieces if piece.strip()]


def _unquote(name: str) -> str:
    """A display name as typed: its quotes and backslash escapes removed."""
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return one_line(name, MAX_NAME)


def _one_recipient(piece: str, field: str) -> list[Recipient]:
    """One comma-separated piece: ``Name <a@x>``, ``a@x``, or addresses split by spaces."""
    found = re.fullmatch(r'((?:"(?:[^"\\]|\\.)*"|[^<"])*)<([^<>]*)>\s*', piece)
    if found:
        return [(_unquote(found.group(1)), check_address(found.group(2), field))]
    words = piece.split()
    if len(words) > 1 and all("@" in word for word in words):
        return [("", check_address(word, field)) for word in words]
    return [("", check_address(piece, field))]


def parse_recipients(text: str, field: str = "to") -> list[Recipient]:
    """The recipients typed in one field (``a@x, B <b@y>; c@z``), each once, or a
    ComposeError naming the first that cannot be sent to."""
    if _FORBIDDEN_IN_INPUT.search(text):
        raise ComposeError(_("Put the addresses on one line, separated by commas."), field)
    recipients: list[Recipient] = []
    seen: set[str] = set()
    for piece in _split_top_level(text):
        for name, address in _one_recipient(piece, field):
            if address.lower() not in seen:
                seen.add(address.lower())
                recipients.append((name, address))
        if len(recipients) > MAX_RECIPIENTS:
            raise _too_many(field)
    return recipients


def _too_many(field: str) -> ComposeError:
    return ComposeError(
        _(
            "A message can go to at most %(count)d recipients (To, Cc and Bcc together).",
            count=MAX_RECIPIENTS,
        ),
        field,
    )


def envelope_recipients(
    to: Sequence[Recipient], cc: Sequence[Recipient], bcc: Sequence[Recipient]
) -> list[str]:
    """Every address the relay is given (Bcc included), each once; a ComposeError when
    there is none or more than MAX_RECIPIENTS."""
    addresses: list[str] = []
    seen: set[str] = set()
    for field, recipients in (("to", to), ("cc", cc), ("bcc", bcc)):
        for _name, address in recipients:
            checked = check_address(address, field)
            if checked.lower() not in seen:
                seen.add(checked.lower())
                addresses.append(checked)
        if len(addresses) > MAX_RECIPIENTS:
            raise _too_many(field)
    if not addresses:
        raise ComposeError(_("Add at least one recipient."), "to")
    return addresses


def format_recipients(recipients: Iterable[Recipient]) -> str:
    """Recipients as a form field shows them, and as parse_recipients reads them back."""
    shown = []
    for name, address in recipients:
        name = one_line(name, MAX_NAME)
        if name:
            escaped = name.replace("\\", "\\\\").replace('"', '\\"')
            shown.append(f'"{escaped}" <{address}>')
        else:
            shown.append(address)
    return ", ".join(shown)


def _header_addresses(recipients: Sequence[Recipient], field: str) -> list[Address]:
    """Recipients as header addresses, each checked again (whoever made the list)."""
    result = []
    for name, address in recipients:
        local, _at, domain = check_address(address, field).rpartition("@")
        result.append(Address(display_name=one_line(name, MAX_NAME), username=local, domain=domain))
    return result


def message_id(value: str | None) -> str | None:
    """A message id from a message (``<id>`` or bare) as ``<id>``, or None when it is
    not one: no spaces, controls or brackets reach the References header."""
    if not value:
        return None
    core = value.strip()
    if core.startswith("<") and core.endswith(">"):
        core = core[1:-1]
    return f"<{core}>" if _MESSAGE_ID.fullmatch(core) else None


def _references(values: Iterable[str | None]) -> list[str]:
    """The thread's ids, each once, the first and the newest when there are many (as
    RFC 5322 3.6.4 suggests); whatever is no message id left out."""
    ids: list[str] = []
    for value in values:
        checked = message_id(value)
        if checked and checked not in ids:
            ids.append(checked)
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return ids


def _attachment_type(content_type: str, data: bytes) -> tuple[str, str, str]:
    """(maintype, subtype, transfer encoding) for an attachment: a declared type only
    when it is sane; a mail attached as message/rfc822 only when it can go as 7bit text
    (RFC 2046 allows no base64 there); multiparts as plain bytes."""
    kind = content_type.strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}", kind):
        kind = "application/octet-stream"
    maintype, subtype = kind.split("/")
    if kind == "message/rfc822":
        lines = data.split(b"\n")
        if data.isascii() and all(len(line) <= 998 for line in lines) and b"\0" not in data:
            return maintype, subtype, "7bit"
    if maintype in ("message", "multipart"):
        return "application", "octet-stream", "base64"
    return maintype, subtype, "base64"


def build_message(
    *,
    sender: Recipient,
    to: Sequence[Recipient],
    cc: Sequence[Recipient],
    bcc: Sequence[Recipient],
    subject: str,
    body: str,
    attachments: Sequence[tuple[str, str, bytes]],
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    domain: str,
) -> EmailMessage:
    """The message to send: From the person (``sender``), To and Cc as given, no Bcc
    header (the Bcc recipients are only in the envelope), a fresh Message-ID at
    ``domain``, the thread's ids, a plain-text UTF-8 body and the attachments
    ((filename, content type, data) each). No recipient at all is no error here (a
    draft); ``envelope_recipients`` says whether there is one to send to."""
    if len({address.lower() for _name, address in [*to, *cc, *bcc]}) > MAX_RECIPIENTS:
        raise _too_many("to")
    subject = one_line(subject)
    if len(subject) > MAX_SUBJECT:
        raise ComposeError(
            _("The subject is too long: at most %(count)d characters.", count=MAX_SUBJECT),
            "subject",
        )
    message = EmailMessage()
    message["From"] = _header_addresses([sender], "from")
    if to:
        message["To"] = _header_addresses(to, "to")
    if cc:
        message["Cc"] = _header_addresses(cc, "cc")
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=normalise_domain(domain))
    replied = message_id(in_reply_to)
    if replied:
        message["In-Reply-To"] = replied
    thread = _references([*references, in_reply_to])
    if thread:
        message["References"] = " ".join(thread)
    text = body.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if not text.endswith("\n"):
        text += "\n"
    plain = text.isascii() and all(len(line) <= 78 for line in text.split("\n"))
    message.set_content(text, charset="utf-8", cte="7bit" if plain else "quoted-printable")
    for index, (filename, content_type, data) in enumerate(attachments, start=1):
        maintype, subtype, encoding = _attachment_type(content_type, data)
        name = safe_filename(filename, str(index + 1), f"{maintype}/{subtype}")
        message.add_attachment(
            data, maintype=maintype, subtype=subtype, cte=encoding, filename=name
        )
    return message


# --- replies and forwards ----------------------------------------------------------------

_REPLY_PREFIX = re.compile(r"^(?:\s*(?:re|aw|sv|vs|antw|rif|r)\s*(?:\[\d+\])?\s*:)+\s*", re.I)
_FORWARD_PREFIX = re.compile(r"^(?:\s*(?:fwd?|tr|wg|rv|enc)\s*(?:\[\d+\])?\s*:)+\s*", re.I)


def _valid(recipients: Iterable[Recipient]) -> list[Recipient]:
    """The recipients of a message that can be written to, checked, each once."""
    result: list[Recipient] = []
    seen: set[str] = set()
    for name, address in recipients:
        try:
            checked = check_address(address)
        except ComposeError:
            continue
        if checked.lower() not in seen:
            seen.add(checked.lower())
            result.append((one_line(name, MAX_NAME), checked))
    return result


def _who(recipients: Sequence[Recipient]) -> str:
    """A message's sender or recipients as a quote's heading names them."""
    return ", ".join(
        f"{one_line(name)} <{one_line(address)}>" if name else one_line(address)
        for name, address in recipients
    )


class _TextOfHtml(HTMLParser):
    """The readable text of an HTML body, for quoting a message that has no plain text."""

    BREAKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"}
    HIDDEN = {"script", "style", "head", "title", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def body_text(msg: ParsedMessage) -> str:
    """The text of a message's body: its plain text, else its HTML's text."""
    if msg.text is not None:
        return msg.text.replace("\r\n", "\n").replace("\r", "\n")
    if not msg.html:
        return ""
    reader = _TextOfHtml()
    try:
        reader.feed(msg.html)
        reader.close()
    except Exception:  # noqa: S110 - a broken HTML body is quoted as far as it was read
        pass
    lines = [line.strip() for line in "".join(reader.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _when(msg: ParsedMessage) -> str:
    return msg.date.strftime("%Y-%m-%d %H:%M") if msg.date is not None else ""


def reply_fields(msg: ParsedMessage, own: set[str], *, all: bool) -> dict[str, Any]:
    """A reply's form: ``to`` and ``cc`` as text (format_recipients), ``subject``
    "Re: ...", ``body`` with the original quoted, ``in_reply_to`` and ``references``.

    A reply goes to Reply-To, else From; to the original recipients when the person
    answers their own message. Reply all adds the other recipients in Cc. The person's
    own addresses (``own``, any case) are never among them.
    """
    mine = {address.lower() for address in own}
    sender = _valid(msg.reply_to or msg.from_)
    authors = {address.lower() for _name, address in _valid(msg.from_)}
    if authors and authors <= mine:
        sender = _valid(msg.to)  # a message from the Sent folder: write to its recipients
    to = [(name, address) for name, address in sender if address.lower() not in mine]
    cc: list[Recipient] = []
    if all:
        taken = {address.lower() for _name, address in to} | mine
        for name, address in _valid([*msg.to, *msg.cc]):
            if address.lower() not in taken:
                taken.add(address.lower())
                cc.append((name, address))
    subject = one_line(msg.subject)
    thread = msg.references or [msg.in_reply_to or ""]
    quoted = "\n".join(
        "> " + line if line else ">" for line in body_text(msg).rstrip("\n").split("\n")
    )
    author = _who(_valid(msg.from_)[:1]) or _("someone")
    heading = (
        _("On %(date)s, %(sender)s wrote:", date=_when(msg), sender=author)
        if msg.date is not None
        else _("%(sender)s wrote:", sender=author)
    )
    return {
        "to": format_recipients(to),
        "cc": format_recipients(cc),
        "subject": "Re: " + _REPLY_PREFIX.sub("", subject),
        "body": f"\n\n{heading}\n{quoted}\n",
        "in_reply_to": message_id(msg.message_id),
        "references": _references([*thread, msg.message_id]),
    }


def forward_fields(msg: ParsedMessage) -> dict[str, Any]:
    """A forward's form: empty ``to`` and ``cc``, ``subject`` "Fwd: ...", ``body`` with
    the original inline under its headers, and ``attachments``: the part paths of the
    original's attachments, for the view to attach again."""
    subject = one_line(msg.subject)
    sender, date = _who(_valid(msg.from_)), _when(msg)
    to, cc = _who(_valid(msg.to)), _who(_valid(msg.cc))
    lines = [_("---------- Forwarded message ----------")]
    if sender:
        lines.append(_("From: %(sender)s", sender=sender))
    if date:
        lines.append(_("Date: %(date)s", date=date))
    lines.append(_("Subject: %(subject)s", subject=subject))
    if to:
        lines.append(_("To: %(recipients)s", recipients=to))
    if cc:
        lines.append(_("Cc: %(recipients)s", recipients=cc))
    return {
        "to": "",
        "cc": "",
        "subject": "Fwd: " + _FORWARD_PREFIX.sub("", subject),
        "body": "\n\n" + "\n".join(lines) + "\n\n" + body_text(msg) + "\n",
        "in_reply_to": None,
        "references": [],
        "attachments": [attachment.part for attachment in msg.attachments],
    }
