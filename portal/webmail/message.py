"""Parsing a stored message for reading: headers, bodies and the parts a person may download.

Mail is hostile input. Nothing here raises on a malformed message: `parse` returns what it
can read. Headers are decoded here (RFC 2047, raw 8-bit) rather than by the email package's
header objects, which raise on some malformed values and decode ISO-8859-1 as Latin-1 where
every browser and mail client reads it as Windows-1252.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.message
import email.policy
import email.utils
import io
import mimetypes
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.generator import BytesGenerator
from email.header import Header, decode_header
from email.parser import BytesParser

# Parts nested deeper than this, or beyond this count, are not listed (a hostile message
# can nest thousands of multiparts to exhaust the recursion limit).
MAX_DEPTH = 40
MAX_PARTS = 500
FILENAME_MAX = 150


@dataclass
class Attachment:
    """A part a person may download: its IMAP part path, a safe name, type and size."""

    part: str
    filename: str
    content_type: str
    size: int
    content_id: str | None = None


@dataclass
class ParsedMessage:
    """What the reading page shows of a message; `html` is raw, sanitise before showing it."""

    subject: str = ""
    from_: list[tuple[str, str]] = field(default_factory=list)
    to: list[tuple[str, str]] = field(default_factory=list)
    cc: list[tuple[str, str]] = field(default_factory=list)
    reply_to: list[tuple[str, str]] = field(default_factory=list)
    date: datetime | None = None
    message_id: str | None = None
    references: list[str] = field(default_factory=list)
    in_reply_to: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)


# --- character sets -------------------------------------------------------------------

# Labels the WHATWG Encoding Standard (what browsers do) reads as another, larger charset.
_SUPERSETS = {
    "ascii": "cp1252",
    "iso8859-1": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
}
# Python codecs that are not character sets a message may name: they turn escapes into
# characters or do something else entirely.
_REFUSED_CODECS = {
    "unicode-escape",
    "raw-unicode-escape",
    "punycode",
    "idna",
    "undefined",
    "mbcs",
    "oem",
    "charmap",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
# The five bytes Python's cp1252 leaves undefined are C1 controls for browsers.
_CP1252_HOLES = {0x81, 0x8D, 0x8F, 0x90, 0x9D}


def _codec(label: str) -> str | None:
    """The name of the Python codec for a charset label, or None when it names no charset."""
    if "*" in label:  # RFC 2231 language suffix: utf-8*en
        label = label.split("*", 1)[0]
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return None
    return info.name


def _decode_cp1252(data: bytes) -> str:
    """Windows-1252 as browsers read it (its undefined bytes become C1 controls)."""
    if not any(b in _CP1252_HOLES for b in data):
        return data.decode("cp1252")
    return "".join(chr(b) if b in _CP1252_HOLES else bytes((b,)).decode("cp1252") for b in data)


def _utf8_or_cp1252(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _decode_cp1252(data)


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes as text in `charset`: unknown ones as UTF-8 with replacement, never raises."""
    label = (charset or "").strip().strip("\"'").lower()
    codec = _codec(label) if label else "ascii"
    if codec == "ascii":
        # Nothing or US-ASCII declared: 8-bit text is UTF-8 more often than not, and
        # Windows-1252 (what browsers read US-ASCII as) when it is not valid UTF-8.
        text = _utf8_or_cp1252(data)
    elif codec is None:
        text = data.decode("utf-8", "replace")
    else:
        codec = _SUPERSETS.get(codec, codec)
        try:
            text = _decode_cp1252(data) if codec == "cp1252" else data.decode(codec, "replace")
        except Exception:  # a codec that fails even with errors="replace"
            text = data.decode("utf-8", "replace")
    return _SURROGATE.sub("\ufffd", text)


# --- headers ----------------------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"\?=[ \t\r\n]+=\?")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _undo_surrogateescape(value: str) -> str:
    """A header read from bytes keeps raw 8-bit as surrogates: read those as UTF-8/1252."""
    if not _SURROGATE.search(value):
        return value
    try:
        return _utf8_or_cp1252(value.encode("utf-8", "surrogateescape"))
    except UnicodeError:
        return _SURROGATE.sub("\ufffd", value)


