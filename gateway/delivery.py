"""Delivery over SMTP: to a domain's primary server, or through the outbound relay.

One connection carries a batch of messages. Where the server offers PIPELINING, MAIL,
every RCPT and DATA go out in one write and their replies are read in order (RFC 2920);
where it offers XFORWARD, the primary learns the original client (address, name, HELO,
protocol) so that its own SPF and blocklist checks still see the real sender. Each
message's outcome is handed to ``record`` before the next message goes out on the same
connection, so a crash can only repeat the message in flight.
"""

from __future__ import annotations

import contextlib
import functools
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from roster.addresses import printable
from roster.config import Config
from roster.primary_address import (
    PrimaryAddressRefused,
    PrimaryUnresolved,
    check_primary_address,
    resolve_primary,
)
from roster.queue import Delivery

# A server's reply as (code, text); code 0 when the connection failed before a reply.
Reply = tuple[int, str]

CONNECT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 300.0  # RFC 5321 4.5.3.2: at least 5 minutes for most replies


@dataclass(frozen=True)
class Target:
    """Where and how to connect."""

    host: str  # the name, for TLS and messages
    address: str  # the address actually connected to (checked by the caller)
    port: int
    tls: str = "starttls"  # starttls (opportunistic unless required), tls, none
    tls_context: ssl.SSLContext | None = None
    require_tls: bool = False
    username: str | None = None
    password: str | None = None
    helo: str = "localhost"


@dataclass(frozen=True)
class Result:
    """What became of one message's recipients in one attempt."""

    accepted: list[int]  # recipient row ids
    refused: dict[int, Reply]  # recipient row id -> reply (4xx or 5xx)


class SessionFailed(Exception):
    """The whole session failed (no connection, greeting, EHLO, TLS, MAIL): nothing of the
    remaining messages was attempted."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply[0]} {reply[1]}")
        self.reply = reply

    @property
    def said(self) -> str:
        """The reply as a check of the primary records it (no code when none came)."""
        return f"{self.reply[0] or ''} {self.reply[1]}".strip()


RESOLVE_TIMEOUT = 10.0


@functools.lru_cache(maxsize=16)
def tls_context(ca_file: str | None, *, verify: bool) -> ssl.SSLContext:
    """A client context checking certificates against ``ca_file`` (or the system's
    authorities); with ``verify`` off (an admin's choice per domain) it checks nothing.
    Made once and shared: loading the system's authorities takes tens of milliseconds,
    which every delivery batch paid."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def primary_target(
    config: Config,
    host: str,
    port: int,
    tls: str,
    verify: bool,
    *,
    helo: str,
    ca_file: str | None,
) -> Target:
    """Where to reach a domain's primary: its name resolved, and the first address that
    is allowed ([gateway] allow_local_primary, deny_primary_networks); SessionFailed when
    none resolves or none is allowed."""
    try:
        addresses = resolve_primary(host, port, RESOLVE_TIMEOUT)
    except PrimaryUnresolved as error:
        raise SessionFailed((0, str(error))) from error
    refusal: PrimaryAddressRefused | None = None
    for address in addresses:
        try:
            check_primary_address(config, address, host)
        except PrimaryAddressRefused as error:
            refusal = refusal or error
            continue
        return Target(
            host=host,
            address=str(address),
            port=port,
            tls=tls,
            tls_context=tls_context(ca_file, verify=verify),
            require_tls=tls == "starttls" and verify,
            helo=helo,
        )
    raise SessionFailed((0, f"refused: {refusal or host}"))


def _text(reply: tuple[int, bytes | str]) -> Reply:
    code, message = reply
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return code, printable(" ".join(message.split()), 500)


