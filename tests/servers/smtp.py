"""Real aiosmtpd servers on loopback for the tests: a primary, a relay, a probe's target.

One home for them, so that every test that needs an SMTP server starts it the same way
and new handlers (a primary that answers 4xx, one that times out) are added here.

- ``smtp_server(handler, **options)``: a server for one ``with`` block, serving any
  aiosmtpd handler (a Sink, ``Collect``, a test's own); ``rcpt_argument`` lets a test
  look at RCPT's raw argument before aiosmtpd parses it.
- ``Primary``: a stand-in for an organisation's primary mail server that a test can
  stop, start again on the same port, make hang, or make answer 4xx or 5xx (for
  everyone or for chosen recipients), and that keeps what it received, XFORWARD
  attributes included.

Stopping either closes the connections still open (``gateway.listener``: aiosmtpd alone
leaves a connection accepted just before the stop open, to be collected later).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP, Envelope, Session

from continuity.localslapd import free_port
from gateway.listener import ClosingController, TrackedSMTP

RcptArgument = Callable[[str], str | None]
"""Given RCPT's raw argument (after ``TO:``), a reply to give instead, or None to go on."""


class _SMTP(TrackedSMTP):
    """aiosmtpd asking ``rcpt_argument``, if given, about RCPT's raw argument: aiosmtpd
    hands the RCPT hook ``user@d`` for ``<@relay:user@d>``."""

    def __init__(self, handler: Any, rcpt_argument: RcptArgument | None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._rcpt_argument = rcpt_argument

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802 (aiosmtpd's name)
        """The raw argument to ``rcpt_argument`` first, within a transaction."""
        if self._rcpt_argument is not None and self.envelope and self.envelope.mail_from:
            argument = self._strip_command_keyword("TO:", arg or "")
            reply = self._rcpt_argument(argument) if argument else None
            if reply is not None:
                await self.push(reply)
                return
        await super().smtp_RCPT(arg)


class _XforwardSMTP(_SMTP):
    """With Postfix's XFORWARD command, as a primary that trusts the gateway has."""

    async def smtp_XFORWARD(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's name)
        """Keep the attributes for the next message."""
        attributes = dict(part.split("=", 1) for part in arg.split() if "=" in part)
        session: Any = self.session
        current = getattr(session, "xforward", {})
        current.update(attributes)
        session.xforward = current
        await self.push("250 2.0.0 Ok")


class _Controller(ClosingController):
    """A controller on 127.0.0.1 whose stop() also closes the connections still open."""

    def __init__(
        self,
        handler: Any,
        port: int,
        *,
        smtp: type[_SMTP] = _SMTP,
        rcpt_argument: RcptArgument | None = None,
        **options: Any,
    ) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=port, **options)
        self._smtp = smtp
        self._rcpt_argument = rcpt_argument

    def factory(self) -> SMTP:
        return self._smtp(
            self.handler, self._rcpt_argument, connections=self.connections, **self.SMTP_kwargs
        )


class Collect:
    """An aiosmtpd handler that keeps every message it is given (``envelopes``)."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.reply: str | None = None  # e.g. "554 5.7.1 refused": the message is not kept

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        if self.reply is not None:
            return self.reply
        self.envelopes.append(envelope)
        return "250 OK"


@contextmanager
def smtp_server(
    handler: Any = None, *, rcpt_argument: RcptArgument | None = None, **options: Any
) -> Iterator[int]:
    """A real aiosmtpd server on 127.0.0.1 with ``handler`` (a Sink unless given) and
    aiosmtpd's Controller ``options`` (tls_context, ssl_context, require_starttls,
    enable_SMTPUTF8, ...); ``rcpt_argument`` sees RCPT's raw argument first. Yields
    its port."""
    controller = _Controller(
        Sink() if handler is None else handler,
        free_port(),
        rcpt_argument=rcpt_argument,
        **options,
    )
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


@dataclass
class Received:
    """One message as the primary got it."""

    sender: str
    recipients: list[str]
    content: bytes
    xforward: dict[str, str] = field(default_factory=dict)


class PrimaryHandler:
    """What the primary answers, switchable while it runs."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.rcpt_reply: str | None = None  # e.g. "451 4.3.0 busy" for everyone
        self.replies: dict[str, str] = {}  # address -> reply for that one
        self.data_reply: str | None = None
        self.known: set[str] | None = None  # None: everyone exists; else others get 550
        self.hang = 0.0  # seconds to wait before answering RCPT
        self.rcpt_checks: list[str] = []  # every RCPT seen, callouts included
        self.senders: dict[str, str] = {}  # sender -> reply refusing it at MAIL
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Offer XFORWARD like Postfix does to the clients it trusts."""
        session.host_name = hostname
        return [*responses[:-1], "250-XFORWARD NAME ADDR PROTO HELO", responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse the senders the test named, take the others."""
        refusal = self.senders.get(address.lower())
        if refusal is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Answer as the test set it."""
        if self.hang:
            await asyncio.sleep(self.hang)
        with self.lock:
            self.rcpt_checks.append(address)
        reply = self.replies.get(address.lower()) or self.rcpt_reply
        if reply is None and self.known is not None and address.lower() not in self.known:
            reply = "550 5.1.1 No such user here"
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Keep the message (unless told to refuse it)."""
        if self.data_reply is not None:
            return self.data_reply
        with self.arrived:
            self.messages.append(
                Received(
                    sender=envelope.mail_from or "",
                    recipients=list(envelope.rcpt_tos),
                    content=envelope.original_content or b"",
                    xforward=dict(getattr(session, "xforward", {})),
                )
            )
            self.arrived.notify_all()
        return "250 2.0.0 Ok: queued at the primary"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Wait until ``count`` messages arrived; the messages so far."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


class Primary:
    """A primary server on 127.0.0.1:port that can go down and come back."""

    def __init__(self, port: int | None = None, tls_context: ssl.SSLContext | None = None):
        self.port = port or free_port()
        self.handler = PrimaryHandler()
        self._tls_context = tls_context
        self._controller: _Controller | None = None

    def start(self) -> Primary:
        """Listen (again) on the same port."""
        if self._controller is None:
            self._controller = _Controller(
                self.handler,
                self.port,
                smtp=_XforwardSMTP,
                server_hostname="primary.test",
                tls_context=self._tls_context,
                enable_SMTPUTF8=True,
            )
            self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening, closing the connections still open: connections are refused
        until start()."""
        if self._controller is not None:
            controller, self._controller = self._controller, None
            controller.stop()

    @property
    def messages(self) -> list[Received]:
        """What arrived so far."""
        with self.handler.lock:
            return list(self.handler.messages)
