"""The SMTP probe ("test connection") against real servers on loopback: an aiosmtpd
server with and without TLS, and plain sockets for what an SMTP server cannot be made
to do (refuse at the greeting, be a web server, say nothing). These servers run on the
Continuity host itself, so the probes are made with ``[gateway] allow_local_primary``
(LOCAL), except where the refusal of this host's addresses is what is tested."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from continuity.localslapd import free_port, make_test_ca
from roster.config import Config
from roster.primary_address import DENIED, THIS_HOST, PrimaryAddressRefused
from roster.probe import probe_smtp
from tests.servers.smtp import smtp_server

LOCAL = Config(gateway={"allow_local_primary": True})
"""A configuration in which a primary may run on this host, as the test servers do."""


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
        result = probe_smtp("127.0.0.1", port, "none", config=LOCAL, timeout=5)
    assert (result.ok, result.stage, result.error, result.tls) == (True, "done", "", "")
    greeting, ehlo = result.answers
    assert greeting.startswith("220 ") and "Python SMTP" in greeting
    assert ehlo.startswith("250 ") and "SIZE" in ehlo
    assert 0 < result.seconds < 5


def test_a_server_refusing_at_the_greeting_is_shown_with_its_answer() -> None:
    with socket_server(b"554 go away\r\n", then="quit") as port:
        result = probe_smtp("127.0.0.1", port, "none", config=LOCAL, timeout=5)
    assert (result.ok, result.stage) == (False, "greeting")
    assert result.error == "the server does not accept mail now"
    assert result.answers == ["554 go away"]


def test_a_closed_port_fails_at_connect() -> None:
    result = probe_smtp("127.0.0.1", free_port(), "none", config=LOCAL, timeout=5)
    assert (result.ok, result.stage, result.answers) == (False, "connect", [])
    assert "refused" in result.error.lower()


def test_another_service_is_not_an_smtp_server_and_its_words_are_not_shown() -> None:
    """The button must not become a way to read other services of the network."""
    answer = b"HTTP/1.1 400 Bad Request\r\nsecret\r\n"
    with socket_server(answer, then="close") as port:
        result = probe_smtp("127.0.0.1", port, "none", config=LOCAL, timeout=5)
    assert (result.ok, result.stage, result.error) == (False, "greeting", "not an SMTP server")
    assert result.answers == []
    assert "secret" not in repr(result) and "Bad Request" not in repr(result)


def test_starttls_asked_of_a_server_without_it_fails_at_tls() -> None:
    with smtp_server() as port:
        result = probe_smtp("127.0.0.1", port, "starttls", config=LOCAL, timeout=5)
    assert (result.ok, result.stage) == (False, "tls")
    assert result.error == "the server does not offer STARTTLS"
    assert result.answers[0].startswith("220 ")


def test_a_server_that_never_speaks_fails_within_the_timeout() -> None:
    """Regression: a silent server was reported as one that closed the connection."""
    started = time.monotonic()
    with socket_server(b"", then="hold") as port:
        result = probe_smtp("127.0.0.1", port, "none", config=LOCAL, timeout=1)
    assert time.monotonic() - started < 4
    assert (result.ok, result.stage, result.answers) == (False, "greeting", [])
    assert result.error == "no answer within 1 s"


def test_starttls_with_a_trusted_certificate(certificates: tuple[Path, Path, Path]) -> None:
    """Regression: every STARTTLS or TLS probe raised ValueError (smtplib had no server
    name to check the certificate against)."""
    with smtp_server(tls_context=server_context(certificates)) as port:
        result = probe_smtp(
            "127.0.0.1",
            port,
            "starttls",
            config=LOCAL,
            timeout=5,
            tls_context=trusting(certificates),
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
        result = probe_smtp("127.0.0.1", port, "starttls", config=LOCAL, timeout=5)
    assert (result.ok, result.stage, result.tls) == (False, "tls", "")
    assert result.error == "TLS failed: CERTIFICATE_VERIFY_FAILED"


def test_tls_from_the_first_byte(certificates: tuple[Path, Path, Path]) -> None:
    with smtp_server(ssl_context=server_context(certificates)) as port:
        result = probe_smtp(
            "127.0.0.1", port, "tls", config=LOCAL, timeout=5, tls_context=trusting(certificates)
        )
    assert (result.ok, result.stage, result.error) == (True, "done", ""), result
    assert result.tls in ("TLSv1.2", "TLSv1.3")
    assert result.answers[0].startswith("220 ") and result.answers[1].startswith("250 ")


def test_tls_from_the_first_byte_against_a_plain_server_fails_at_tls(
    certificates: tuple[Path, Path, Path],
) -> None:
    with smtp_server() as port:
        result = probe_smtp(
            "127.0.0.1", port, "tls", config=LOCAL, timeout=5, tls_context=trusting(certificates)
        )
    assert (result.ok, result.stage, result.answers) == (False, "tls", [])
    assert result.error.startswith("TLS failed: ")


@pytest.mark.parametrize("then", ["drip", "flood"])
def test_a_hostile_server_cannot_hold_a_probe_past_its_deadline(then: str) -> None:
    """Regression: the timeout applied to each read, so a server dripping a byte at a
    time held the probe (and a portal worker) for a minute, and an endless "220-"
    greeting grew it without bound."""
    with socket_server(b"", then) as port:
        began = time.monotonic()
        result = probe_smtp("127.0.0.1", port, "none", config=LOCAL, timeout=1)
    assert time.monotonic() - began < 3
    assert not result.ok and result.stage == "greeting"


@contextmanager
def counting_server() -> Iterator[tuple[int, list[str]]]:
    """An SMTP-speaking TCP server listening on every address of this host; yields its
    port and the list of the clients that reached it."""
    listener = socket.create_server(("", 0), family=socket.AF_INET)
    listener.settimeout(0.1)
    reached: list[str] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                client, peer = listener.accept()
            except TimeoutError:
                continue
            reached.append(peer[0])
            with client, contextlib.suppress(OSError):
                client.sendall(b"220 got as far as the greeting\r\n")

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1], reached
    finally:
        stopping.set()
        acceptor.join(5)
        listener.close()


def own_address() -> str | None:
    """The address this host's outgoing traffic leaves from (one of its interfaces'),
    or None without a route (no packet is sent: a UDP connect only picks the route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(("198.51.100.1", 9))
        except OSError:
            return None
        address: str = udp.getsockname()[0]
    return None if address.startswith("127.") else address


def test_this_hosts_own_addresses_are_refused_before_any_connection() -> None:
    """Regression (issue #8 A3): a domain admin pointed "test connection" at
    127.0.0.1:5432 and got "got as far as the greeting": the button reached the services
    that listen only for the Continuity host. Its addresses are refused by default,
    whether typed (loopback, unspecified, IPv4 in IPv6, an interface's address) or
    reached through a name that resolves to them (localhost), and nothing connects."""
    default = Config()
    unspecified = "0.0.0.0"  # noqa: S104 (an address typed as a primary, not bound to)
    hosts = ["127.0.0.1", "localhost", unspecified, "127.7.7.7", "::ffff:127.0.0.1"]
    if (mine := own_address()) is not None:
        hosts.append(mine)
    with counting_server() as (port, reached):
        refusals = {}
        for host in hosts:
            with pytest.raises(PrimaryAddressRefused) as refused:
                probe_smtp(host, port, "none", config=default, timeout=2)
            refusals[host] = refused.value.code
            assert "is an address of the Continuity host itself" in str(refused.value)
        allowed = probe_smtp("127.0.0.1", port, "none", config=LOCAL, timeout=2)

    assert refusals == dict.fromkeys(hosts, THIS_HOST)
    assert allowed.answers[:1] == ["220 got as far as the greeting"]  # then it hung up
    assert reached == ["127.0.0.1"]  # only the probe the operator allowed came through


def test_link_local_and_ipv6_loopback_are_this_host() -> None:
    for host in ("169.254.10.20", "::1", "fe80::1", "::"):
        with pytest.raises(PrimaryAddressRefused) as refused:
            probe_smtp(host, 25, "none", config=Config(), timeout=1)
        assert refused.value.code == THIS_HOST, host


def test_an_operators_denied_network_is_refused_even_where_local_primaries_are_allowed() -> None:
    config = Config(
        gateway={
            "allow_local_primary": True,
            "deny_primary_networks": (ipaddress.ip_network("127.0.0.0/8"),),
        }
    )
    with counting_server() as (port, reached), pytest.raises(PrimaryAddressRefused) as refused:
        probe_smtp("localhost", port, "none", config=config, timeout=2)
    assert refused.value.code == DENIED
    assert str(refused.value) == (
        "localhost (127.0.0.1) is in 127.0.0.0/8, a network refused by"
        " [gateway] deny_primary_networks"
    )
    assert reached == []


def test_a_name_that_does_not_resolve_fails_at_connect() -> None:
    result = probe_smtp("no-such-host.invalid", 25, "none", config=Config(), timeout=2)
    assert (result.ok, result.stage) == (False, "connect")
    assert result.error == "no-such-host.invalid does not resolve to an address"