def open_session(target: Target, timeout: float = CONNECT_TIMEOUT) -> smtplib.SMTP:
    """Connect, greet, secure and (for the relay) log in; raises SessionFailed, with the
    connection closed whatever broke (a TLS handshake that timed out left it open)."""
    client: smtplib.SMTP | None = None
    try:
        if target.tls == "tls":
            client = smtplib.SMTP_SSL(
                local_hostname=target.helo,
                timeout=timeout,
                context=target.tls_context or ssl.create_default_context(),
            )
            client._host = target.host  # type: ignore[attr-defined]  # SNI and the cert check
        else:
            client = smtplib.SMTP(local_hostname=target.helo, timeout=timeout)
            client._host = target.host  # type: ignore[attr-defined]
        code, message = client.connect(target.address, target.port)
        if code != 220:
            client.close()
            raise SessionFailed(_text((code, message)))
        # Deliveries wait as long as RFC 5321 asks; a monitor's check keeps its short one.
        if client.sock is not None:
            client.sock.settimeout(COMMAND_TIMEOUT if timeout == CONNECT_TIMEOUT else timeout)
        code, message = client.ehlo()
        if code != 250:
            code, message = client.helo()
            if code != 250:
                client.close()
                raise SessionFailed(_text((code, message)))
        if target.tls == "starttls":
            if client.has_extn("starttls"):
                code, message = client.starttls(
                    context=target.tls_context or ssl.create_default_context()
                )
                if code != 220:
                    client.close()
                    raise SessionFailed(_text((code, message)))
                client.ehlo()
            elif target.require_tls:
                client.close()
                raise SessionFailed((0, "the server does not offer STARTTLS"))
        if target.username:
            client.login(target.username, target.password or "")
        return client
    except SessionFailed:
        raise
    except smtplib.SMTPResponseException as error:
        _close(client)
        raise SessionFailed(_text((error.smtp_code, error.smtp_error))) from error
    except ssl.SSLError as error:
        _close(client)
        raise SessionFailed((0, f"TLS failed: {printable(str(error), 200)}")) from error
    except (OSError, smtplib.SMTPException) as error:
        _close(client)
        raise SessionFailed((0, _failure(error))) from error


def _close(client: smtplib.SMTP | None) -> None:
    if client is not None:
        client.close()


def _failure(error: BaseException) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return "connection closed by the server"
    return printable(type(error).__name__ + ": " + str(error), 200)


def xforward(client: smtplib.SMTP, delivery: Delivery) -> None:
    """Tell a primary that offers XFORWARD who the original client was."""
    if not client.has_extn("xforward"):
        return
    offered = {name.upper() for name in client.esmtp_features.get("xforward", "").split()}
    fields = {
        "ADDR": delivery.client_address,
        "NAME": delivery.client_name or "[UNAVAILABLE]",
        "HELO": delivery.helo,
        "PROTO": "ESMTP" if delivery.protocol.upper().startswith("ESMTP") else "SMTP",
    }
    words = [
        f"{name}={_xtext(value)}" for name, value in fields.items() if value and name in offered
    ]
    if words:
        try:
            code, message = client.docmd("XFORWARD", " ".join(words))
        except (OSError, smtplib.SMTPException) as error:
            raise SessionFailed((0, _failure(error))) from error
        if code != 250:
            raise SessionFailed(_text((code, message)))


def _reset(client: smtplib.SMTP) -> None:
    """RSET after a refused transaction; SessionFailed when the session broke."""
    try:
        code, message = client.rset()
    except (OSError, smtplib.SMTPException) as error:
        raise SessionFailed((0, _failure(error))) from error
    if code != 250:
        raise SessionFailed(_text((code, message)))


def _xtext(value: str) -> str:
    """XFORWARD values are xtext: printable ASCII without '+' and '=' (RFC 3461 4)."""
    return "".join(
        ch if 33 <= ord(ch) <= 126 and ch not in "+=" else f"+{ord(ch):02X}"
        for ch in value[:255]
        if ord(ch) < 128
    )


