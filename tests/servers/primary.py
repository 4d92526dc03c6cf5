"""A stand-in for an organisation's primary mail server: a real aiosmtpd server on
loopback that a test can stop, start again on the same port, make hang, or make answer
4xx or 5xx (for everyone or for chosen recipients), and that keeps what it received,
XFORWARD attributes included."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    """One message as the primary got it."""

    sender: str
    recipients: list[str]
    content: bytes
    xforward: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


class _PrimarySMTP(SMTP):
    """aiosmtpd with Postfix's XFORWARD command, keeping its open connections so that
    stopping the server closes them (a client that died leaves one aiosmtpd never closes,
    and its socket would be collected still open)."""

    def __init__(self, handler: Any, connections: set[asyncio.BaseTransport], **kwargs: Any):
        super().__init__(handler, **kwargs)
        self._connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the connection."""
        super().connection_made(transport)
        self._connections.add(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Forget it."""
        if self.transport is not None:
            self._connections.discard(self.transport)
        super().connection_lost(error)

    async def smtp_XFORWARD(self, arg: str) -> None:
        """Keep the attributes for the next message."""
        attributes = dict(part.split("=", 1) for part in arg.split() if "=" in part)
        current = getattr(self.session, "xforward", {})
        current.update(attributes)
        self.session.xforward = current  # type: ignore[attr-defined]
        await self.push("250 2.0.0 Ok")


class _Controller(Controller):
    def __init__(self, handler: Any, port: int, tls_context: ssl.SSLContext | None) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=port)
        self._tls_context = tls_context
        self.connections: set[asyncio.BaseTransport] = set()

    def factory(self) -> SMTP:
        return _PrimarySMTP(
            self.handler,
            self.connections,
            hostname="primary.test",
            tls_context=self._tls_context,
            enable_SMTPUTF8=True,
        )


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
            self._controller = _Controller(self.handler, self.port, self._tls_context)
            self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused until start()."""
        if self._controller is not None:
            controller, self._controller = self._controller, None

            def close_all() -> None:
                for transport in list(controller.connections):
                    transport.abort()

            controller.loop.call_soon_threadsafe(close_all)
            controller.stop()

    @property
    def messages(self) -> list[Received]:
        """What arrived so far."""
        with self.handler.lock:
            return list(self.handler.messages)
