"""Stopping an SMTP server leaves no connection behind (``gateway.listener``).

aiosmtpd alone leaves a connection accepted a moment before the stop open: its socket is
collected later, a ResourceWarning in whichever test runs then, and its client waits for
a reply that never comes. These tests stop servers under clients that keep connecting,
and with clients in the middle of a transaction."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from aiosmtpd.handlers import Sink

from continuity.localslapd import free_port
from gateway.listener import ClosingController, Connections, TrackedSMTP
from gateway.receiver import GatewayHandler, GatewaySMTP


class _Server(ClosingController):
    def factory(self) -> TrackedSMTP:
        return TrackedSMTP(self.handler, connections=self.connections, **self.SMTP_kwargs)


@contextmanager
def unclosed_transports() -> Iterator[list[str]]:
    """The "unclosed transport" warnings of the sockets collected inside the block."""
    found: list[str] = []
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield found
        gc.collect()
    found.extend(str(w.message) for w in caught if "unclosed" in str(w.message))


def _hammer(
    port: int, stop: threading.Event, greeted: threading.Semaphore, ends: list[bytes]
) -> None:
    """Connect again and again until told to stop; ``ends`` gets how each connection the
    server took ended: its last line, b"" for a close, b"HUNG" when nothing came."""
    while not stop.is_set():
        try:
            client = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            continue  # refused once the server stopped listening: the loop ends soon
        with client:
            client.settimeout(20)
            data = b""
            try:
                while chunk := client.recv(1024):
                    data += chunk
                    if data.startswith(b"220") and data.count(b"\r\n") == 1:
                        greeted.release()
                    if b"421" in data:
                        break
            except TimeoutError:
                ends.append(b"HUNG")
                continue
            except OSError:
                pass  # reset: the server dropped it
            ends.append(data.rsplit(b"\r\n", 2)[-2] if b"\r\n" in data else data)


def test_a_server_stopped_under_a_stream_of_connections_leaves_none_open() -> None:
    """Ten stops, each with clients connecting as fast as they can: every connection the
    server took ends at once (a 421 or a close, never a client left waiting), those that
    were greeted hear the 421, and no socket is left for the garbage collector."""
    with unclosed_transports() as leaked:
        for _ in range(10):
            server = _Server(Sink(), hostname="127.0.0.1", port=free_port(), goodbye=b"421 bye\r\n")
            server.start()
            stop = threading.Event()
            greeted = threading.Semaphore(0)
            ends: list[bytes] = []
            clients = [
                threading.Thread(target=_hammer, args=(server.port, stop, greeted, ends))
                for _ in range(4)
            ]
            for client in clients:
                client.start()
            for _ in range(4):  # every client holds a greeted connection: stop under load
                assert greeted.acquire(timeout=10)
            server.stop()
            stop.set()
            for client in clients:
                client.join(30)
                assert not client.is_alive()
            assert b"HUNG" not in ends
            assert ends.count(b"421 bye") >= 4, ends
    assert leaked == [], "\n".join(leaked)


def test_a_client_in_the_middle_of_a_message_is_told_421_when_the_server_stops() -> None:
    """A client between RCPT and DATA hears the server go (421, then the close)."""
    server = _Server(Sink(), hostname="127.0.0.1", port=free_port(), goodbye=b"421 bye\r\n")
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        reader = client.makefile("rb")
        assert reader.readline().startswith(b"220")
        for line in (b"HELO client.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<c@d.test>"):
            client.sendall(line + b"\r\n")
            assert reader.readline().startswith(b"250")
        with unclosed_transports() as leaked:
            server.stop()
        assert reader.readline() == b"421 bye\r\n"
        assert reader.readline() == b""
    assert leaked == [], "\n".join(leaked)


class _ListedInFull(GatewaySMTP):
    """The gateway's server object as aiosmtpd lists it without the short ``__dir__``."""

    __dir__ = object.__dir__


class _HandlerInFull(GatewayHandler):
    __dir__ = object.__dir__


def _what_aiosmtpd_found(server: TrackedSMTP) -> dict[str, dict[str, object]]:
    """The commands, AUTH mechanisms and hooks aiosmtpd found, as the functions they call
    and the object each is bound to."""

    def named(methods: dict[str, object]) -> dict[str, object]:
        return {
            name: (getattr(m, "__func__", m), getattr(m, "__self__", None))
            for name, m in methods.items()
        }

    return {
        "commands": named(server._smtp_methods),
        "mechanisms": named({k: v.method for k, v in server._auth_methods.items()}),
        "hooks": named(server._handle_hooks),
    }


def test_the_short_listing_gives_aiosmtpd_the_same_commands_mechanisms_and_hooks() -> None:
    """aiosmtpd finds the same commands, AUTH mechanisms and handler hooks, bound to the
    same objects, through the gateway's short ``__dir__`` as through a full listing;
    a hook set on the handler object itself is found too."""
    loop = asyncio.new_event_loop()

    def noop(*_: object) -> str:
        return "250 OK"

    short: dict[str, dict[str, object]] = {}
    try:
        for full in (False, True):
            handler = (_HandlerInFull if full else GatewayHandler).__new__(
                _HandlerInFull if full else GatewayHandler
            )
            handler.handle_NOOP = noop  # type: ignore[attr-defined]
            kind = _ListedInFull if full else GatewaySMTP
            server = kind(handler, connections=Connections(), hostname="gw.test", loop=loop)
            if not full:  # the short listing is what aiosmtpd was given
                assert "connection_made" not in dir(server)
                assert "close" not in dir(handler)
            found = _what_aiosmtpd_found(server)
            swap = {id(server): "server", id(handler): "handler"}
            listed = {
                part: {
                    name: (function, swap.get(id(bound), bound))
                    for name, (function, bound) in methods.items()
                }
                for part, methods in found.items()
            }
            if full:
                assert listed == short
            else:
                short = listed
        assert {"EHLO", "MAIL", "RCPT", "DATA", "QUIT", "STARTTLS"} <= set(short["commands"])
        assert {"EHLO", "MAIL", "RCPT", "DATA", "NOOP"} <= set(short["hooks"])
        assert {"LOGIN", "PLAIN"} <= set(short["mechanisms"])
    finally:
        loop.close()
