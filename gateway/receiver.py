"""Receiving: the aiosmtpd server and its handler.

A recipient is accepted only in a domain the roster holds, only when it routes nowhere
else, and only when the roster knows it or the primary says it exists (no open relay, no
backscatter). A message is answered 250 only after the commit that stores it (the group
committer), with its queue id in the reply.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax
from sqlalchemy import Engine
from sqlalchemy.orm import Session as DbSession

from gateway import headers, recipients
from gateway.commit import GroupCommitter
from gateway.limits import ClientLimits
from gateway.listener import HANDLER_NAMES, TrackedSMTP, names_for_aiosmtpd
from roster.logs import log_event
from roster.queue import Incoming, Recipient, domain_named, new_queue_id, resolve_recipient

log = logging.getLogger("continuity.gateway")

MAX_RECIPIENTS = 1000  # per message (RFC 5321 4.5.3.1.8 asks for at least 100)
LOOKUP_SECONDS = 10.0  # how long a roster answer about a recipient is reused
MAX_CALLOUTS = 8  # conversations with primaries at once, per gateway
_DOT_LINE = b".\r\n"  # after a CRLF, the end of data (RFC 5321 4.1.1.4), and nothing else


@dataclass
class ReceiverSettings:
    """What the receiver needs from the configuration."""

    hostname: str
    max_message_size: int = 50 * 1024 * 1024
    # Message data held in memory at once, over every connection ([gateway]
    # receive_memory_mb): a DATA past it gets 452 and the sender tries again later.
    receive_memory: int = 512 * 1024 * 1024
    # (domain name, address) -> None to accept, or the refusal: the callout to the primary
    ask_primary: Callable[[str, str], str | None] | None = None


@dataclass
class _Lookup:
    """A cached roster answer about one address."""

    at: float
    domain_known: bool
    recipient: Recipient | None
    verify: bool
    domain_name: str


@dataclass
class _State:
    """What the handler keeps on an envelope."""

    recipients: list[Recipient] = field(default_factory=list)


class GatewayHandler:
    """aiosmtpd hooks: checks at MAIL and RCPT, durable storage at DATA."""

    def __init__(
        self,
        engine: Engine,
        committer: GroupCommitter,
        settings: ReceiverSettings,
        limits: ClientLimits,
    ) -> None:
        self.engine = engine
        self.committer = committer
        self.settings = settings
        self.limits = limits
        self.memory = MemoryBudget(settings.receive_memory)
        self._lookups: dict[str, _Lookup] = {}
        # Callouts have threads of their own, apart from the roster lookups of every RCPT.
        self._callout_threads = ThreadPoolExecutor(MAX_CALLOUTS, thread_name_prefix="callout")
        self._callouts_running = 0

    def __dir__(self) -> list[str]:
        """Only what aiosmtpd looks for (``gateway.listener.names_for_aiosmtpd``)."""
        return names_for_aiosmtpd(self, HANDLER_NAMES)

    def close(self) -> None:
        """Let the callout threads go."""
        self._callout_threads.shutdown(wait=False, cancel_futures=True)

    # -- EHLO ------------------------------------------------------------------
    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Say PIPELINING too: aiosmtpd reads pipelined commands in order (RFC 2920)."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    # -- MAIL ------------------------------------------------------------------
    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Count the message against the client's rate, then take the sender."""
        bad = recipients.check_sender(address)
        if bad:
            return bad.reply
        refusal = self.limits.allow_message(_peer(session))
        if refusal:
            return refusal
        envelope.mail_from = address  # "<>" for the null sender (aiosmtpd's spelling)
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender ok"

    # -- RCPT ------------------------------------------------------------------
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Accept a recipient the roster holds or the primary confirms."""
        state = _state(envelope)
        if len(state.recipients) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        checked = recipients.check_address(address)
        if isinstance(checked, recipients.Refusal):
            log_event(
                log, logging.INFO, "rcpt_refused", client=_peer(session), reason=checked.reason
            )
            return checked.reply
        refusal = self.limits.allow_recipient(_peer(session))
        if refusal:
            return refusal
        lookup = await self._lookup(checked.domain, checked.address.lower())
        if not lookup.domain_known or lookup.recipient is None:
            log_event(log, logging.INFO, "rcpt_refused", client=_peer(session), reason="relay")
            return "550 5.7.1 Relaying denied: this server does not accept mail for that domain"
        if not lookup.recipient.known and lookup.verify:
            reply = await self._ask_primary(lookup.domain_name, checked.address)
            if reply is not None:
                return reply
        state.recipients.append(lookup.recipient)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient ok"

    async def _lookup(self, domain_name: str, address: str) -> _Lookup:
        now = time.monotonic()
        found = self._lookups.get(address)
        if found is not None and now - found.at < LOOKUP_SECONDS:
            return found
        found = await asyncio.get_running_loop().run_in_executor(
            None, self._read_roster, domain_name, address, now
        )
        if len(self._lookups) > 100_000:
            self._lookups.clear()
        self._lookups[address] = found
        return found

    def _read_roster(self, domain_name: str, address: str, now: float) -> _Lookup:
        with DbSession(self.engine) as db:
            domain = domain_named(db, domain_name)
            if domain is None:
                return _Lookup(now, False, None, False, domain_name)
            return _Lookup(
                now,
                True,
                resolve_recipient(db, domain, address),
                domain.verify_recipients,
                domain.name,
            )

    async def _ask_primary(self, domain_name: str, address: str) -> str | None:
        """The reply for a recipient the roster does not know: None when the primary
        confirms it, its refusal as our 550, or 450 while it cannot say."""
        ask = self.settings.ask_primary
        if ask is None or self._callouts_running >= MAX_CALLOUTS:
            # A primary that hangs must not take every thread the receiver has: past a
            # few conversations at once, the sender is asked to come back later.
            return "450 4.4.1 Recipient cannot be verified now: try again later"
        self._callouts_running += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._callout_threads, ask, domain_name, address
            )
        finally:
            self._callouts_running -= 1

    # -- DATA ------------------------------------------------------------------
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Check the message, add our Received line, store it durably, then say 250."""
        state = _state(envelope)
        content = headers.without_our_headers(
            headers.normalise_line_endings(envelope.original_content or b"")
        )
        refusal = headers.check_message(content, smtputf8=envelope.smtp_utf8)
        if refusal:
            log_event(
                log, logging.INFO, "message_refused", client=_peer(session), reply=refusal[:40]
            )
            return refusal
        queue_id = new_queue_id()
        peer = _peer(session)
        protocol = headers.protocol(
            esmtp=session.extended_smtp,
            tls=session.ssl is not None,
            authenticated=False,
            smtputf8=envelope.smtp_utf8,
        )
        received = headers.received_header(
            helo=session.host_name,
            client_ip=peer,
            our_name=self.settings.hostname,
            with_protocol=protocol,
            queue_id=queue_id,
            recipient=state.recipients[0].address if len(state.recipients) == 1 else None,
        )
        body = received + content
        message = Incoming(
            queue_id=queue_id,
            sender="" if envelope.mail_from in (None, "", "<>") else envelope.mail_from,
            body=body,
            recipients=list(state.recipients),
            message_id=headers.message_id(content) or "",
            client_address=peer,
            client_name="",
            helo=(session.host_name or "")[:255],
            protocol=protocol,
        )
        try:
            await self.committer.store(message)
        except Exception as error:  # nothing was stored: the sender must try again
            log_event(log, logging.ERROR, "queue_failed", client=peer, error=type(error).__name__)
            return "451 4.3.0 Could not store the message: try again later"
        log_event(
            log,
            logging.INFO,
            "received",
            queue_id=queue_id,
            client=peer,
            size=len(body),
            recipients=len(state.recipients),
            copies=sum(1 for r in state.recipients if r.mailbox),
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"


def _state(envelope: Envelope) -> _State:
    state = getattr(envelope, "continuity", None)
    if state is None:
        state = _State()
        envelope.continuity = state  # type: ignore[attr-defined]
    return state


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""


SPLIT_UP_TO = 1 << 20  # longest_line splits messages up to this size

# A path of the usual shape: <dot-atom@host name>, then spaces and parameters or
# nothing. Read here in one match; aiosmtpd hands every path to the email package's
# header parser and defines a class at each call, which cost about a tenth of receiving
# a message. Anything else (quoted or non-ASCII local parts, address literals, source
# routes, comments, "<>") still goes to aiosmtpd's reader, and for the usual shape both
# give the same address and the same rest (tests/test_smtp_paths.py compares them).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*)>[ \t]*+(?!\()"
)


