"""Sending what a person wrote: through ``[outbound] relay``, DKIM-signed, and counted.

The relay's answers keep three cases apart, because the person acts on each differently:
``SendResult`` when the relay took the message for some recipients (with every refusal,
recipient by recipient); ``RelayDown`` when nothing was sent because the relay cannot be
used now (no connection, a timeout, a 4xx: try again later, the draft is kept);
``SenderRefused`` and ``MessageRefused`` when the relay said no for good (a 5xx at MAIL
or after DATA). Every message sent is audited, without its content, and the audit rows
are what the hourly sending limit counts.
"""

from __future__ import annotations

import ipaddress
import logging
import smtplib
import socket
import ssl
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from urllib.parse import urlsplit

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from portal.access import Principal
from roster.addresses import printable
from roster.config import Config
from roster.dkim import DkimError, sign
from roster.domains import RosterError, audit_row, parse_primary
from roster.logs import log_event
from roster.models import AuditEvent, Person, utcnow

log = logging.getLogger("continuity.portal.webmail.sending")

TIMEOUT = 15.0
"""Seconds the relay has for each step (connecting, each reply)."""
RECIPIENTS_PER_HOUR = 200
"""The default of ``[webmail] recipients_per_hour``."""
SENT_ACTION = "webmail_sent"

Reply = tuple[int, str]
"""A relay's answer (code, text); code 0 when there was none (no connection, a timeout)."""


@dataclass
class SendResult:
    """The relay took the message for ``accepted``; ``refused`` maps each other
    recipient to the relay's answer. Nothing was sent when ``accepted`` is empty."""

    accepted: list[str]
    refused: dict[str, Reply]


class NotSent(Exception):
    """Nothing was sent; ``reply`` is what the relay said (code 0: it said nothing)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply[0]} {reply[1]}" if reply[0] else reply[1])
        self.reply = reply


class RelayDown(NotSent):
    """The relay cannot be used now: unreachable, timed out, or a temporary (4xx) answer
    at the greeting, at MAIL, for every recipient or after DATA."""


class SenderRefused(NotSent):
    """The relay refused the sender for good (5xx at MAIL)."""


class MessageRefused(NotSent):
    """The relay refused the message itself for good (5xx after DATA)."""


def recipients_per_hour(config: Config) -> int:
    """How many recipients one person may send to in an hour."""
    return int(config.webmail.get("recipients_per_hour", RECIPIENTS_PER_HOUR))


def recipients_sent_last_hour(session: Session, person_id: int) -> int:
    """The recipients of everything ``person_id`` sent in the last hour (audit rows)."""
    since = utcnow() - timedelta(hours=1)
    rows = session.scalars(
        select(AuditEvent.after).where(
            AuditEvent.person_id == person_id,
            AuditEvent.action == SENT_ACTION,
            AuditEvent.at > since,
        )
    )
    total = 0
    for after in rows:
        count = (after or {}).get("recipients")
        if isinstance(count, int) and not isinstance(count, bool):
            total += max(count, 0)
    return total


def record_sent(
    session: Session, person: Person | Principal, recipients: int, client: str | None
) -> int:
    """Audit one message sent: who, when, from where and to how many recipients, never
    to whom or what; in the caller's transaction. The count is what the hourly limit
    adds up. The audit row's id."""
    address = person.mail if isinstance(person, Person) else person.address
    row = audit_row(
        address,
        SENT_ACTION,
        domain_id=person.domain_id,
        person_id=person.id,
        after={"recipients": recipients},
        client=client,
    )
    written = session.execute(insert(AuditEvent).values(**row).returning(AuditEvent.id))
    return int(written.scalar_one())


def reserve_sending(
    session: Session, person: Person, recipients: int, client: str | None, limit: int
) -> tuple[int, int | None]:
    """Check the hourly limit and count this message in one step, before the relay is
    asked: two sends of one person at the same moment would otherwise both pass the
    check and both count afterwards. In the caller's write transaction, with the
    person's row locked (PostgreSQL; SQLite's write lock does the same). The recipients
    already sent to in the last hour, and the reservation's id (an audit row that
    ``settle_sending`` corrects), or None when the message would pass the limit."""
    session.execute(select(Person.id).where(Person.id == person.id).with_for_update())
    already = recipients_sent_last_hour(session, person.id)
    if already + recipients > limit:
        return already, None
    return already, record_sent(session, person, recipients, client)


def settle_sending(session: Session, reservation: int, accepted: int) -> None:
    """After the relay's answer: the reservation says how many recipients it took, or,
    when it took none (or nothing could be sent), goes: nothing was sent."""
    if accepted:
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.id == reservation)
            .values(after={"recipients": accepted})
        )
    else:
        session.execute(delete(AuditEvent).where(AuditEvent.id == reservation))


def message_bytes(message: EmailMessage) -> bytes:
    """The message as it goes on the wire (CRLF lines, headers folded for SMTP)."""
    return message.as_bytes(policy=SMTP_POLICY)


def _loopback(host: str) -> bool:
    """True for a relay on this host, where mail and password never cross a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _helo_name(config: Config) -> str:
    """The name this host greets the relay with: [gateway] hostname, else the portal's."""
    name = config.gateway.get("hostname") or urlsplit(config.portal.get("base_url", "")).hostname
    return str(name or socket.getfqdn())


def _text(code: int, message: bytes | str) -> Reply:
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return code, printable(" ".join(message.split()), 300)


