"""aiosmtpd's threaded controller, made to close every connection when it stops.

aiosmtpd's ``Controller.stop()`` cancels the connections' tasks and closes its loop,
and that leaves sockets open in two ways: a connection whose task had not started when
it was cancelled is never closed, and a connection accepted a moment before the stop
fails its setup inside asyncio (the server it attaches to is already closed) with its
socket still open. Either stays open until the garbage collector finds it (a
ResourceWarning in whatever runs then) and its client waits for a reply that never
comes. So the connections are counted here, and stopping goes in order: stop reading the
listening sockets, let the connections accepted by then finish their setup, close the
server, tell every open connection ``421`` and drop it (and drop any connection set up
after that at once), and only then let aiosmtpd stop the loop.

``ClosingController`` is the controller, ``Connections`` the count its server objects
keep (``TrackedSMTP`` is aiosmtpd's ``SMTP`` keeping it). The gateway's receiver and the
test suite's SMTP servers both use them.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

STOP_WAIT_SECONDS = 5.0

# The names aiosmtpd looks for when it sets up a connection: its commands and AUTH
# mechanisms on the server object, the hooks (and mechanisms) on the handler.
SERVER_NAMES = ("smtp_", "auth_")
HANDLER_NAMES = ("handle_", "auth_")


def names_for_aiosmtpd(thing: object, prefixes: tuple[str, ...]) -> list[str]:
    """What ``dir(thing)`` lists that starts with ``prefixes``, for a ``__dir__``.

    aiosmtpd's ``SMTP.__init__`` lists every attribute of the server and of the handler
    (``dir`` and ``inspect.getmembers``, which reads each one, properties included) at
    every connection, only to keep those starting with these prefixes: a fifth of the
    receiving thread's time. A ``__dir__`` that answers just those names gives it the
    same commands, mechanisms and hooks: the class's, listed once, and any set on the
    object itself (tests/test_listener.py compares them with aiosmtpd's own listing).
    """
    own = [name for name in vars(thing) if name.startswith(prefixes)]
    return [*_class_names(type(thing), prefixes), *own]


_CLASS_NAMES: dict[tuple[type, tuple[str, ...]], tuple[str, ...]] = {}


def _class_names(kind: type, prefixes: tuple[str, ...]) -> tuple[str, ...]:
    found = _CLASS_NAMES.get((kind, prefixes))
    if found is None:  # two threads may both list it: the same answer
        found = _CLASS_NAMES[kind, prefixes] = tuple(
            name for name in dir(kind) if name.startswith(prefixes)
        )
    return found


class Connections:
    """The open connections of one server, by their server object (a connection that
    turned to TLS keeps its object: aiosmtpd calls ``connection_made`` again for it with
    the TLS transport), touched only in the server's loop."""

    def __init__(self, goodbye: bytes = b"") -> None:
        self.goodbye = goodbye
        self.open: set[TrackedSMTP] = set()
        self.closing = False

    def made(self, server: TrackedSMTP) -> None:
        """Count a new connection, or drop it at once when the server is stopping."""
        if self.closing:
            self._drop(server)
        else:
            self.open.add(server)

    def lost(self, server: TrackedSMTP) -> None:
        """Forget a connection that ended."""
        self.open.discard(server)

    def close_all(self) -> None:
        """From now on, no connection stays open; the ones open now are dropped."""
        self.closing = True
        for server in list(self.open):
            self._drop(server)

    def _drop(self, server: TrackedSMTP) -> None:
        self.open.discard(server)
        current = server.transport  # the TLS one after STARTTLS
        if current is None:
            return
        if self.goodbye and not current.is_closing():
            current.write(self.goodbye)  # type: ignore[attr-defined]  # a send that fails is the transport's own affair
        socket_transport = server.socket_transport
        if socket_transport is not None:
            socket_transport.abort()


class TrackedSMTP(SMTP):
    """aiosmtpd's server object, counting its connection in ``connections``."""

    def __init__(self, handler: Any, *, connections: Connections, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections

    def __dir__(self) -> list[str]:
        """Only what aiosmtpd looks for (``names_for_aiosmtpd``)."""
        return names_for_aiosmtpd(self, SERVER_NAMES)

    @property
    def tls_started(self) -> bool:
        """True once STARTTLS began: aiosmtpd then calls ``connection_made`` a second
        time, with the TLS transport, for the same connection."""
        return self._original_transport is not None

    @property
    def socket_transport(self) -> asyncio.Transport | None:
        """The transport of the socket itself (under TLS, the one below it)."""
        found = self._original_transport or self.transport
        return found if isinstance(found, asyncio.Transport) else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Counted once per connection (or dropped at once, when the server is stopping)."""
        again = self.tls_started
        super().connection_made(transport)
        if not again:
            self._connections.made(self)

    def connection_lost(self, error: Exception | None) -> None:
        """No longer counted."""
        self._connections.lost(self)
        super().connection_lost(error)


class ClosingController(Controller):
    """A threaded aiosmtpd controller whose stop() leaves no connection open.

    Subclasses build their server objects with ``connections=self.connections``."""

    def __init__(self, handler: Any, *, goodbye: bytes = b"", **options: Any) -> None:
        super().__init__(handler, **options)
        self.connections = Connections(goodbye)

    def stop(self, no_assert: bool = False) -> None:
        """Stop accepting, drop every connection, then let aiosmtpd stop the loop.

        In the server's loop, in three turns. First the listening sockets are no longer
        read, and ``closing`` is set. Connections accepted just before have their setup
        still queued: the next turn lets it run, then closes the server and drops every
        connection counted (closing the server while a setup is still queued makes
        asyncio fail that setup and lose its socket, open). A connection whose
        ``connection_made`` comes after that is dropped by it, and the wait ends a turn
        later still, once those drops are done."""
        loop, server = self.loop, self.server
        if self._thread is not None and isinstance(server, asyncio.Server) and loop.is_running():
            done = threading.Event()

            def stop_accepting() -> None:
                self.connections.closing = True
                for listening in server.sockets:
                    loop.remove_reader(listening.fileno())
                loop.call_soon(close)

            def close() -> None:
                server.close()
                self.connections.close_all()
                loop.call_soon(done.set)

            loop.call_soon_threadsafe(stop_accepting)
            done.wait(STOP_WAIT_SECONDS)
        super().stop(no_assert)
