"""What the receiver checks in a message's bytes, and the ``Received:`` line it adds.

The checks read the header block only (up to the first empty line), except the NUL
check and the line endings, which concern every byte. Run :func:`normalise_line_endings`
first: the others expect CRLF lines.

Decisions where the RFCs leave room:
- 8-bit bytes in the header block without SMTPUTF8 are refused (554 5.6.0). 8BITMIME
  allows an 8-bit body only (RFC 6152); 8-bit headers need SMTPUTF8 (RFC 6531/6532),
  and a message that has them without it could not be passed on to a primary faithfully.
  With SMTPUTF8 the header block must be UTF-8.
- NUL anywhere is refused (554 5.6.0): RFC 5322 forbids it, and many servers cut a
  message at it.
- Bare CR and bare LF are turned into CRLF (RFC 5321 2.3.8), never passed on as they
  came, so no other server can read a different end of data into them (SMTP smuggling,
  CVE-2023-51764).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime
from ipaddress import IPv6Address, ip_address

from roster.addresses import printable

MAX_RECEIVED = 100
"""``Received:`` headers a message may carry; one more is a loop (RFC 5321 6.3)."""

MAX_MESSAGE_ID = 250
"""Characters of a Message-ID kept for tracking."""

LOOP = "554 5.4.6 Too many Received: headers: a mail loop, refused"
NUL = "554 5.6.0 The message contains NUL bytes: refused"
EIGHT_BIT = (
    "554 5.6.0 The message headers contain 8-bit bytes without SMTPUTF8: refused "
    "(8BITMIME allows 8-bit bodies only)"
)
NOT_UTF8 = "554 5.6.0 The message headers are not UTF-8: refused"

_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID = re.compile(
    rb"^message-id[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE
)
# Headers only Continuity writes (roster.queue.SENT_COPY_HEADER: the primary files a
# message that has it in the person's Sent folder), with their folded lines.
_OURS = re.compile(
    rb"^x-continuity-sent-copy[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*",
    re.IGNORECASE | re.MULTILINE,
)
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def normalise_line_endings(data: bytes) -> bytes:
    """``data`` with every bare CR and bare LF turned into CRLF."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data
    return _LINE_ENDING.sub(b"\r\n", data)


def header_block(data: bytes) -> bytes:
    """The header lines of a message with CRLF lines: everything before the first empty
    line (all of it when there is none), ending with its last CRLF."""
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def without_our_headers(data: bytes) -> bytes:
    """``data`` (CRLF lines) without the headers only Continuity may write: an outside
    sender's ``X-Continuity-Sent-Copy`` would have the primary file a forged message in
    the recipient's Sent folder, as if they had sent it."""
    headers = header_block(data)
    if _OURS.search(headers) is None:
        return data
    return _OURS.sub(b"", headers) + data[len(headers) :]


def count_received(data: bytes) -> int:
    """How many ``Received:`` headers the message's header block has (folded lines count
    once, names in any case)."""
    return len(_RECEIVED.findall(header_block(data)))


def check_message(data: bytes, *, smtputf8: bool) -> str | None:
    """The reply refusing a message (normalised to CRLF), or None when it may be queued:
    NUL bytes, 8-bit headers without SMTPUTF8 (or not UTF-8 with it), a loop."""
    if b"\0" in data:
        return NUL
    headers = header_block(data)
    if not headers.isascii():
        if not smtputf8:
            return EIGHT_BIT
        try:
            headers.decode("utf-8")
        except UnicodeDecodeError:
            return NOT_UTF8
    if len(_RECEIVED.findall(headers)) > MAX_RECEIVED:
        return LOOP
    return None


def message_id(data: bytes) -> str | None:
    """The first Message-ID header's value, unfolded, printable and capped: safe to store
    and show; None when there is none."""
    found = _MESSAGE_ID.search(header_block(data))
    if found is None:
        return None
    value = found.group(1).decode("utf-8", "replace").replace("\r\n", "")
    value = printable(" ".join(value.split()), MAX_MESSAGE_ID)
    return value or None


def protocol(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The ``with`` word of a Received line (RFC 3848, RFC 6531): SMTP, ESMTP, ESMTPS,
    ESMTPA, ESMTPSA, or UTF8SMTP with the same endings."""
    if not esmtp:
        return "SMTP"
    ending = ("S" if tls else "") + ("A" if authenticated else "")
    return ("UTF8SMTP" if smtputf8 else "ESMTP") + ending


def received_header(
    *,
    helo: str | None,
    client_ip: str,
    our_name: str,
    with_protocol: str,
    queue_id: str,
    recipient: str | None = None,
    client_name: str | None = None,
    when: datetime | None = None,
) -> bytes:
    """The ``Received:`` header line to put on top of a message (RFC 5321 4.4), folded,
    ending with CRLF. ``recipient`` is given when the message has one recipient only
    (naming one of several would tell each the others' addresses). The client's HELO
    and name are hostile: only host name characters of them are kept."""
    helo_text = _name(helo or "") or "unknown"
    literal = _literal(client_ip)
    origin = f"{_name(client_name)} {literal}" if client_name and _name(client_name) else literal
    stamp = format_datetime(when or datetime.now(UTC))
    lines = [
        f"Received: from {helo_text} ({origin})",
        f"\tby {_name(our_name)} with {_name(with_protocol)} id {_name(queue_id)}",
    ]
    if recipient is not None:
        shown = printable(recipient, 320).replace("<", "").replace(">", "").replace(";", "")
        lines.append(f"\tfor <{shown}>;")
    else:
        lines[-1] += ";"
    lines.append(f"\t{stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _name(text: str) -> str:
    """A host name (or literal) as a header may carry it: ASCII host name characters
    only, others shown as '?', at most 255."""
    return _NOT_IN_NAME.sub("?", text[:255])


def _literal(client_ip: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 4.1.3)."""
    try:
        address = ip_address(client_ip)
    except ValueError:
        return f"[{_name(client_ip)}]"
    if isinstance(address, IPv6Address):
        mapped = address.ipv4_mapped
        return f"[{mapped}]" if mapped else f"[IPv6:{address.compressed}]"
    return f"[{address}]"