def _failure(error: BaseException) -> Reply:
    """A failure without a reply, in words for the log and the person."""
    # smtplib turns a timeout while it waits for a reply into SMTPServerDisconnected.
    if isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError):
        return 0, "the relay did not answer in time"
    if isinstance(error, ConnectionRefusedError):
        return 0, "the relay refused the connection"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return 0, "the relay closed the connection"
    if isinstance(error, ssl.SSLError):
        return 0, printable(f"TLS with the relay failed: {error}", 300)
    return 0, printable(f"{type(error).__name__}: {error}", 300)


def _open(config: Config) -> smtplib.SMTP:
    """A connection to the relay, greeted, secured when it offers STARTTLS (checked
    against the system's authorities) and logged in when a username is configured."""
    try:
        relay = parse_primary(str(config.outbound.get("relay") or ""))
    except RosterError:
        raise RelayDown((0, "no [outbound] relay is configured")) from None
    client = smtplib.SMTP(timeout=TIMEOUT, local_hostname=_helo_name(config))
    client._host = relay.host  # type: ignore[attr-defined]  # STARTTLS checks this name
    try:
        code, message = client.connect(relay.host, relay.port)
        if code != 220:
            raise RelayDown(_text(code, message))
        code, message = client.ehlo()
        if code != 250:
            code, message = client.helo()
            if code != 250:
                raise RelayDown(_text(code, message))
        secured = client.has_extn("starttls")
        if secured:
            code, message = client.starttls(context=ssl.create_default_context())
            if code != 220:
                raise RelayDown(_text(code, message))
            client.ehlo()
        username = config.outbound.get("username")
        if username:
            if not secured and not _loopback(relay.host):
                raise RelayDown((0, "the relay does not offer STARTTLS: no password in clear"))
            client.login(str(username), str(config.outbound.get("password") or ""))
        return client
    except BaseException:
        client.close()
        raise


def _signed(data: bytes, dkim: tuple[str, str, str] | None) -> bytes:
    """The message DKIM-signed with (domain, selector, private key), when given. A key
    that cannot sign is logged, and the message goes unsigned rather than not at all."""
    if dkim is None:
        return data
    domain, selector, private_pem = dkim
    try:
        return sign(data, domain, selector, private_pem)
    except DkimError as error:
        log_event(log, logging.ERROR, "webmail_dkim_failed", domain=domain, error=str(error))
        return data


def send(
    config: Config,
    message: EmailMessage,
    envelope_from: str,
    recipients: list[str],
    *,
    dkim: tuple[str, str, str] | None,
) -> SendResult:
    """Send ``message`` from ``envelope_from`` to ``recipients`` (Bcc included) through
    the relay, DKIM-signed with ``dkim`` (domain, selector, private key PEM) if given.

    Returns who was accepted and who refused; raises NotSent (RelayDown, SenderRefused,
    MessageRefused) when nothing was sent.
    """
    data = _signed(message_bytes(message), dkim)
    try:
        client = _open(config)
    except NotSent as error:
        _log_not_sent(error, len(recipients))
        raise
    except smtplib.SMTPResponseException as error:
        down = RelayDown(_text(error.smtp_code, error.smtp_error))
        _log_not_sent(down, len(recipients))
        raise down from error
    except (smtplib.SMTPException, OSError) as error:
        down = RelayDown(_failure(error))
        _log_not_sent(down, len(recipients))
        raise down from error
    try:
        refused = _transaction(client, envelope_from, recipients, data)
    except NotSent as error:
        _log_not_sent(error, len(recipients))
        raise
    finally:
        _close(client)
    result = SendResult(
        accepted=[address for address in recipients if address not in refused],
        refused=refused,
    )
    log_event(
        log,
        logging.INFO,
        "webmail_relay_answer",
        accepted=len(result.accepted),
        refused=len(result.refused),
        signed=dkim is not None,
    )
    return result


def _transaction(
    client: smtplib.SMTP, envelope_from: str, recipients: list[str], data: bytes
) -> dict[str, Reply]:
    """MAIL, RCPT for each recipient, DATA; the refused recipients, or NotSent."""
    try:
        refused = client.sendmail(envelope_from, recipients, data)
    except smtplib.SMTPSenderRefused as error:
        reply = _text(error.smtp_code, error.smtp_error)
        raise (SenderRefused if error.smtp_code >= 500 else RelayDown)(reply) from error
    except smtplib.SMTPRecipientsRefused as error:
        answers = {address: _text(code, text) for address, (code, text) in error.recipients.items()}
        if all(400 <= code < 500 for code, _said in answers.values()):
            first = next(iter(answers.values()), (0, "every recipient was refused"))
            raise RelayDown(first) from error
        return answers
    except smtplib.SMTPDataError as error:
        reply = _text(error.smtp_code, error.smtp_error)
        raise (MessageRefused if error.smtp_code >= 500 else RelayDown)(reply) from error
    except smtplib.SMTPNotSupportedError as error:
        raise SenderRefused((0, "the relay does not take non-ASCII addresses")) from error
    except smtplib.SMTPResponseException as error:
        raise RelayDown(_text(error.smtp_code, error.smtp_error)) from error
    except (smtplib.SMTPException, OSError) as error:
        raise RelayDown(_failure(error)) from error
    return {address: _text(code, text) for address, (code, text) in refused.items()}


def _close(client: smtplib.SMTP) -> None:
    """QUIT when the relay still listens, then close: what was sent stays sent."""
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _log_not_sent(error: NotSent, recipients: int) -> None:
    log_event(
        log,
        logging.WARNING,
        "webmail_not_sent",
        reason=type(error).__name__,
        code=error.reply[0],
        reply=error.reply[1],
        recipients=recipients,
    )