class GatewaySMTP(TrackedSMTP):
    """aiosmtpd's server with the gateway's per-connection rules: a limit on concurrent
    connections per client, and source routes refused (aiosmtpd drops them silently)."""

    def __init__(self, handler: GatewayHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._gateway = handler
        self._refused_connection: str | None = None
        self._counted: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the client's connection; over its limit, the greeting becomes a 421.
        Once: STARTTLS calls this again for the same connection (counting it twice left
        a busy TLS sender with one connection fewer after each session)."""
        again = self.tls_started
        super().connection_made(transport)
        if again:
            return
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refusal = self._gateway.limits.open_connection(address)
        if refusal:
            self._refused_connection = refusal
        else:
            self._counted = address

    def connection_lost(self, error: Exception | None) -> None:
        """Give the connection back to the client's count."""
        if self._counted is not None:
            self._gateway.limits.close_connection(self._counted)
            self._counted = None
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refused_connection is not None:
            await self.push(self._refused_connection)
            self.transport.close()  # type: ignore[union-attr]
            return
        await super()._handle_client()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address in a MAIL or RCPT path and what follows it (aiosmtpd's reader
        for anything but the usual shape)."""
        plain = _PLAIN_PATH.match(arg)
        if plain is None or "=?" in arg:  # aiosmtpd decodes RFC 2047 encoded words
            return super()._getaddr(arg)
        address = plain.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[plain.end() :]

    async def smtp_RCPT(self, arg: str) -> None:
        """Refuse a source route before aiosmtpd strips it."""
        if arg and arg[:3].upper() == "TO:" and recipients.source_route(arg[3:]):
            await self.push("550 5.7.1 Source routes are not accepted")
            return
        await super().smtp_RCPT(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in blocks instead of line by line
        (aiosmtpd reads a 10 KB message in 147 reads, each a turn of its loop).

        The same rules: the message ends only at CRLF.CRLF (a bare LF or CR ends
        nothing), a line longer than ``line_length_limit`` gets 500 and more than
        ``data_size_limit`` bytes 552, each once the message has ended, without keeping
        what came; a leading dot is taken off every line; a client that goes away in
        the middle leaves nothing stored."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None  # noqa: S101 - aiosmtpd's own invariant
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        memory: MemoryBudget | None = getattr(self.event_handler, "memory", None)
        try:
            sent = await read_message(self._reader, self.data_size_limit, memory)
        except (asyncio.CancelledError, asyncio.IncompleteReadError):
            # The connection went away during DATA: nothing of it is kept.
            log.info("Connection lost during DATA")
            self._writer.close()
            raise asyncio.CancelledError from None
        except NoRoom:
            await self.push(NoRoom.REPLY)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        if sent is None:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        try:
            if longest_line(sent) > self.line_length_limit:
                await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            content = unstuffed(sent)
            self.envelope.content = content
            self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        finally:
            if memory is not None:
                memory.give(len(sent))
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)


class MemoryBudget:
    """The message data the receiving server holds at once, over all its connections:
    without a bound, clients sending large messages side by side could take the
    process's memory (each message is held whole until it is committed, and copied a
    few times on the way: the process takes up to about five times this). Used from the
    server's event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int, mine: int = 0) -> bool:
        """Hold ``size`` more bytes of a message that holds ``mine`` already, if there is
        room, or if nothing else is held: a message alone is always taken (up to the
        size limit), so that a limit below the largest message refuses none for good."""
        if self.used + size > self.limit and self.used > mine:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        """Let ``size`` bytes go."""
        self.used -= size