def _word_bytes(encoding: str, text: str) -> bytes:
    """The bytes of one encoded word's text (B or Q), tolerant of bad padding and junk."""
    if encoding in "bB":
        cleaned = re.sub(r"[^A-Za-z0-9+/]", "", text)
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            return base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            return b""
    out = bytearray()
    raw = text.replace("_", " ").encode("latin-1", "replace")
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"=" and re.fullmatch(rb"[0-9A-Fa-f]{2}", raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def _decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; adjacent words of one charset joined before decoding."""
    if "=?" not in value:
        return value
    value = _BETWEEN_WORDS.sub("?==?", value)
    pieces: list[str] = []
    pending: bytes = b""
    pending_charset: str | None = None
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        if match.start() > pos:
            if pending:
                pieces.append(decode_bytes(pending, pending_charset))
                pending = b""
            pieces.append(value[pos : match.start()])
        charset, encoding, text = match.groups()
        if pending and charset.lower() != (pending_charset or "").lower():
            pieces.append(decode_bytes(pending, pending_charset))
            pending = b""
        pending += _word_bytes(encoding, text)
        pending_charset = charset
        pos = match.end()
    if pending:
        pieces.append(decode_bytes(pending, pending_charset))
    pieces.append(value[pos:])
    return "".join(pieces)


def header_text(value: object) -> str:
    """A header value as one line of text: RFC 2047 decoded, control characters as spaces."""
    if value is None:
        return ""
    try:
        if isinstance(value, Header):
            text = "".join(
                decode_bytes(part, charset) if isinstance(part, bytes) else part
                for part, charset in decode_header(value)
            )
        else:
            text = _decode_words(_undo_surrogateescape(str(value)))
    except Exception:
        text = str(value) if isinstance(value, str) else ""
    text = _SURROGATE.sub("\ufffd", text)
    text = _CONTROLS.sub(" ", text)
    return re.sub(r" {2,}", " ", text).strip()


def _raw_headers(msg: email.message.Message, name: str) -> list[str]:
    """Every raw value of header `name`, unfolded, never through the policy's parser."""
    wanted = name.lower()
    values = []
    try:
        for key, value in msg.raw_items():
            if key.lower() == wanted:
                values.append(re.sub(r"\r?\n(?=[ \t])", "", str(value)))
    except Exception:
        return []
    return values


def _first_header(msg: email.message.Message, name: str) -> str | None:
    values = _raw_headers(msg, name)
    return values[0] if values else None


_SPLIT_WORD = re.compile(r"=\?[^?\s]*\?[QqBb]\?[^?\s]*[:,;][^?\s]*\?=")
_BARE = re.compile(r"[^\s,;<>]+@[^\s,;<>]+")
_BRACKETED = re.compile(r"([^<>]*)<([^<>\s@]+@[^<>\s@]+)>")


def _addresses(msg: email.message.Message, name: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of a message's header ``name``."""
    return addresses_of([_undo_surrogateescape(value) for value in _raw_headers(msg, name)])


def addresses_of(raw: list[str]) -> list[tuple[str, str]]:
    """(display name, address) pairs of raw address header values; display names
    decoded only after the list is split."""
    if not raw:
        return []
    try:
        pairs = email.utils.getaddresses(raw)
    except Exception:
        pairs = []
    broken = not any("@" in address for _display, address in pairs)
    if broken or any(_SPLIT_WORD.search(value) for value in raw):
        # A display name the parser cannot read (an encoded word with a ":" or a "," in
        # it, which RFC 2047 forbids in a phrase): the addresses in angle brackets still
        # are what the sender wrote, with whatever precedes each as its name.
        joined = " ".join(raw)
        bracketed = [
            (display.strip().strip(",").strip(), address)
            for display, address in _BRACKETED.findall(joined)
        ]
        bare = [("", address) for address in _BARE.findall(_BRACKETED.sub(" ", joined))]
        pairs = bracketed + bare or pairs
    found = []
    for display, address in pairs[:500]:
        display_text = header_text(display)
        address_text = re.sub(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+", "", address)
        if display_text or address_text:
            found.append((display_text, address_text))
    return found


_MSG_ID = re.compile(r"<[^<>\s\x00-\x1f\x7f]{1,250}>")


def _message_ids(value: str | None) -> list[str]:
    """The <id> tokens of a Message-ID, In-Reply-To or References value."""
    if not value:
        return []
    return _MSG_ID.findall(_undo_surrogateescape(value))


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(header_text(value))
    except Exception:
        return None


# --- MIME structure ---------------------------------------------------------------------


def _content_type(part: email.message.Message) -> str:
    """The declared lower-case type/subtype; text/plain when it is missing or unreadable."""
    try:
        declared = part.get_content_type()
    except Exception:
        raw = _first_header(part, "content-type") or ""
        declared = raw.split(";", 1)[0].strip().lower()
    declared = _undo_surrogateescape(declared).lower()
    if not re.fullmatch(
        r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}", declared
    ):
        return "text/plain"
    return declared


def _compat32_view(part: email.message.Message) -> email.message.Message:
    """A compat32 copy of the part's MIME headers, whose parameter parsing never raises."""
    view = email.message.Message(policy=email.policy.compat32)
    for name in ("content-type", "content-disposition"):
        value = _first_header(part, name)
        if value is not None:
            view[name] = value
    return view


def _read_param(target: email.message.Message, param: str, header: str) -> str | None:
    if header == "content-disposition" and param == "filename":
        value: object = target.get_filename()
    else:
        value = target.get_param(param, header=header)
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
    return None if value is None else str(value)


def _param(part: email.message.Message, param: str, header: str = "content-type") -> str | None:
    """A MIME parameter (RFC 2231 continuations and charsets resolved), or None."""
    try:
        return _read_param(part, param, header)
    except Exception:
        try:
            return _read_param(_compat32_view(part), param, header)
        except Exception:
            return None


def _disposition(part: email.message.Message) -> str:
    raw = _first_header(part, "content-disposition") or ""
    return _undo_surrogateescape(raw).split(";", 1)[0].strip().lower()


def _leaves(
    node: email.message.Message, path: str, depth: int
) -> Iterator[tuple[str, email.message.Message]]:
    """(IMAP part path, part) for every leaf, depth first, numbered as IMAP BODY[] does."""
    is_container = False
    try:
        is_container = node.get_content_maintype() == "multipart" and node.is_multipart()
    except Exception:
        is_container = False
    if not is_container:
        # A single-part message's body is part 1; message/* parts stay whole (their
        # inside is not listed: a forwarded message is downloaded as one .eml).
        yield (path or "1"), node
        return
    if depth >= MAX_DEPTH:
        return
    children = node.get_payload()
    if not isinstance(children, list):
        return
    for index, child in enumerate(children, start=1):
        if isinstance(child, email.message.Message):
            child_path = f"{path}.{index}" if path else str(index)
            yield from _leaves(child, child_path, depth + 1)


def _payload(part: email.message.Message) -> bytes:
    """A leaf part's decoded content; message/* parts as the bytes of what they carry."""
    try:
        if part.is_multipart():
            out = io.BytesIO()
            BytesGenerator(out, mangle_from_=False, policy=email.policy.compat32).flatten(part)
            whole = out.getvalue()
            if whole.startswith(b"\n"):  # a part without headers of its own
                return whole[1:]
            return whole.partition(b"\n\n")[2]
        data = part.get_payload(decode=True)
    except Exception:
        try:
            text = part.get_payload()
            return text.encode("ascii", "surrogateescape") if isinstance(text, str) else b""
        except Exception:
            return b""
    return data if isinstance(data, bytes) else b""


# --- safe file names ---------------------------------------------------------------------

_WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)
_SANE_EXTENSION = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9_-]{0,11}")


