"""The webmail's way into the standby store: one person's mailbox over IMAP.

The portal signs in to Dovecot as the master user with SASL PLAIN, the person's roster
address as the authorization identity (no separator games: "*" is legal in a local
part). Connections are kept in a small pool per portal process, by person, and reused
across that person's requests; one idle for too long is closed, and one found dead is
replaced without the person noticing.

Nothing from a message or a request reaches an IMAP command unchecked: UIDs are
integers, folder names are only ones the server listed, search text holds no CR, LF
or NUL (imapclient passes those through, its issue #657).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import functools
import imaplib
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple, TypeVar

from imapclient import IMAPClient  # type: ignore[import-untyped]
from imapclient.datetime_util import parse_to_datetime  # type: ignore[import-untyped]
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError  # type: ignore[import-untyped]
from imapclient.imap4 import IMAP4WithTimeout  # type: ignore[import-untyped]
from imapclient.imapclient import _literal  # type: ignore[import-untyped]

from portal.webmail.message import addresses_of, header_text
from roster.config import Config, ConfigError, host_port
from roster.standby import store_uses_tls

T = TypeVar("T")

PAGE_SIZE = 50
SPECIAL_FOLDERS = ("INBOX", "Sent", "Drafts", "Trash")
SPECIAL_USE = {b"\\Sent": "Sent", b"\\Drafts": "Drafts", b"\\Trash": "Trash"}
SORT_KEYS = {"date": "DATE", "from": "FROM", "to": "TO", "subject": "SUBJECT", "size": "SIZE"}
SEARCH_FIELDS = {"text": "TEXT", "from": "FROM", "to": "TO", "subject": "SUBJECT"}
MAX_SEARCH_LENGTH = 200
MAX_SELECTION = 500
GREETERS = 4  # connections being opened ahead of their request, at once, per process
# What a line of the message list needs: the header fields as one literal each (much
# cheaper to parse than ENVELOPE and BODYSTRUCTURE's nested lists).
LIST_ITEMS = [
    b"UID",
    b"FLAGS",
    b"INTERNALDATE",
    b"RFC822.SIZE",
    b"BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE CONTENT-TYPE)]",
]
HEADER_KEY = b"BODY[HEADER.FIELDS (FROM TO SUBJECT DATE CONTENT-TYPE)]"
LIST_QUERY = "(" + " ".join(item.decode("ascii") for item in LIST_ITEMS) + ")"
_ANSWER_START = re.compile(rb"\d+ \(")
_STATUS_ITEM = re.compile(rb"([A-Z]+) (\d+)")
_ROW = {
    b"UID": re.compile(rb"\bUID (\d+)"),
    b"FLAGS": re.compile(rb"\bFLAGS \(([^)]*)\)"),
    b"INTERNALDATE": re.compile(rb'\bINTERNALDATE "([^"]+)"'),
    b"RFC822.SIZE": re.compile(rb"\bRFC822\.SIZE (\d+)"),
}


class StoreUnavailable(RuntimeError):
    """The standby store cannot be reached or refused the portal's sign-in."""


class BadRequest(ValueError):
    """A request named something the mailbox does not have, or sent unsafe text."""


@dataclass(frozen=True)
class StoreSettings:
    """Where the standby store is and how the portal keeps its connections to it."""

    host: str
    port: int
    tls: bool
    ca_file: str | None
    master_user: str
    master_password: str
    per_person: int = 2
    total: int = 64
    idle_seconds: float = 300.0
    timeout: float = 20.0


def settings_from(config: Config) -> StoreSettings:
    """The store settings of [standby] and [webmail]; TLS unless the store is on loopback."""
    standby, webmail = config.standby, config.webmail
    host, _colon, port = host_port(
        standby.get("imap", "127.0.0.1:143"), "[standby].imap"
    ).rpartition(":")
    host = host.strip("[]")
    password = standby.get("master_password")
    if not password:
        raise ConfigError("[standby].master_password_file: the webmail needs the master secret")
    return StoreSettings(
        host=host,
        port=int(port),
        tls=store_uses_tls(host, standby.get("imap_tls")),
        ca_file=standby.get("ca_file"),
        master_user=str(standby.get("master_user", "portal")),
        master_password=str(password).strip(),
        per_person=int(webmail.get("connections_per_person", 2)),
        total=int(webmail.get("connections", 64)),
        idle_seconds=float(webmail.get("idle_seconds", 300)),
    )


# -- what the pages show --------------------------------------------------------------


@dataclass(frozen=True)
class Folder:
    """A folder as the list of folders shows it."""

    name: str
    token: str
    special: str | None
    total: int
    unread: int


class Summary(NamedTuple):
    """One line of the message list (a tuple: fifty are made for every list page)."""

    uid: int
    subject: str
    sender: str
    sender_address: str
    to: str  # the To header as it came (decoded only for the pages that show it)
    date: datetime | None
    size: int
    seen: bool
    flagged: bool
    answered: bool
    draft: bool
    attachment: bool

    @property
    def recipients(self) -> str:
        """The first five recipients' names (or addresses), for Sent and Drafts."""
        return ", ".join(name or address for name, address in _addresses(self.to)[:5])


@dataclass(frozen=True)
class Page:
    """One page of a folder's messages, and where it sits among them."""

    folder: str
    messages: list[Summary]
    total: int
    page: int
    pages: int


