"""The standby store's LMTP client: copies of a message into covered people's mailboxes.

A few LMTP connections to Dovecot are kept open and shared by the gateway's worker
threads, one thread per connection at a time. One transaction carries a message to
several mailboxes: LMTP answers the end of DATA once per accepted recipient (RFC 2033
4.2), and those replies are read here one by one, where ``smtplib.LMTP`` would read a
single one. Each address gets its own outcome: copied, a temporary failure (4xx, the
store unreachable or the connection lost: try again later) or a permanent one (5xx,
such as "user doesn't exist").

Only checked values reach the LMTP command lines: mailbox addresses must be able to
name a standby mailbox (``gateway.standby_users.is_mailbox_address``), and a sender that
is not a plain ASCII address is sent as the null sender.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import smtplib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.standby_users import is_mailbox_address
from roster.addresses import printable
from roster.logs import log_event

log = logging.getLogger("continuity.gateway")

DEFAULT_TIMEOUT = 30.0
DEFAULT_IDLE_SECONDS = 60.0
"""A connection unused for longer is closed rather than reused (Dovecot drops idle
LMTP clients after a few minutes; this stays well inside that)."""
MAX_RECIPIENTS = 50
"""Mailboxes per transaction; a message to more is sent in several."""

_SENDER = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}")
_LEADING_DOT = re.compile(rb"(?m)^\.")


class CopyStatus(enum.Enum):
    """What became of one copy."""

    COPIED = "copied"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class CopyResult:
    """The outcome of one copy: its status, the LMTP reply code (None when the store
    gave none: unreachable, connection lost, address refused here) and the reply text."""

    address: str
    status: CopyStatus
    code: int | None
    reply: str

    @property
    def copied(self) -> bool:
        """The message is in the mailbox."""
        return self.status is CopyStatus.COPIED

    @property
    def temporary(self) -> bool:
        """Not copied this time; trying again later may work."""
        return self.status is CopyStatus.TEMPORARY

    @property
    def permanent(self) -> bool:
        """Not copied, and trying again will not help."""
        return self.status is CopyStatus.PERMANENT


def _status(code: int) -> CopyStatus:
    if 200 <= code < 300:
        return CopyStatus.COPIED
    if 500 <= code < 600:
        return CopyStatus.PERMANENT
    return CopyStatus.TEMPORARY


def _text(reply: bytes) -> str:
    """A reply's text on one line, printable only: safe to store, log and show."""
    return printable(reply.decode("utf-8", errors="replace").replace("\n", " "), 500)


