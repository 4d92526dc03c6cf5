"""The demo's mail servers around Continuity: a stand-in primary mail server for each
demo domain and a stand-in outbound relay (the operator's smarthost), aiosmtpd servers
in threads of the demo's process, each keeping what it receives as files a visitor can
open.

- ``StandInPrimary`` accepts mail for its domain into ``DIR/new/*.eml`` (Maildir's
  layout: written in ``tmp/``, then moved) and can be taken down and brought back on
  the same port, which is what the demo's outage button does.
- ``StandInRelay`` keeps everything it is given in ``DIR/new/`` and passes what is
  addressed to a demo domain on to the gateway (the domains' MX), as a real smarthost
  would: mail written in the webmail to a colleague reaches their standby mailbox.
"""

from __future__ import annotations

import logging
import os
import smtplib
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.listener import ClosingController, TrackedSMTP
from roster.logs import log_event

log = logging.getLogger("continuity.demo")


class _Controller(ClosingController):
    """aiosmtpd's threaded controller on 127.0.0.1 that closes every connection at stop."""

    def __init__(self, handler: Any, port: int, server_hostname: str) -> None:
        super().__init__(
            handler,
            hostname="127.0.0.1",
            port=port,
            server_hostname=server_hostname,
            enable_SMTPUTF8=True,
            goodbye=b"421 4.3.2 Shutting down\r\n",
        )

    def factory(self) -> SMTP:
        """One server object per connection, counted."""
        return TrackedSMTP(self.handler, connections=self.connections, **self.SMTP_kwargs)


class MailFolder:
    """Messages kept as files, Maildir's way: written in ``tmp/``, moved to ``new/``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for name in ("tmp", "new"):
            (directory / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._count = len(list((directory / "new").iterdir()))

    def keep(self, content: bytes) -> Path:
        """Store one message; its file."""
        with self._lock:
            self._count += 1
            name = f"{time.time_ns()}.{os.getpid()}.{self._count}.eml"
        temporary = self.directory / "tmp" / name
        # Other people's mail: for root's eyes only, whatever the umask.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        final = self.directory / "new" / name
        temporary.replace(final)
        return final

    @property
    def count(self) -> int:
        """How many messages it holds."""
        with self._lock:
            return self._count


class _PrimaryHandler:
    """Takes mail for one domain (and the monitor's postmaster checks), keeps it."""

    def __init__(self, domain: str, folder: MailFolder) -> None:
        self.domain = domain
        self.folder = folder

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Any address of its own domain; no other."""
        if address.rpartition("@")[2].lower() != self.domain:
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 (aiosmtpd's name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """Keep the message, with the envelope recipients in a header of its own."""
        recipients = ", ".join(str(r) for r in envelope.rcpt_tos)
        header = f"X-Demo-Delivered-To: {recipients}\r\n".encode()
        self.folder.keep(header + (envelope.original_content or b""))
        return "250 2.0.0 Ok: delivered to the primary's mailbox"


class StandInPrimary:
    """A demo domain's primary mail server on 127.0.0.1:port that can go down and return."""

    def __init__(self, domain: str, port: int, directory: Path) -> None:
        self.domain = domain
        self.port = port
        self.folder = MailFolder(directory)
        self._handler = _PrimaryHandler(domain, self.folder)
        self._controller: _Controller | None = None

    @property
    def up(self) -> bool:
        """Whether it accepts connections now."""
        return self._controller is not None

    def start(self) -> None:
        """Listen (again) on the same port."""
        if self._controller is None:
            controller = _Controller(self._handler, self.port, f"mail.{self.domain}")
            controller.start()
            self._controller = controller
            log_event(log, logging.INFO, "demo_primary_up", domain=self.domain, port=self.port)

    def stop(self) -> None:
        """Stop listening and drop every connection: connections are refused until start()."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
            log_event(log, logging.INFO, "demo_primary_down", domain=self.domain)


class _RelayHandler:
    """Keeps every message; passes the demo domains' recipients on to the gateway."""

    def __init__(self, folder: MailFolder, domains: set[str], gateway: tuple[str, int]) -> None:
        self.folder = folder
        self.domains = domains
        self.gateway = gateway

    async def handle_DATA(  # noqa: N802 (aiosmtpd's name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """Keep it, then hand the local recipients to the gateway."""
        content = envelope.original_content or b""
        recipients = [str(r) for r in envelope.rcpt_tos]
        header = f"X-Demo-Relayed-To: {', '.join(recipients)}\r\n".encode()
        self.folder.keep(header + content)
        local = [r for r in recipients if r.rpartition("@")[2].lower() in self.domains]
        if local:
            sender = str(envelope.mail_from or "")
            threading.Thread(
                target=self._to_gateway, args=(sender, local, content), daemon=True
            ).start()
        return "250 2.0.0 Ok: relayed"

    def _to_gateway(self, sender: str, recipients: list[str], content: bytes) -> None:
        """Deliver to the gateway as the domains' MX; a refusal is logged (it is a demo)."""
        try:
            with smtplib.SMTP(*self.gateway, timeout=30) as smtp:
                smtp.sendmail(sender, recipients, content)
        except (OSError, smtplib.SMTPException) as error:
            log_event(log, logging.WARNING, "demo_relay_failed", error=str(error)[:200])


class StandInRelay:
    """The outbound relay (the operator's smarthost) of the demo."""

    def __init__(
        self, port: int, directory: Path, domains: set[str], gateway: tuple[str, int]
    ) -> None:
        self.port = port
        self.folder = MailFolder(directory)
        self._controller = _Controller(
            _RelayHandler(self.folder, domains, gateway), port, "smarthost.demo"
        )

    def start(self) -> None:
        """Listen."""
        self._controller.start()

    def stop(self) -> None:
        """Stop listening and drop every connection."""
        self._controller.stop()