def folder_token(name: str) -> str:
    """An opaque, URL-safe id of a folder name."""
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii").rstrip("=") or "-"


def folder_from_token(token: str) -> str:
    """The folder name a token stands for (the mailbox still checks it exists)."""
    if len(token) > 400 or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise BadRequest("folder")
    try:
        name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest("folder") from None
    if not name or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise BadRequest("folder")
    return name


def checked_uid(value: Any) -> int:
    """A message UID from a request: a positive 32-bit integer, nothing else."""
    text = str(value)
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise BadRequest("uid")
    uid = int(text)
    if not 0 < uid < 2**32:
        raise BadRequest("uid")
    return uid


def checked_uids(values: Iterable[Any]) -> list[int]:
    """Several UIDs (a selection): each checked, each once, at most MAX_SELECTION."""
    uids = sorted({checked_uid(value) for value in values})
    if not uids or len(uids) > MAX_SELECTION:
        raise BadRequest("selection")
    return uids


def checked_search(text: str) -> str:
    """Search text from a person: no CR, LF, NUL or other control characters (they
    would end the IMAP command and start another), and not too long."""
    text = text.strip()
    if len(text) > MAX_SEARCH_LENGTH or any(ord(c) < 32 or c == "\x7f" for c in text):
        raise BadRequest("search")
    return text


def search_term(text: str) -> bytes:
    """Search text as an IMAP string whatever it holds. imapclient quotes a term only
    when it has a space, a quote or a backslash, and sends any other as it is: ``{1}``
    would then announce a literal the store waits for (a worker hung until its timeout),
    ``(`` would break the command. Marked as a literal, the term goes as a quoted string
    when imapclient quotes it, and as a literal otherwise: both are read as text."""
    term: bytes = _literal(text.encode("utf-8"))
    return term


def _addresses(value: str) -> list[tuple[str, str]]:
    """The (name, address) pairs of an address header that have an address."""
    return [(name, address) for name, address in addresses_of([value]) if address]


_FOLDED = re.compile(r"\r?\n[ \t]+")
_SIMPLE_MAILBOX = re.compile(
    r'\s*(?:([^"<>,;:@=]*?)\s*<([^<>\s,;"]+@[^<>\s,;"]+)>|([^<>\s,;"]+@[^<>\s,;"]+))\s*'
)


def _fields(raw: bytes) -> dict[str, str]:
    """The header fields fetched for the list, by lower-case name (the first of each)."""
    text = _FOLDED.sub(" ", raw.decode("utf-8", "surrogateescape"))
    fields: dict[str, str] = {}
    for line in text.split("\n"):
        name, colon, value = line.partition(":")
        if colon:
            fields.setdefault(name.strip().lower(), value.strip())
    return fields


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _decoded(value: str) -> str:
    """``header_text`` where there is anything to decode (most values are plain)."""
    if "=?" in value or not value.isascii() or _CONTROL.search(value):
        return header_text(value)
    return value


def _first_sender(value: str) -> tuple[str, str]:
    """The first (name, address) of a From header: plain forms read directly, anything
    else (quotes, encoded words, groups) by the email package."""
    simple = _SIMPLE_MAILBOX.fullmatch(value)
    if simple:
        if simple.group(3):
            return "", _decoded(simple.group(3))
        return _decoded(simple.group(1).strip()), _decoded(simple.group(2))
    found = _addresses(value)
    return found[0] if found else ("", "")


_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_COMMON_DATE = re.compile(
    r"(?:[A-Za-z]{3},\s*)?(\d{1,2}) ([A-Z][a-z]{2}) (\d{4}) (\d{2}):(\d{2})(?::(\d{2}))?"
    r" ([+-])(\d{2})(\d{2})(?:\s*\(.*\))?\s*"
)


@functools.lru_cache(maxsize=64)
def _zone(sign: str, hours: str, minutes: str) -> timezone:
    """The time zone of a Date header's offset (a page holds few of them)."""
    offset = timedelta(hours=int(hours), minutes=int(minutes))
    return timezone(-offset if sign == "-" else offset)


def _date(value: str) -> datetime | None:
    """A Date header: the common form read directly (fifty a page), others by the email
    package; None when it cannot be read."""
    found = _COMMON_DATE.fullmatch(value)
    if found and found.group(2) in _MONTHS:
        day, month, year, hour, minute, second, sign, zone_h, zone_m = found.groups()
        with contextlib.suppress(ValueError, OverflowError):
            return datetime(
                int(year),
                _MONTHS[month],
                int(day),
                int(hour),
                int(minute),
                int(second or 0),
                tzinfo=_zone(sign, zone_h, zone_m),
            )
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        return parsedate_to_datetime(value)
    return None


