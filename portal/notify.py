"""Reminders to set an emergency password, sent through the outbound relay.

Nobody knows the language of each person reminded, so every reminder says it in English
and then in Spanish (both from the portal's catalogue). One SMTP connection carries all
of them, with STARTTLS when the relay offers it and a login when one is configured.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterable
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import urlsplit

from flask_babel import force_locale
from flask_babel import gettext as _

from roster.addresses import domain_of, printable
from roster.config import Config
from roster.domains import Primary, RosterError, parse_primary
from roster.logs import log_event
from roster.models import utcnow

log = logging.getLogger("continuity.portal.notify")

TIMEOUT = 30.0
LANGUAGES = ("en", "es")


def relay_configured(config: Config) -> bool:
    """True when [outbound].relay names a relay to send through."""
    return bool(str(config.outbound.get("relay") or "").strip())


def _relay(config: Config) -> Primary:
    """Where the outbound relay listens (``host:port``; port 25 when left out)."""
    return parse_primary(str(config.outbound.get("relay") or ""))


def _texts(name: str, link: str) -> tuple[str, str]:
    """The subject and the body of a reminder, in every language, one after the other."""
    subjects, bodies = [], []
    for language in LANGUAGES:
        with force_locale(language):
            subjects.append(_("Set your emergency password"))
            greeting = _("Hello %(name)s,", name=name) if name else _("Hello,")
            bodies.append(
                "\n\n".join(
                    [
                        greeting,
                        _(
                            "Your mailbox is covered by Continuity Service: if your"
                            " organisation's mail server fails, you can still read and send"
                            " mail in the standby webmail. During such an outage your"
                            " directory password may not work, so set an emergency password"
                            " now, at:"
                        ),
                        link,
                        _(
                            "Sign in there with your directory password and choose an"
                            " emergency password. Keep it to yourself: nobody will ever ask"
                            " you for it."
                        ),
                    ]
                )
            )
    return " / ".join(subjects), "\n\n-- \n\n".join(bodies) + "\n"


def _reminder(sender: str, mail: str, name: str, link: str) -> EmailMessage:
    """One reminder to ``mail`` (ValueError when an address cannot be written)."""
    subject, body = _texts(name, link)
    message = EmailMessage()
    message["From"] = Address(display_name="Continuity", addr_spec=sender)
    message["To"] = Address(display_name=name, addr_spec=mail)
    message["Subject"] = subject
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid(domain=domain_of(sender))
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no automatic replies
    message.set_content(body)
    return message


def send_reminders(
    config: Config, people: Iterable[tuple[str, str]], base_url: str
) -> tuple[int, int]:
    """Send each (mail, display_name) a reminder to set an emergency password at
    ``base_url``/me; returns how many were sent and how many failed."""
    recipients = list(people)
    if not recipients:
        return 0, 0
    link = base_url.rstrip("/") + "/me"
    # Without [outbound] sender, reminders come from the portal's own host name: a
    # sender in the customer's domain would fail its SPF and DMARC checks.
    default_domain = urlsplit(base_url).hostname or "localhost"
    sent = 0
    try:
        relay = _relay(config)
        with smtplib.SMTP(relay.host, relay.port, timeout=TIMEOUT) as client:
            client.ehlo()
            secured = client.has_extn("starttls")
            if secured:
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            username = config.outbound.get("username")
            if username and not secured:
                # The relay's password never crosses the network in clear.
                raise smtplib.SMTPNotSupportedError("the relay does not offer STARTTLS")
            if username:
                client.login(str(username), str(config.outbound.get("password") or ""))
            for mail, name in recipients:
                sender = str(config.outbound.get("sender") or f"continuity@{default_domain}")
                try:
                    client.send_message(_reminder(sender, mail, printable(name or "", 200), link))
                except (
                    smtplib.SMTPRecipientsRefused,
                    smtplib.SMTPSenderRefused,
                    smtplib.SMTPDataError,
                    smtplib.SMTPNotSupportedError,
                    ValueError,
                ) as error:
                    log_event(
                        log,
                        logging.WARNING,
                        "reminder_refused",
                        to=mail,
                        error=type(error).__name__,
                    )
                    continue
                sent += 1
    except (RosterError, smtplib.SMTPException, OSError) as error:
        # The relay cannot be reached, refused us, or went away: what was not sent failed.
        log_event(
            log, logging.ERROR, "reminders_relay_failed", error=str(error) or type(error).__name__
        )
    failed = len(recipients) - sent
    log_event(log, logging.INFO, "reminders_sent", sent=sent, failed=failed)
    return sent, failed