def send_one(client: smtplib.SMTP, delivery: Delivery) -> Result:
    """One transaction for ``delivery``: MAIL, RCPT for each recipient, DATA.

    A refusal of this message (at MAIL, RCPT or DATA) is its result, for its recipients
    only; SessionFailed is raised only when the session itself broke (421, a lost
    connection), which the caller counts against the server for every message left.
    """
    sender = delivery.sender
    addresses = [address for _, address in delivery.recipients]
    rows = [row for row, _ in delivery.recipients]
    international = not all(a.isascii() for a in [sender, *addresses])
    if international and not client.has_extn("smtputf8"):
        reply = (553, "5.6.7 the receiving server does not take international addresses")
        return Result([], dict.fromkeys(rows, reply))
    options = []
    if client.has_extn("size"):
        options.append(f"SIZE={len(delivery.body)}")
    if international:
        options.append("SMTPUTF8")
    if client.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")
    mail = f"MAIL FROM:<{sender}>" + "".join(" " + o for o in options)
    rcpts = [f"RCPT TO:<{address}>" for address in addresses]
    for line in [mail, *rcpts]:
        if any(c in line for c in "\r\n\0"):
            # Never from the receiver, which refuses such addresses; a hand-made row.
            return Result([], dict.fromkeys(rows, (554, "5.1.3 an address holds a line break")))
    try:
        if client.has_extn("pipelining"):
            client.send(("\r\n".join([mail, *rcpts]) + "\r\n").encode("utf-8"))
            mail_reply = _text(client.getreply())
            rcpt_replies = [_text(client.getreply()) for _ in rcpts]
        else:
            client.send((mail + "\r\n").encode("utf-8"))
            mail_reply = _text(client.getreply())
            rcpt_replies = []
            if mail_reply[0] == 250:
                for line in rcpts:
                    client.send((line + "\r\n").encode("utf-8"))
                    rcpt_replies.append(_text(client.getreply()))
        if mail_reply[0] == 421:
            raise SessionFailed(mail_reply)
        if mail_reply[0] != 250:
            # The server refused this sender (too large, its own policy): this message's
            # result, not the session's; the next message may well be taken.
            _reset(client)
            return Result([], dict.fromkeys(rows, mail_reply))
        accepted = [
            row for row, reply in zip(rows, rcpt_replies, strict=True) if reply[0] in (250, 251)
        ]
        refused = {
            row: reply
            for row, reply in zip(rows, rcpt_replies, strict=True)
            if reply[0] not in (250, 251)
        }
        if not accepted:
            _reset(client)
            return Result([], refused)
        code, message = client.data(delivery.body)
    except smtplib.SMTPDataError as error:
        reply = _text((error.smtp_code, error.smtp_error))
        if reply[0] == 421:
            raise SessionFailed(reply) from error
        # DATA itself refused: the transaction is still open at the server (RFC 5321
        # 4.1.4), and the next message's MAIL would meet "503 nested MAIL command". The
        # refusal is this message's result even when the server closed after it: the
        # next message meets the broken session.
        with contextlib.suppress(SessionFailed):
            _reset(client)
        return Result([], dict.fromkeys(accepted, reply) | refused)
    except smtplib.SMTPResponseException as error:
        raise SessionFailed(_text((error.smtp_code, error.smtp_error))) from error
    except (OSError, smtplib.SMTPException) as error:
        raise SessionFailed((0, _failure(error))) from error
    if code == 421:
        raise SessionFailed(_text((code, message)))
    if code != 250:
        reply = _text((code, message))
        return Result([], dict.fromkeys(accepted, reply) | refused)
    return Result(accepted, refused)


def deliver_batch(
    target: Target,
    deliveries: Sequence[Delivery],
    record: Callable[[Delivery, Result | SessionFailed], None],
    *,
    forward_client: bool = True,
    still_ours: Callable[[Delivery], bool] | None = None,
) -> None:
    """Deliver ``deliveries`` over one connection; ``record`` hears each outcome before
    the next message is sent. A session failure is recorded for every message not done.
    ``still_ours`` is asked before each message (renewing its claim): a message it says
    no to is left to whoever holds it now."""
    try:
        client = open_session(target)
    except SessionFailed as failed:
        for delivery in deliveries:
            record(delivery, failed)
        return
    done = 0
    try:
        for delivery in deliveries:
            done += 1
            if still_ours is not None and not still_ours(delivery):
                continue  # its claim lapsed and another runner has it now
            try:
                if forward_client:
                    xforward(client, delivery)
                result = send_one(client, delivery)
            except SessionFailed:
                done -= 1
                raise
            record(delivery, result)
            delivery.body = b""  # sent and recorded: let it go
    except SessionFailed as failed:
        for delivery in deliveries[done:]:
            record(delivery, failed)
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()