def _summary(uid: int, data: dict[bytes, Any]) -> Summary:
    """A list line from the header fields fetched (LIST_ITEMS)."""
    flags = {flag.lower() for flag in data.get(b"FLAGS", ())}
    fields = _fields(bytes(data.get(HEADER_KEY) or b""))
    sender_name, sender_address = _first_sender(fields.get("from", ""))
    date = _date(fields.get("date", ""))
    if date is None and data.get(b"INTERNALDATE"):
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            date = parse_to_datetime(data[b"INTERNALDATE"])
    return Summary(
        uid=uid,
        subject=_decoded(fields.get("subject", "")),
        sender=sender_name or sender_address,
        sender_address=sender_address,
        to=fields.get("to", ""),
        date=date,
        size=int(data.get(b"RFC822.SIZE", 0)),
        seen=b"\\seen" in flags,
        flagged=b"\\flagged" in flags,
        answered=b"\\answered" in flags,
        draft=b"\\draft" in flags,
        # multipart/mixed carries attachments; alternative and related do not.
        attachment=fields.get("content-type", "").lower().startswith("multipart/mixed"),
    )


_UNTAGGED_FETCH = re.compile(rb"\* (\d+) FETCH (.*)", re.DOTALL)
_LITERAL_SIZE = re.compile(rb"\{(\d+)\}$")


def _fetch_answer(imap: imaplib.IMAP4, tag: bytes) -> tuple[str, list[Any]]:
    """The answer to the FETCH sent with ``tag``, read straight from the connection:
    its tagged status, and its FETCH lines as imaplib would hand them (a line before a
    literal paired with it, the rest of the line after). imaplib's own reading, which
    matches every line against several patterns, cost as much as the store's work.
    Other untagged lines (a new message's EXISTS, flags) are left aside, as nothing on
    the page reads them; the store closing the connection is an error, as in imaplib."""
    try:
        return _read_fetch_answer(imap, tag)
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as error:  # a line too long to be read, say
        # Half an answer left on the connection would be read as the next request's.
        raise imaplib.IMAP4.abort(str(error)) from None


def _read_fetch_answer(imap: imaplib.IMAP4, tag: bytes) -> tuple[str, list[Any]]:
    found: list[Any] = []
    while True:
        line = imap.readline()
        if not line.endswith(b"\r\n"):
            raise imaplib.IMAP4.abort(f"socket error: unterminated line: {line[:100]!r}")
        line = line[:-2]
        if line.startswith(tag + b" "):
            imap.tagged_commands.pop(tag, None)
            kind, _, text = line[len(tag) + 1 :].partition(b" ")
            return kind.decode("ascii", "replace"), found if kind == b"OK" else [text]
        if line.startswith(b"* BYE"):
            raise imaplib.IMAP4.abort(line.decode("ascii", "replace"))
        if not line.startswith((b"* ", b"+ ")):
            # Another command's answer: the connection is out of step (imaplib aborts).
            raise imaplib.IMAP4.abort(f"unexpected tagged response: {line[:100]!r}")
        answer = _UNTAGGED_FETCH.match(line)
        text = answer.group(1) + b" " + answer.group(2) if answer else b""
        while True:
            size = _LITERAL_SIZE.search(line)
            if size is None:
                break
            literal = imap.read(int(size.group(1)))
            if answer:
                found.append((text, literal))
            line = imap.readline()
            if not line.endswith(b"\r\n"):
                raise imaplib.IMAP4.abort(f"socket error: unterminated line: {line[:100]!r}")
            line = text = line[:-2]
        if answer:
            found.append(text)


def _rows(data: list[Any]) -> list[dict[bytes, Any]]:
    """FETCH answers of LIST_ITEMS as imaplib hands them (the header fields as a literal,
    the other items around it), read with a few regular expressions: imapclient's own
    parser costs more than everything else on the list page."""
    rows = []
    pending: dict[bytes, Any] | None = None
    text = b""
    for item in data:
        if isinstance(item, tuple):
            if pending is not None:
                rows.append(_row(pending, text))
            pending, text = {HEADER_KEY: item[1]}, item[0]
        elif isinstance(item, bytes) and _ANSWER_START.match(item):
            # An answer without a literal: the header fields given as a quoted string
            # (empty), or an unsolicited FETCH about flags, which is no row of ours.
            if pending is not None:
                rows.append(_row(pending, text))
            pending, text = None, b""
            if b"BODY[HEADER.FIELDS" in item:
                pending, text = {HEADER_KEY: b""}, item
        elif isinstance(item, bytes) and pending is not None:
            text += b" " + item
    if pending is not None:
        rows.append(_row(pending, text))
    return rows


def _row(row: dict[bytes, Any], text: bytes) -> dict[bytes, Any]:
    for key, pattern in _ROW.items():
        found = pattern.search(text)
        if found is None:
            continue
        value = found.group(1)
        if key == b"FLAGS":
            row[key] = tuple(value.split())
        elif key == b"INTERNALDATE":
            row[key] = value  # parsed only for a message without a readable Date
        else:
            row[key] = int(value)
    return row


# -- one person's mailbox -------------------------------------------------------------


@dataclass
class _Connection:
    client: IMAPClient
    address: str
    last_used: float
    folders: dict[str, str | None] = field(default_factory=dict)  # name -> special use
    selected: str | None = None
    # UIDs of a sorted or searched folder, by (folder, sort, reverse, search, state)
    orders: OrderedDict[tuple[Any, ...], list[int]] = field(default_factory=OrderedDict)


