"""The SMTP probe ("test connection") against real servers on loopback: an aiosmtpd
server with and without TLS, and plain sockets for what an SMTP server cannot be made
to do (refuse at the greeting, be a web server, say nothing)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from continuity.localslapd import free_port, make_test_ca
from roster.probe import probe_smtp
from tests.servers.smtp import smtp_server


@contextmanager
def socket_server(greeting: bytes, then: str) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that writes ``greeting`` to each client, then either
    "close"s, answers "quit" with 221 as an SMTP server must, or "hold"s the connection
    open saying nothing more; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stopping = threading.Event()

    def serve(client: socket.socket) -> None:
        with client:
            client.sendall(greeting)
            if then == "close":
                return
            if then in ("drip", "flood"):
                # A hostile server: one byte at a time, or an endless multi-line greeting.
                piece = b"2" if then == "drip" else b"220-more of the same\r\n" * 100
                with contextlib.suppress(OSError):
                    while not stopping.is_set():
                        client.sendall(piece)
                        if then == "drip":
                            stopping.wait(0.2)
                return
            client.settimeout(0.1)
            received = b""
            while not stopping.is_set():
                try:
                    chunk = client.recv(1024)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                received += chunk
                if then == "quit" and b"QUIT" in received.upper():
                    client.sendall(b"221 bye\r\n")
                    return

    def accept() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        acceptor.join(5)
        listener.close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throwaway CA (made with openssl) and a server certificate for 127.0.0.1."""
    return make_test_ca(tmp_path_factory.mktemp("probe-tls"))


def server_context(certificates: tuple[Path, Path, Path]) -> ssl.SSLContext:
    """The server side of TLS, with the test certificate."""
    _ca, cert, key = certificates
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def trusting(certificates: tuple[Path, Path, Path]) -> ssl.SSLContext:
    """A client context that trusts the test CA (and checks the name, as by default)."""
    return ssl.create_default_context(cafile=str(certificates[0]))


def test_a_working_server_is_ok_and_its_answers_are_shown() -> None:
    with smtp_server() as port:
        result = probe_smtp("127.0.0.1", port, "none", timeout=5)
    assert (result.ok, result.stage, result.error, result.tls) == (True, "done", "", "")
    greeting, ehlo = result.answers
    assert greeting.startswith("220 ") and "Python SMTP" in greeting
    assert ehlo.startswith("250 ") and "SIZE" in ehlo
    assert 0 < result.seconds < 5


def test_a_server_refusing_at_the_greeting_is_shown_with_its_answer() -> None:
    with socket_server(b"554 go away\r\n", then="quit") as port:
        result = probe_smtp("127.0.0.1", port, "none", timeout=5)
    assert (result.ok, result.stage) == (False, "greeting")
    assert result.error == "the server does not accept mail now"
    assert result.answers == ["554 go away"]


def test_a_closed_port_fails_at_connect() -> None:
    result = probe_smtp("127.0.0.1", free_port(), "none", timeout=5)
    assert (result.ok, result.stage, result.answers) == (False, "connect", [])
    assert "refused" in result.error.lower()


def test_another_service_is_not_an_smtp_server_and_its_words_are_not_shown() -> None:
    """The button must not become a way to read other services of the network."""
    answer = b"HTTP/1.1 400 Bad Request\r\nsecret\r\n"
    with socket_server(answer, then="close") as port:
        result = probe_smtp("127.0.0.1", port, "none", timeout=5)
    assert (result.ok, result.stage, result.error) == (False, "greeting", "not an SMTP server")
    assert result.answers == []
    assert "secret" not in repr(result) and "Bad Request" not in repr(result)


def test_starttls_asked_of_a_server_without_it_fails_at_tls() -> None:
    with smtp_server() as port:
        result = probe_smtp("127.0.0.1", port, "starttls", timeout=5)
    assert (result.ok, result.stage) == (False, "tls")
    assert result.error == "the server does not offer STARTTLS"
    assert result.answers[0].startswith("220 ")


def test_a_server_that_never_speaks_fails_within_the_timeout() -> None:
    """Regression: a silent server was reported as one that closed the connection."""
    started = time.monotonic()
    with socket_server(b"", then="hold") as port:
        result = probe_smtp("127.0.0.1", port, "none", timeout=1)
    assert time.monotonic() - started < 4
    assert (result.ok, result.stage, result.answers) == (False, "greeting", [])
    assert result.error == "no answer within 1 s"


def test_starttls_with_a_trusted_certificate(certificates: tuple[Path, Path, Path]) -> None:
    """Regression: every STARTTLS or TLS probe raised ValueError (smtplib had no server
    name to check the certificate against)."""
    with smtp_server(tls_context=server_context(certificates)) as port:
        result = probe_smtp(
            "127.0.0.1", port, "starttls", timeout=5, tls_context=trusting(certificates)
        )
    assert (result.ok, result.stage, result.error) == (True, "done", ""), result
    assert result.tls in ("TLSv1.2", "TLSv1.3")
    greeting, ready, ehlo = result.answers
    assert greeting.startswith("220 ") and ready.startswith("220 ") and ehlo.startswith("250 ")


def test_starttls_with_an_untrusted_certificate_fails_at_tls(
    certificates: tuple[Path, Path, Path],
) -> None:
    """The system's authorities do not know the test CA: a failed check is a failed probe."""
    with smtp_server(tls_context=server_context(certificates)) as port:
        result = probe_smtp("127.0.0.1", port, "starttls", timeout=5)
    assert (result.ok, result.stage, result.tls) == (False, "tls", "")
    assert result.error == "TLS failed: CERTIFICATE_VERIFY_FAILED"


def test_tls_from_the_first_byte(certificates: tuple[Path, Path, Path]) -> None:
    with smtp_server(ssl_context=server_context(certificates)) as port:
        result = probe_smtp("127.0.0.1", port, "tls", timeout=5, tls_context=trusting(certificates))
    assert (result.ok, result.stage, result.error) == (True, "done", ""), result
    assert result.tls in ("TLSv1.2", "TLSv1.3")
    assert result.answers[0].startswith("220 ") and result.answers[1].startswith("250 ")


def test_tls_from_the_first_byte_against_a_plain_server_fails_at_tls(
    certificates: tuple[Path, Path, Path],
) -> None:
    with smtp_server() as port:
        result = probe_smtp("127.0.0.1", port, "tls", timeout=5, tls_context=trusting(certificates))
    assert (result.ok, result.stage, result.answers) == (False, "tls", [])
    assert result.error.startswith("TLS failed: ")


@pytest.mark.parametrize("then", ["drip", "flood"])
def test_a_hostile_server_cannot_hold_a_probe_past_its_deadline(then: str) -> None:
    """Regression: the timeout applied to each read, so a server dripping a byte at a
    time held the probe (and a portal worker) for a minute, and an endless "220-"
    greeting grew it without bound."""
    with socket_server(b"", then) as port:
        began = time.monotonic()
        result = probe_smtp("127.0.0.1", port, "none", timeout=1)
    assert time.monotonic() - began < 3
    assert not result.ok and result.stage == "greeting"