def _fallback_name(part_path: str, content_type: str) -> str:
    if content_type in ("message/rfc822", "message/global"):
        extension = ".eml"
    elif content_type == "text/plain":
        extension = ".txt"
    else:
        try:
            extension = mimetypes.guess_extension(content_type, strict=False) or ".bin"
        except Exception:
            extension = ".bin"
        if not _SANE_EXTENSION.fullmatch(extension):
            extension = ".bin"
    return f"attachment-{part_path}{extension}"


def safe_filename(name: str | None, part_path: str, content_type: str) -> str:
    """A file name that is safe to offer for saving, whatever the message claimed."""
    text = header_text(name) if name else ""
    text = unicodedata.normalize("NFC", text)
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
        for ch in text
        if unicodedata.category(ch) not in ("Cf", "Cs", "Co", "Cn")
    )
    text = re.sub(r'[<>:"|?*]', "_", text)
    text = re.sub(r"\s+", " ", text).strip(" .")
    if _WINDOWS_RESERVED.fullmatch(text):
        text = "_" + text
    if len(text) > FILENAME_MAX:
        stem, dot, extension = text.rpartition(".")
        if dot and _SANE_EXTENSION.fullmatch("." + extension):
            text = stem[: FILENAME_MAX - len(extension) - 1].rstrip(" .") + "." + extension
        else:
            text = text[:FILENAME_MAX].rstrip(" .")
    return text or _fallback_name(part_path, content_type)