class NoRoom(Exception):  # noqa: N818 - a reply, not an error of ours
    """The message came whole but was not kept: the gateway held too much data at once."""

    REPLY = "452 4.3.1 Insufficient system storage: try again later"


async def read_message(
    reader: asyncio.StreamReader, size_limit: int | None, memory: MemoryBudget | None = None
) -> bytes | None:
    """What the client sent after DATA's 354, up to and with the end of data: each line
    with its CRLF and its dots as sent, then ".\r\n". None when more than
    ``size_limit`` bytes came (read to its end all the same, keeping nothing). With
    ``memory``, what is kept is taken from it (the caller gives back the length of what
    it got); NoRoom, once the data has ended, when it had no room (nothing kept).

    The stream is read in blocks up to each ".\r\n" (which cannot overlap itself, so
    every one is met in turn); one ends the data when the two bytes before its dot are
    CRLF, counting DATA's own CRLF before the first line ("." alone ends an empty
    message). A block read without one (``readuntil``'s limit) leaves its last two
    bytes in the stream, to be read with what follows."""
    sent = bytearray()
    size = 0
    too_much = no_room = False
    before = b"\r\n"  # the two bytes before the stream's next one
    try:
        while True:
            try:
                block = await reader.readuntil(_DOT_LINE)
                dot = True
            except asyncio.LimitOverrunError as error:
                block = await reader.read(error.consumed)
                if not block:
                    raise asyncio.IncompleteReadError(b"", None) from None
                dot = False
            size += len(block)
            ended = dot and (before + block)[-5:-3] == b"\r\n"
            before = (before + block[-2:])[-2:]
            if size_limit and size - len(_DOT_LINE) > size_limit:
                too_much = True
                _let_go(sent, memory)  # nothing more is kept: memory stays flat
            elif not (too_much or no_room):
                if memory is None or memory.take(len(block), len(sent)):
                    sent += block
                else:
                    no_room = True
                    _let_go(sent, memory)
            if ended:
                break
    except BaseException:
        _let_go(sent, memory)
        raise
    if too_much:
        return None
    if no_room:
        raise NoRoom
    return bytes(sent)


def _let_go(sent: bytearray, memory: MemoryBudget | None) -> None:
    """Drop what was kept of a message, and give its room back."""
    if memory is not None:
        memory.give(len(sent))
    sent.clear()


def unstuffed(sent: bytes) -> bytes:
    """The message in what ``read_message`` returned: without the end of data, and one
    leading dot taken off every line (RFC 5321 4.5.2)."""
    return (b"\r\n" + sent[: len(sent) - 3]).replace(b"\r\n.", b"\r\n")[2:]


def longest_line(content: bytes) -> int:
    """The longest line of ``content`` with its CRLF, as aiosmtpd counts them (a last
    line without CRLF, without). Up to ``SPLIT_UP_TO`` bytes with one split (a loop over
    the lines of every message was 2.6% of the receiving thread's time); a bigger
    message line by line, so that it is not copied whole into small pieces."""
    if len(content) <= SPLIT_UP_TO:
        *lines, last = content.split(b"\r\n")
        return max(max(map(len, lines), default=-2) + 2, len(last))
    longest = 0
    start = 0
    while True:
        end = content.find(b"\r\n", start)
        if end < 0:
            return max(longest, len(content) - start)
        longest = max(longest, end + 2 - start)
        start = end + 2