class _Lost(Exception):
    """The connection failed or the server broke the protocol; it cannot be reused."""

    def __init__(self, reason: str, *, before_data: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.before_data = before_data


@dataclass
class _Connection:
    lmtp: smtplib.LMTP
    last_used: float


class StandbyStore:
    """A bounded pool of LMTP connections to the standby store, safe to share between
    threads. ``deliver`` copies one message into several mailboxes."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connections: int = 8,
        timeout: float = DEFAULT_TIMEOUT,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.idle_seconds = idle_seconds
        # Named once: smtplib would otherwise look the host's FQDN up (DNS) per connection.
        self._local_hostname = socket.gethostname() or "localhost"
        self._slots = threading.BoundedSemaphore(connections)
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._closed = False

    # -- public ----------------------------------------------------------------------
    def deliver(
        self, message: bytes, addresses: Sequence[str], *, sender: str = ""
    ) -> dict[str, CopyResult]:
        """Copy ``message`` into the mailbox of each of ``addresses``; one result per
        distinct address. ``sender`` is the envelope sender of the original message."""
        results: dict[str, CopyResult] = {}
        wanted: list[str] = []
        for address in dict.fromkeys(addresses):
            if is_mailbox_address(address):
                wanted.append(address)
            else:
                results[address] = CopyResult(
                    address, CopyStatus.PERMANENT, None, "not a standby mailbox address"
                )
        envelope_sender = sender if _SENDER.fullmatch(sender) else ""
        for start in range(0, len(wanted), MAX_RECIPIENTS):
            batch = wanted[start : start + MAX_RECIPIENTS]
            results.update(self._deliver_batch(message, batch, envelope_sender))
        return results

    def close(self) -> None:
        """Close the idle connections; connections in use close when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            _quit(connection.lmtp)

    # -- the pool --------------------------------------------------------------------
    def _take(self) -> _Connection | None:
        """An idle connection young enough to reuse, or None."""
        now = time.monotonic()
        stale: list[_Connection] = []
        taken = None
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if now - connection.last_used <= self.idle_seconds:
                    taken = connection
                    break
                stale.append(connection)
        for connection in stale:
            _quit(connection.lmtp)
        return taken

    def _give_back(self, connection: _Connection) -> None:
        connection.last_used = time.monotonic()
        with self._lock:
            if not self._closed:
                self._idle.append(connection)
                return
        _quit(connection.lmtp)

    def _connect(self) -> _Connection:
        lmtp = smtplib.LMTP(local_hostname=self._local_hostname, timeout=self.timeout)
        try:
            code, reply = lmtp.connect(self.host, self.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            code, reply = lmtp.ehlo()
            if code != 250:
                raise smtplib.SMTPResponseException(code, reply)
        except BaseException:
            lmtp.close()
            raise
        return _Connection(lmtp, time.monotonic())

    def _deliver_batch(
        self, message: bytes, addresses: list[str], sender: str
    ) -> dict[str, CopyResult]:
        with self._slots:
            connection = self._take()
            # A reused connection may have been dropped by the server while idle: when it
            # fails before any of the message was sent, a new one tries again, once.
            for reused in (True, False) if connection else (False,):
                if connection is None:
                    try:
                        connection = self._connect()
                    except (OSError, smtplib.SMTPException) as error:
                        reason = f"standby store unreachable: {_describe(error)}"
                        log_event(
                            log,
                            logging.WARNING,
                            "standby_unreachable",
                            host=self.host,
                            port=self.port,
                            error=_describe(error),
                        )
                        return _all(addresses, CopyStatus.TEMPORARY, None, reason)
                results: dict[str, CopyResult] = {}
                try:
                    _transaction(connection.lmtp, message, addresses, sender, results)
                except _Lost as lost:
                    _quit(connection.lmtp)
                    connection = None
                    if reused and lost.before_data:
                        continue
                    # Copies already answered keep their outcome: one that was copied
                    # must not be sent again.
                    missing = [address for address in addresses if address not in results]
                    results.update(_all(missing, CopyStatus.TEMPORARY, None, lost.reason))
                    return results
                self._give_back(connection)
                return results
        raise AssertionError("unreachable")  # pragma: no cover


# -- one LMTP transaction ----------------------------------------------------------------
@contextlib.contextmanager
def _or_lost(*, before_data: bool) -> Iterator[None]:
    """Talking to the store: a failed connection becomes _Lost."""
    try:
        yield
    except (OSError, smtplib.SMTPException) as error:
        raise _Lost(f"connection lost: {_describe(error)}", before_data=before_data) from error


def _command(lmtp: smtplib.LMTP, line: str, *, before_data: bool) -> tuple[int, bytes]:
    """Send one command line and read its reply; _Lost if the connection fails."""
    with _or_lost(before_data=before_data):
        lmtp.putcmd(line)
    return _reply(lmtp, before_data=before_data)


def _transaction(
    lmtp: smtplib.LMTP,
    message: bytes,
    addresses: list[str],
    sender: str,
    results: dict[str, CopyResult],
) -> None:
    """MAIL, one RCPT per address, DATA and one reply per accepted address, each
    outcome put in ``results`` as soon as it is known. To a store that offers
    PIPELINING (Dovecot does), MAIL, the RCPTs and DATA go in one write and their
    replies are read after it (RFC 2920): a copy takes one round trip before its data
    instead of three, and the store and the gateway wake half as often for it."""
    if lmtp.has_extn("pipelining"):
        _pipelined(lmtp, message, addresses, sender, results)
        return
    code, reply = _command(lmtp, f"MAIL FROM:<{sender}>", before_data=True)
    if code != 250:
        _command(lmtp, "RSET", before_data=True)
        results.update(_refused(addresses, "MAIL", code, reply))
        return
    accepted: list[str] = []
    for address in addresses:
        code, reply = _command(lmtp, f"RCPT TO:<{address}>", before_data=True)
        _rcpt_reply(address, code, reply, accepted, results)
    if not accepted:
        _command(lmtp, "RSET", before_data=True)
        return
    code, reply = _command(lmtp, "DATA", before_data=True)
    if code != 354:
        _command(lmtp, "RSET", before_data=True)
        results.update(_refused(accepted, "DATA", code, reply))
        return
    _send_data(lmtp, message, accepted, results)


def _pipelined(
    lmtp: smtplib.LMTP,
    message: bytes,
    addresses: list[str],
    sender: str,
    results: dict[str, CopyResult],
) -> None:
    """``_transaction`` with MAIL, RCPT and DATA sent together."""
    lines = [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{a}>" for a in addresses), "DATA"]
    with _or_lost(before_data=True):
        lmtp.send("".join(f"{line}\r\n" for line in lines))
    replies = [_reply(lmtp, before_data=True) for _ in lines]
    (mail_code, mail_reply), (data_code, data_reply) = replies[0], replies[-1]
    accepted: list[str] = []
    if mail_code != 250:  # the RCPT replies then only say there is no sender
        results.update(_refused(addresses, "MAIL", mail_code, mail_reply))
    else:
        for address, (code, reply) in zip(addresses, replies[1:-1], strict=True):
            _rcpt_reply(address, code, reply, accepted, results)
    if data_code == 354 and not accepted:
        # Data invited for nobody: what the store does with it is unknown; start afresh.
        raise _Lost(f"DATA {data_code} without a recipient", before_data=False)
    if data_code != 354:
        _command(lmtp, "RSET", before_data=True)
        results.update(_refused(accepted, "DATA", data_code, data_reply))
        return
    _send_data(lmtp, message, accepted, results)


def _rcpt_reply(
    address: str, code: int, reply: bytes, accepted: list[str], results: dict[str, CopyResult]
) -> None:
    """An address the store took joins ``accepted``; a refused one gets its result."""
    if 200 <= code < 300:
        accepted.append(address)
    else:
        results[address] = CopyResult(address, _status(code), code, f"{code} {_text(reply)}")


def _refused(addresses: Sequence[str], step: str, code: int, reply: bytes) -> dict[str, CopyResult]:
    """The store's refusal at ``step`` (MAIL or DATA), as the result of each address."""
    return _all(addresses, _status(code), code, f"{step}: {code} {_text(reply)}")


def _reply(lmtp: smtplib.LMTP, *, before_data: bool) -> tuple[int, bytes]:
    """Read one reply; _Lost if the connection fails, or the store is closing it (421:
    idle, shutting down)."""
    with _or_lost(before_data=before_data):
        code, reply = lmtp.getreply()
    if code == 421 or code < 0:
        raise _Lost(f"{code} {_text(reply)}", before_data=before_data)
    return code, reply


def _send_data(
    lmtp: smtplib.LMTP, message: bytes, accepted: list[str], results: dict[str, CopyResult]
) -> None:
    """The message, dot-stuffed, then one reply for each accepted address."""
    body = _LEADING_DOT.sub(b"..", message)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    with _or_lost(before_data=False):
        lmtp.send(body + b".\r\n")
    for address in accepted:
        with _or_lost(before_data=False):
            code, reply = lmtp.getreply()
        if code < 0:
            raise _Lost(f"unreadable reply: {_text(reply)}", before_data=False)
        results[address] = CopyResult(address, _status(code), code, f"{code} {_text(reply)}")


def _all(
    addresses: Sequence[str], status: CopyStatus, code: int | None, reply: str
) -> dict[str, CopyResult]:
    return {address: CopyResult(address, status, code, reply) for address in addresses}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _quit(lmtp: smtplib.LMTP) -> None:
    """Say QUIT if the connection still answers, and close it either way."""
    with contextlib.suppress(OSError, smtplib.SMTPException):
        if lmtp.sock is not None:
            lmtp.sock.settimeout(2)
            lmtp.quit()
    lmtp.close()