def _content_id(part: email.message.Message) -> str | None:
    raw = _first_header(part, "content-id")
    if raw is None:
        return None
    text = re.sub(r"\s+", "", header_text(raw)).strip("<>")
    return text[:250] or None


# --- the message --------------------------------------------------------------------------


def _read(raw: bytes) -> email.message.Message | None:
    parser = BytesParser(policy=email.policy.default)
    try:
        return parser.parsebytes(raw)
    except Exception:  # deep nesting can exhaust the recursion limit: keep the headers
        try:
            return parser.parsebytes(raw, headersonly=True)
        except Exception:
            return None


def _is_body(part: email.message.Message, is_root: bool, content_type: str) -> bool:
    """A text part meant to be read in the message, not offered as a file.

    A text part with a file name is a file even when marked inline: an HTML "photo.png"
    is what Roundcube's CVE-2024-42008 was made of. A message that is nothing but such a
    part is still read.
    """
    if content_type not in ("text/plain", "text/html") and not content_type.startswith(
        "multipart/"
    ):
        return False
    if is_root:
        return True
    if _disposition(part) == "attachment":
        return False
    return not (_param(part, "filename", "content-disposition") or _param(part, "name"))


def _inner_subject(part: email.message.Message) -> str | None:
    """A forwarded message's subject, to name its .eml file after."""
    try:
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], email.message.Message):
            subject = header_text(_first_header(inner[0], "subject"))
            return f"{subject[:100]}.eml" if subject else None
    except Exception:
        return None
    return None


def _walk(
    msg: email.message.Message,
) -> tuple[str | None, str | None, list[Attachment], dict[str, email.message.Message]]:
    """The text and HTML bodies, the attachments, and the part objects by path."""
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    parts: dict[str, email.message.Message] = {}
    try:
        leaves = list(_leaves(msg, "", 0))[:MAX_PARTS]
    except Exception:
        leaves = []
    for path, part in leaves:
        content_type = _content_type(part)
        data = _payload(part)
        if _is_body(part, part is msg, content_type):
            body_text = decode_bytes(data, _param(part, "charset")).replace("\x00", "\ufffd")
            if content_type == "text/html":
                if html is None:
                    html = body_text
                    continue
            elif text is None:
                text = body_text
                continue
        name = _param(part, "filename", "content-disposition") or _param(part, "name")
        if not name and content_type in ("message/rfc822", "message/global"):
            name = _inner_subject(part)
        if not data and not name:
            continue
        parts[path] = part
        attachments.append(
            Attachment(
                part=path,
                filename=safe_filename(name, path, content_type),
                content_type=content_type,
                size=len(data),
                content_id=_content_id(part),
            )
        )
    return text, html, attachments, parts


def parse(raw: bytes) -> ParsedMessage:
    """Read a message for the reading page; a malformed message gives what can be read."""
    parsed = ParsedMessage()
    msg = _read(raw)
    if msg is None:
        return parsed
    parsed.subject = header_text(_first_header(msg, "subject"))
    parsed.from_ = _addresses(msg, "from")
    parsed.to = _addresses(msg, "to")
    parsed.cc = _addresses(msg, "cc")
    parsed.reply_to = _addresses(msg, "reply-to")
    parsed.date = _date(_first_header(msg, "date"))
    ids = _message_ids(_first_header(msg, "message-id"))
    parsed.message_id = ids[0] if ids else None
    parsed.references = _message_ids(_first_header(msg, "references"))[-100:]
    reply_ids = _message_ids(_first_header(msg, "in-reply-to"))
    parsed.in_reply_to = reply_ids[0] if reply_ids else None
    parsed.text, parsed.html, parsed.attachments, _ = _walk(msg)
    return parsed


def part_bytes(raw: bytes, part: str) -> tuple[Attachment, bytes] | None:
    """A listed attachment and its decoded content, or None when `part` lists nothing."""
    if not re.fullmatch(r"[1-9][0-9]{0,3}(\.[1-9][0-9]{0,3}){0,39}", part):
        return None
    msg = _read(raw)
    if msg is None:
        return None
    _, _, attachments, parts = _walk(msg)
    for attachment in attachments:
        if attachment.part == part:
            return attachment, _payload(parts[part])
    return None