class Mailbox:
    """A person's mailbox on one signed-in connection; every name and number checked."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.client = connection.client
        self.address = connection.address
        self._synced: dict[str, dict[bytes, Any]] = {}

    # -- folders ----------------------------------------------------------------------
    def _load_folders(self) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for flags, _delimiter, name in self.client.list_folders():
            if isinstance(name, bytes):
                continue
            if any(flag.lower() == b"\\noselect" for flag in flags):
                continue
            special = next((SPECIAL_USE[f] for f in flags if f in SPECIAL_USE), None)
            found[name] = "INBOX" if name.upper() == "INBOX" else special
        missing = [name for name in SPECIAL_FOLDERS if name not in found.values()]
        for name in missing:
            if name in found:  # a folder of that name without its special use
                found[name] = name
                continue
            try:
                self.client.create_folder(name)
                self.client.subscribe_folder(name)
            except IMAPClientError:
                continue
            found[name] = name
        self._connection.folders = found
        return found

    def folder_names(self) -> dict[str, str | None]:
        """Every folder name the server listed, with its special use."""
        return self._connection.folders or self._load_folders()

    def checked_folder(self, name: str) -> str:
        """``name`` if the server listed it (listed again once if not yet known)."""
        if name in self.folder_names() or name in self._load_folders():
            return name
        raise BadRequest("folder")

    def special(self, use: str) -> str:
        """The folder with special use ``use`` (INBOX, Sent, Drafts, Trash)."""
        for name, special in self.folder_names().items():
            if special == use:
                return name
        return self.checked_folder(use)

    def folders(self, *, counts: bool = True) -> list[Folder]:
        """The folders with their message and unread counts (``counts`` False: without,
        0 each, and no command to the store), special ones first."""
        names = self.folder_names()
        order = {use: index for index, use in enumerate(SPECIAL_FOLDERS)}
        listed = sorted(
            names.items(),
            key=lambda item: (order.get(item[1] or "", len(order)), item[0].lower()),
        )
        result = []
        for name, special in listed:
            total, unread = self._counts(name) if counts else (0, 0)
            result.append(Folder(name, folder_token(name), special, total, unread))
        return result

    def counted(self, folder: Folder) -> Folder:
        """``folder`` with its message and unread counts as the store has them now."""
        total, unread = self._counts(folder.name)
        return Folder(folder.name, folder.token, folder.special, total, unread)

    def _counts(self, name: str) -> tuple[int, int]:
        """A listed folder's messages and unread ones (STATUS, its answer read with a
        regular expression: imapclient's parser costs more than the store's answer)."""
        imap = self.client._imap  # noqa: SLF001 - imaplib underneath, for its plain answers
        kind, data = imap.status(self.client._normalise_folder(name), "(MESSAGES UNSEEN)")  # noqa: SLF001
        if kind != "OK":
            raise IMAPClientError(f"STATUS failed: {data!r}")
        found: dict[bytes, bytes] = {}
        for line in data:
            if isinstance(line, bytes):
                # The folder's name comes first and may hold anything: the items last.
                found.update(_STATUS_ITEM.findall(line.rpartition(b"(")[2]))
        return int(found.get(b"MESSAGES", 0)), int(found.get(b"UNSEEN", 0))

    def select(self, name: str, meanwhile: Callable[[], None] | None = None) -> dict[bytes, Any]:
        """Select a listed folder (read-write: reading a message marks it read) and
        return its state (EXISTS, UIDNEXT, UIDVALIDITY). ``meanwhile`` runs once while
        the store opens the folder (or before returning, when it does not need to).

        SELECT opens the folder's index again (about 30 ms at 50,000 messages): a folder
        the pooled connection has selected already is only brought up to date (NOOP,
        then STATUS, well under a millisecond), and once per request at most.
        """
        name = self.checked_folder(name)
        found = self._synced.get(name)
        if found is not None:
            if meanwhile is not None:
                meanwhile()
            return found
        state: dict[bytes, Any]
        if self._connection.selected == name:
            if meanwhile is not None:
                meanwhile()
            self.client.noop()
            status = self.client.folder_status(name, [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY"])
            state = {
                b"EXISTS": int(status.get(b"MESSAGES", 0)),
                b"UIDNEXT": status.get(b"UIDNEXT"),
                b"UIDVALIDITY": status.get(b"UIDVALIDITY"),
            }
        else:
            self._connection.selected = None
            state = self._select(name, meanwhile)
            self._connection.selected = name
        self._synced = {name: state}
        return state

    def _select(self, name: str, meanwhile: Callable[[], None] | None) -> dict[bytes, Any]:
        """SELECT, as imapclient's ``select_folder`` sends and reads it, with
        ``meanwhile`` run between the two (imaplib's own halves of a command)."""
        if meanwhile is None:
            return self.client.select_folder(name)  # type: ignore[no-any-return]
        imap = self.client._imap  # noqa: SLF001
        imap.untagged_responses = {}
        imap.is_readonly = False
        tag = imap._command("SELECT", self.client._normalise_folder(name))  # noqa: SLF001
        meanwhile()
        kind, data = imap._command_complete("SELECT", tag)  # noqa: SLF001
        if kind != "OK":
            imap.state = "AUTH"
            raise IMAPClientError(f"select failed: {data!r}")
        imap.state = "SELECTED"
        if "READ-ONLY" in imap.untagged_responses:  # as imaplib's select checks
            raise imaplib.IMAP4.readonly(f"{name} is not writable")
        return self.client._process_select_response(imap.untagged_responses)  # type: ignore[no-any-return]  # noqa: SLF001

    def changed(self) -> None:
        """Forget the folder state of this request (messages were moved or removed)."""
        self._synced = {}

    # -- listing ----------------------------------------------------------------------
    def page(
        self,
        folder: str,
        *,
        page: int = 1,
        sort: str = "arrival",
        reverse: bool = True,
        search: str = "",
        search_field: str = "text",
        meanwhile: Callable[[Page], None] | None = None,
    ) -> Page:
        """One page of ``folder``: newest first by arrival unless sorted or searched.
        ``meanwhile`` is called once with the page's outline (where it sits, no
        messages yet) while the store reads its messages, or before returning."""
        state = self.select(folder)
        exists = int(state.get(b"EXISTS", 0))
        search = checked_search(search)
        if sort not in SORT_KEYS and sort != "arrival":
            raise BadRequest("sort")
        if search_field not in SEARCH_FIELDS:
            raise BadRequest("field")
        if sort == "arrival" and not search and reverse:
            # Newest first by arrival: the last sequence numbers, whatever the folder's
            # size (no SORT, no UID list of the whole folder).
            pages = max(1, -(-exists // PAGE_SIZE))
            page = min(max(page, 1), pages)
            high = exists - (page - 1) * PAGE_SIZE
            low = max(1, high - PAGE_SIZE + 1)
            outline = Page(folder, [], exists, page, pages)
            messages: list[Summary] = []
            if exists:
                rows = sorted(
                    self._fetch_rows(
                        f"{low}:{high}", by_uid=False, meanwhile=meanwhile, outline=outline
                    ),
                    key=lambda d: -d[b"UID"],
                )
                messages = [_summary(int(d[b"UID"]), d) for d in rows]
            elif meanwhile is not None:
                meanwhile(outline)
            return Page(folder, messages, exists, page, pages)
        uids = self._ordered(folder, state, sort, reverse, search, search_field)
        pages = max(1, -(-len(uids) // PAGE_SIZE))
        page = min(max(page, 1), pages)
        chosen = uids[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        outline = Page(folder, [], len(uids), page, pages)
        fetched = {}
        if chosen:
            listed = ",".join(str(uid) for uid in chosen)
            fetched = {
                row[b"UID"]: row
                for row in self._fetch_rows(
                    listed, by_uid=True, meanwhile=meanwhile, outline=outline
                )
            }
        elif meanwhile is not None:
            meanwhile(outline)
        messages = [_summary(uid, fetched[uid]) for uid in chosen if uid in fetched]
        return Page(folder, messages, len(uids), page, pages)

    def _ordered(
        self,
        folder: str,
        state: dict[bytes, Any],
        sort: str,
        reverse: bool,
        search: str,
        search_field: str,
    ) -> list[int]:
        """The folder's UIDs in the asked order, kept while the folder is unchanged."""
        key = (
            folder,
            sort,
            reverse,
            search,
            search_field,
            state.get(b"UIDVALIDITY"),
            state.get(b"UIDNEXT"),
            state.get(b"EXISTS"),
        )
        orders = self._connection.orders
        if key in orders:
            orders.move_to_end(key)
            return orders[key]
        term = search_term(search)
        criteria: list[Any] = [SEARCH_FIELDS[search_field], term] if search else ["ALL"]
        if search and search_field == "to":  # a recipient is in To, Cc or (in Sent) Bcc
            criteria = ["OR", "TO", term, "OR", "CC", term, "BCC", term]
        if sort == "arrival":
            uids = sorted(self.client.search(criteria, charset="UTF-8"))
        else:
            uids = list(self.client.sort([SORT_KEYS[sort]], criteria, charset="UTF-8"))
        if reverse:
            uids.reverse()
        orders[key] = uids
        while len(orders) > 4:
            orders.popitem(last=False)
        return uids

    def _fetch_rows(
        self,
        message_set: str,
        *,
        by_uid: bool,
        meanwhile: Callable[[Page], None] | None = None,
        outline: Page | None = None,
    ) -> list[dict[bytes, Any]]:
        """LIST_ITEMS of ``message_set`` (numbers we made), each with its UID;
        ``meanwhile(outline)`` runs while the store reads them."""
        imap = self.client._imap  # noqa: SLF001 - imaplib underneath, for its plain answers
        # imaplib's fetch and uid, in their two halves (send; read the answer).
        if by_uid:
            tag = imap._command("UID", "FETCH", message_set, LIST_QUERY)  # noqa: SLF001
        else:
            tag = imap._command("FETCH", message_set, LIST_QUERY)  # noqa: SLF001
        if meanwhile is not None and outline is not None:
            meanwhile(outline)
        kind, data = _fetch_answer(imap, tag)
        if kind != "OK":
            raise IMAPClientError(f"FETCH failed: {data!r}")
        return [row for row in _rows(data) if b"UID" in row]

    def neighbours(self, folder: str, uid: int) -> tuple[int | None, int | None]:
        """The newer and older message next to ``uid`` in arrival order: by sequence
        numbers (two small answers, not the UIDs of the whole folder)."""
        state = self.select(folder)
        exists = int(state.get(b"EXISTS", 0))
        self.client.use_uid = False
        try:
            found = self.client.search(["UID", str(uid)])
            if not found:
                return None, None
            position = int(found[0])
            around = [n for n in (position - 1, position + 1) if 1 <= n <= exists]
            fetched = self.client.fetch(around, [b"UID"]) if around else {}
        finally:
            self.client.use_uid = True
        newer = fetched.get(position + 1, {}).get(b"UID")
        older = fetched.get(position - 1, {}).get(b"UID")
        return (int(newer) if newer else None), (int(older) if older else None)

    # -- one message -------------------------------------------------------------------
    def fetch(self, folder: str, uid: int) -> tuple[bytes, set[bytes]]:
        """A message's bytes and flags (without marking it read)."""
        self.select(folder)
        data = self.client.fetch([uid], [b"BODY.PEEK[]", b"FLAGS"]).get(uid)
        if not data or b"BODY[]" not in data:
            raise BadRequest("uid")
        return bytes(data[b"BODY[]"]), {flag.lower() for flag in data.get(b"FLAGS", ())}

    # -- changes ----------------------------------------------------------------------
    def set_flag(self, folder: str, uids: list[int], flag: bytes, on: bool) -> None:
        """Set or clear ``flag`` (\\Seen, \\Flagged) on messages of ``folder``."""
        self.select(folder)
        if on:
            self.client.add_flags(uids, [flag], silent=True)
        else:
            self.client.remove_flags(uids, [flag], silent=True)

    def move(self, folder: str, uids: list[int], target: str) -> None:
        """Move messages to another listed folder."""
        target = self.checked_folder(target)
        self.select(folder)
        if target == folder:
            return
        self.client.move(uids, target)
        self.changed()

    def delete(self, folder: str, uids: list[int]) -> bool:
        """Move messages to Trash; in Trash, remove them for good. True if removed."""
        trash = self.special("Trash")
        if folder != trash:
            self.move(folder, uids, trash)
            return False
        self.select(folder)
        self.client.delete_messages(uids, silent=True)
        self.client.uid_expunge(uids)
        self.changed()
        return True

    def empty_trash(self) -> None:
        """Remove every message in Trash."""
        self.select(self.special("Trash"))
        self.client.delete_messages("1:*", silent=True)
        self.client.expunge()
        self.changed()

    def append(self, folder: str, message: bytes, flags: tuple[bytes, ...] = ()) -> int | None:
        """Store ``message`` in a folder; its UID when the server says (UIDPLUS)."""
        folder = self.checked_folder(folder)
        reply = self.client.append(folder, message, flags=flags)
        self.changed()
        found = re.search(rb"APPENDUID \d+ (\d+)", reply if isinstance(reply, bytes) else b"")
        return int(found.group(1)) if found else None

    def remove(self, folder: str, uid: int) -> None:
        """Remove one message for good (a draft replaced by a newer one, or sent)."""
        self.select(folder)
        self.client.delete_messages([uid], silent=True)
        self.client.uid_expunge([uid])
        self.changed()


# -- the pool -------------------------------------------------------------------------

_BROKEN = (IMAPClientAbortError, OSError, socket.timeout, ssl.SSLError, imaplib.IMAP4.abort)


class StorePool:
    """Signed-in IMAP connections to the standby store, by person, for one process.

    At most ``per_person`` connections per person (a second request of the same person
    waits for one to come back) and ``total`` in all (the least recently used idle one
    is closed to make room); a connection unused for ``idle_seconds`` is closed.
    """

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self._lock = threading.Condition()
        self._idle: dict[str, list[_Connection]] = {}
        self._busy: dict[str, int] = {}
        # The session's user key -> address (None: refused the webmail last time).
        self._addresses: dict[str, str | None] = {}
        self._greeters: ThreadPoolExecutor | None = None
        self._greeting = 0  # greetings being opened now (at most GREETERS)
        self.greetings = 0  # greetings begun since the pool was made

    # -- connections ------------------------------------------------------------------
    def _open(self, connected: socket.socket | None = None) -> IMAPClient:
        """A connection to the store, greeted and (off loopback) under TLS, not yet
        signed in: nothing in it depends on who will sign in. ``connected``: a socket
        already connecting to the store (``greet``), else one is opened now."""
        settings = self.settings
        try:
            if connected is not None:
                client = _StoreClient(connected, settings.host, settings.port, settings.timeout)
            else:
                client = IMAPClient(
                    settings.host,
                    port=settings.port,
                    ssl=False,
                    timeout=settings.timeout,
                )
        except BaseException as error:
            if connected is not None:
                connected.close()
            if isinstance(error, (*_BROKEN, IMAPClientError)):
                raise StoreUnavailable(f"the standby store cannot be reached: {error}") from None
            raise
        try:
            if not _IMAP_LOG.isEnabledFor(logging.DEBUG):
                # imapclient has imaplib log every line at debug level (hundreds of calls a
                # page, all dropped unless that logger is on).
                client._imap.debug = 0  # noqa: SLF001
            # Commands go as small writes (AUTHENTICATE's continuation among them): without
            # this, Nagle's algorithm holds each behind the last one's delayed ACK (40 ms).
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if settings.tls:
                client.starttls(ssl.create_default_context(cafile=settings.ca_file))
        except BaseException as error:
            _shut(client)
            if isinstance(error, (*_BROKEN, IMAPClientError)):
                raise StoreUnavailable(f"the standby store cannot be reached: {error}") from None
            raise
        return client

    def _connecting(self) -> socket.socket | None:
        """A socket to the store whose connection the kernel completes while the portal
        goes on (the store greets it a few milliseconds later, with nobody waiting): only
        for a store named by its address and spoken to in plain text (loopback), else
        None. Refused or unreachable shows when the request reads from it."""
        settings = self.settings
        if settings.tls:
            return None
        try:
            family = (
                socket.AF_INET6
                if ipaddress.ip_address(settings.host).version == 6
                else socket.AF_INET
            )
        except ValueError:
            return None  # a name: resolving it may wait, so a thread opens it (``greet``)
        try:
            connecting = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            return None  # no socket now (too many open files): the request opens its own
        connecting.setblocking(False)
        code = connecting.connect_ex((settings.host, settings.port))
        if code not in (0, errno.EINPROGRESS):
            connecting.close()
            return None  # opened (and its failure told) when the request needs it
        return connecting

    def _connect(self, address: str, greeting: Greeting | None = None) -> _Connection:
        """A new connection signed in as ``address``: the request's early greeting when
        there is one, else a connection opened now."""
        client = greeting.take(self.settings.timeout) if greeting is not None else None
        if client is None:
            client = self._open()
        try:
            client.plain_login(
                self.settings.master_user,
                self.settings.master_password,
                authorization_identity=address,
            )
        except BaseException as error:
            # A connection that cannot be used is closed here (a refused certificate or
            # sign-in left its socket open until the garbage collector found it).
            _shut(client)
            if isinstance(error, LoginError):
                raise StoreUnavailable(f"the standby store refused {address}: {error}") from None
            if isinstance(error, (*_BROKEN, IMAPClientError)):
                raise StoreUnavailable(f"the standby store cannot be reached: {error}") from None
            raise
        return _Connection(client, address, time.monotonic())

    def greet(self, user: str | None) -> Greeting | None:
        """Start opening a connection for a request of ``user`` (the session's user key)
        that will need a new one: the store greets it while the portal reads the
        session and checks access. On loopback the request's own thread only starts the
        connection (the store's greeting then waits in the socket); elsewhere a thread
        opens it and negotiates TLS in the background. None when ``user`` has an idle
        connection (or none is known to be needed)."""
        if user is None:
            return None
        address = self._addresses.get(user, "")
        with self._lock:
            if address is None or (address and self._idle.get(address)):
                return None
            # Never a queue: a greeting waits for no other (a flood of requests would
            # otherwise hold up everyone's first page behind its own), and a flood
            # opens no more than a few connections ahead at once.
            if self._greeting >= GREETERS:
                return None
            self._greeting += 1
        connecting = self._connecting()
        if connecting is not None:
            with self._lock:
                self.greetings += 1
            return Greeting(connected=connecting, opener=self._open, done=self._greeted)
        with self._lock:
            if self._greeters is None:
                self._greeters = ThreadPoolExecutor(
                    max_workers=GREETERS, thread_name_prefix="imap-greeting"
                )
            self.greetings += 1
            future = self._greeters.submit(self._open)
        future.add_done_callback(lambda _future: self._greeted())
        return Greeting(future)

    def _greeted(self) -> None:
        """A connection opened ahead is no longer being opened."""
        with self._lock:
            self._greeting -= 1

    def learn(self, user: str, address: str | None) -> None:
        """Remember whose mailbox ``user``'s requests open (for ``greet``); None: they
        were refused, so their requests open nothing ahead until one is let in."""
        self._addresses[user] = address.lower() if address else None

    @staticmethod
    def _close(connection: _Connection) -> None:
        try:
            connection.client.logout()
        except Exception:  # noqa: BLE001 - a connection being dropped may fail any way
            with contextlib.suppress(Exception):
                connection.client.shutdown()

    def _expire(self, now: float) -> list[_Connection]:
        """Take out the connections idle for too long (closed by the caller, unlocked)."""
        expired = []
        for address in list(self._idle):
            kept = []
            for connection in self._idle[address]:
                if now - connection.last_used > self.settings.idle_seconds:
                    expired.append(connection)
                else:
                    kept.append(connection)
            if kept:
                self._idle[address] = kept
            else:
                del self._idle[address]
        return expired

    def _count(self) -> int:
        return sum(len(v) for v in self._idle.values()) + sum(self._busy.values())

    def _take(self, address: str) -> tuple[_Connection | None, list[_Connection]]:
        """An idle connection of ``address`` (or None: open one) and those to close."""
        deadline = time.monotonic() + self.settings.timeout
        with self._lock:
            closing = self._expire(time.monotonic())
            while True:
                idle = self._idle.get(address)
                if idle:
                    connection = idle.pop()
                    if not idle:
                        del self._idle[address]
                    self._busy[address] = self._busy.get(address, 0) + 1
                    return connection, closing
                if self._busy.get(address, 0) < self.settings.per_person:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable("too many requests of one person at once")
                self._lock.wait(left)
            while self._count() >= self.settings.total and self._idle:
                oldest = min(
                    (c for group in self._idle.values() for c in group),
                    key=lambda c: c.last_used,
                )
                self._idle[oldest.address].remove(oldest)
                if not self._idle[oldest.address]:
                    del self._idle[oldest.address]
                closing.append(oldest)
            self._busy[address] = self._busy.get(address, 0) + 1
            return None, closing

    def _give_back(self, address: str, connection: _Connection | None) -> None:
        with self._lock:
            self._busy[address] -= 1
            if not self._busy[address]:
                del self._busy[address]
            if connection is not None:
                connection.last_used = time.monotonic()
                self._idle.setdefault(address, []).append(connection)
            self._lock.notify_all()

    def run(
        self, address: str, work: Callable[[Mailbox], T], greeting: Greeting | None = None
    ) -> T:
        """Run ``work`` on ``address``'s mailbox; a reused connection found dead is
        replaced and ``work`` run again on the new one (once). ``greeting``, the
        request's early connection, is used when a new connection is needed."""
        address = address.lower()
        connection, closing = self._take(address)
        for stale in closing:
            self._close(stale)
        reused = connection is not None
        try:
            while True:
                if connection is None:
                    connection = self._connect(address, greeting)
                    greeting = None
                try:
                    return work(Mailbox(connection))
                except _BROKEN as error:
                    self._close(connection)
                    connection = None
                    if reused:
                        reused = False
                        continue
                    raise StoreUnavailable(f"the standby store went away: {error}") from None
                except (BadRequest, IMAPClientError):
                    raise  # the request's own fault (a NO or BAD reply): the connection is fine
                except BaseException:
                    self._close(connection)
                    connection = None
                    raise
        finally:
            self._give_back(address, connection)

    @contextmanager
    def mailbox(self, address: str, greeting: Greeting | None = None) -> Iterator[Mailbox]:
        """A person's mailbox for a block (no retry: for work that must not run twice)."""
        address = address.lower()
        connection, closing = self._take(address)
        for stale in closing:
            self._close(stale)
        try:
            if connection is None:
                connection = self._connect(address, greeting)
            try:
                yield Mailbox(connection)
            except _BROKEN as error:
                self._close(connection)
                connection = None
                raise StoreUnavailable(f"the standby store went away: {error}") from None
        finally:
            self._give_back(address, connection)

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            closing = [c for group in self._idle.values() for c in group]
            self._idle.clear()
        for connection in closing:
            self._close(connection)

    def open_connections(self) -> int:
        """How many connections the pool holds now (idle and in use)."""
        with self._lock:
            return self._count()


def _shut(client: IMAPClient) -> None:
    """Drop a connection that will not be used, whatever state it is in."""
    with contextlib.suppress(Exception):
        client.shutdown()


class Greeting:
    """A connection being opened ahead of one request: a socket connecting (loopback)
    or a thread opening it. The request takes it when it needs a new connection; if it
    does not, ``discard`` closes it."""

    def __init__(
        self,
        future: Future[IMAPClient] | None = None,
        *,
        connected: socket.socket | None = None,
        opener: Callable[[socket.socket], IMAPClient] | None = None,
        done: Callable[[], None] | None = None,
    ) -> None:
        self._future = future
        self._connected = connected
        self._opener = opener
        self._done = done  # told once a connecting socket is taken or closed
        self._taken = False

    def _finished(self) -> None:
        if self._done is not None:
            done, self._done = self._done, None
            done()

    def take(self, timeout: float) -> IMAPClient | None:
        """The greeted connection (waiting for it), or None once it was taken; its
        failure, as opening one would."""
        if self._taken:
            return None
        self._taken = True
        if self._connected is not None and self._opener is not None:
            connected, self._connected = self._connected, None
            try:
                return self._opener(connected)
            finally:
                self._finished()
        if self._future is None or self._future.cancel():
            return None  # not begun: the caller opens one itself
        try:
            return self._future.result(timeout)
        except FutureTimeout:
            self._future.add_done_callback(_discarded)
            raise StoreUnavailable("the standby store did not greet in time") from None

    def discard(self) -> bool:
        """Not needed after all: not opened if not begun, else closed once open. False
        if it was used."""
        if self._taken:
            return False
        self._taken = True
        if self._connected is not None:
            self._connected.close()
            self._connected = None
            self._finished()
        elif self._future is not None and not self._future.cancel():
            self._future.add_done_callback(_discarded)
        return True


class _OnSocket(IMAP4WithTimeout):  # type: ignore[misc]
    """imaplib on a socket already connecting to the store."""

    def __init__(self, connected: socket.socket, host: str, port: int, timeout: float) -> None:
        self._connected: socket.socket | None = connected
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        connected, self._connected = self._connected, None
        if connected is None:
            raise OSError("the socket was used already")
        connected.settimeout(timeout if timeout is not None else self._timeout)
        return connected


class _StoreClient(IMAPClient):  # type: ignore[misc]
    """imapclient on a socket already connecting to the store (``StorePool.greet``)."""

    def __init__(self, connected: socket.socket, host: str, port: int, timeout: float) -> None:
        self._connected = connected
        super().__init__(host, port=port, ssl=False, timeout=timeout)

    def _create_IMAP4(self) -> imaplib.IMAP4:  # noqa: N802 - imapclient's name
        return _OnSocket(self._connected, self.host, self.port, self._timeout.connect)


_IMAP_LOG = logging.getLogger("imapclient.imaplib")


def _discarded(future: Future[IMAPClient]) -> None:
    if not future.cancelled() and future.exception() is None:
        client = future.result()
        with contextlib.suppress(Exception):
            client.logout()
        _shut(client)
