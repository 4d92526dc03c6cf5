"""The receiver's checks: relay refusals, the recipient callout against real aiosmtpd
primaries on loopback, limits per client, and the checks of a message's bytes."""

from __future__ import annotations

import asyncio
import email
import smtplib
import ssl
import threading
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from continuity.localslapd import free_port, make_test_ca
from gateway.callout import Callout, Verdict
from gateway.headers import (
    EIGHT_BIT,
    LOOP,
    NOT_UTF8,
    NUL,
    check_message,
    count_received,
    message_id,
    normalise_line_endings,
    protocol,
    received_header,
)
from gateway.limits import (
    TOO_MANY_CONNECTIONS,
    TOO_MANY_MESSAGES,
    TOO_MANY_RECIPIENTS,
    ClientLimits,
    GatewayLimits,
    parse_networks,
)
from gateway.recipients import Recipient, Refusal, check_address, source_route
from tests.servers.smtp import smtp_server


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------
# Recipients: no open relay
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "address", "domain"),
    [
        ("user@acme.test", "user@acme.test", "acme.test"),
        ("User.Name@ACME.Test", "User.Name@acme.test", "acme.test"),
        ("<user@acme.test>", "user@acme.test", "acme.test"),
        ("josé@Bücher.example", "josé@xn--bcher-kva.example", "xn--bcher-kva.example"),
        ('"john smith"@acme.test', '"john smith"@acme.test', "acme.test"),
        ("a-b_c+tag@mx-1.acme.test", "a-b_c+tag@mx-1.acme.test", "mx-1.acme.test"),
    ],
)
def test_an_ordinary_address_is_normalised(given: str, address: str, domain: str) -> None:
    result = check_address(given)
    assert isinstance(result, Recipient)
    assert (result.address, result.domain) == (address, domain)


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("user%other.example@acme.test", "routing local part"),  # the percent hack
        ("other.example!user@acme.test", "routing local part"),  # a bang path
        ('"user@other.example"@acme.test', "routing local part"),  # quoted @
        ("user%other.example@acme.test", "routing local part"),  # "user%other" unquoted
        ('"user%other.example"@acme.test', "routing local part"),
        ('"other!user"@acme.test', "routing local part"),
        ('"user\\@other.example"@acme.test', "routing local part"),
        ("<@relay.example:user@acme.test>", "source route"),
        ("@a.example,@b.example:user@acme.test", "source route"),
        ("user@[192.0.2.1]", "address literal"),
        ("user@[IPv6:2001:db8::1]", "address literal"),
        ("user@-bad.acme.test", "bad domain"),
        ("user@bad_name.acme.test", "bad domain"),
        ("user@acme..test", "bad domain"),
        ("user@192.0.2.1", "bad domain"),
        ("user@" + "a" * 64 + ".test", "bad domain"),
        ("user@" + "☃" * 70 + ".example", "bad domain"),  # no IDNA form
        ("user@acme.test\r\nRCPT TO:<x@y>", "malformed address"),
        ("nobody", "malformed address"),
    ],
)
def test_an_address_that_routes_elsewhere_is_refused(given: str, reason: str) -> None:
    result = check_address(given)
    assert isinstance(result, Refusal)
    assert result.reason == reason
    if reason != "malformed address":
        assert result.reply.startswith("550 5.7.1 ")
        assert "no relay" in result.reply
    assert "\r" not in result.reply and "\n" not in result.reply
    assert result.reply.isascii() and len(result.reply) < 512


def test_source_route_is_found_in_the_raw_argument_only() -> None:
    assert source_route("<@relay.example:user@acme.test>")
    assert source_route(" <@a,@b:user@acme.test>")
    # Spellings of the obsolete route syntax that aiosmtpd's parser takes too.
    assert source_route("<,@relay.example:user@acme.test>")
    assert source_route("< , @relay.example:user@acme.test>")
    assert source_route("<(comment)@relay.example:user@acme.test>")
    assert source_route("@relay.example:user@acme.test")
    assert not source_route("<user@acme.test>")
    assert not source_route('<"@x:y"@acme.test>')
    assert not source_route('<"a\\"@x:y"@acme.test>')
    assert not source_route("<user@acme.test> ORCPT=rfc822;a:b@c")
    assert not source_route("<user@[IPv6:2001:db8::1]>")  # a literal, refused as one


def refuse_source_routes(argument: str) -> str | None:
    """aiosmtpd hands the RCPT hook ``user@d`` for ``<@relay:user@d>``: the receiver
    looks at the raw argument itself, as this server does."""
    if not source_route(argument):
        return None
    refusal = check_address(argument)
    assert isinstance(refusal, Refusal)
    return refusal.reply


class CheckingHandler:
    """An RCPT hook that asks gateway.recipients, as the receiver will."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        result = check_address(address)
        if isinstance(result, Refusal):
            return result.reply
        envelope.rcpt_tos.append(result.address)
        return "250 OK"


@pytest.mark.parametrize(
    "argument",
    [
        "<user%other.example@acme.test>",
        "<other.example!user@acme.test>",
        "<@relay.example:user@acme.test>",
        "<@a.example,@b.example:user@acme.test>",
        "<,@relay.example:user@acme.test>",
        "<(x)@relay.example:user@acme.test>",
        '<"user@other.example"@acme.test>',
        '<"user%other.example"@acme.test>',
        "<user@[127.0.0.1]>",
    ],
)
def test_open_relay_attempts_get_550_from_a_real_server(argument: str) -> None:
    """The issue's open-relay cases, sent by smtplib to an aiosmtpd server using these
    checks: each RCPT is refused with 550 5.7.1, and the server keeps serving."""
    with (
        smtp_server(
            CheckingHandler(), rcpt_argument=refuse_source_routes, enable_SMTPUTF8=True
        ) as port,
        smtplib.SMTP("127.0.0.1", port, timeout=10) as client,
    ):
        client.ehlo("client.example")
        assert client.docmd("MAIL", "FROM:<s@sender.example>")[0] == 250
        code, message = client.docmd("RCPT", f"TO:{argument}")
        assert (code, message[:6]) == (550, b"5.7.1 ")
        assert client.docmd("RCPT", "TO:<user@acme.test>")[0] == 250


# ---------------------------------------------------------------------------
# The callout, against real aiosmtpd primaries
# ---------------------------------------------------------------------------
class CalloutPrimary:
    """A primary's RCPT behaviour, as the callout meets it: "accept", "reject", "defer",
    "hang" or "drop"."""

    def __init__(self, behaviour: str, delay: float = 0.0) -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.senders: list[str] = []
        self.recipients: list[str] = []
        self.ended: list[str] = []  # RSET and QUIT, as they came

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.ended.append("RSET")
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.ended.append("QUIT")
        return "221 Bye"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.senders.append(address)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.recipients.append(address)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.behaviour == "hang":
            await asyncio.sleep(60)
        if self.behaviour == "drop":
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "250 OK"
        if self.behaviour == "reject":
            return "550 5.1.1 <" + address + ">: User unknown in virtual mailbox table"
        if self.behaviour == "defer":
            return "451 4.3.0 Temporary lookup failure"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"


def test_an_address_the_primary_takes_is_accepted_and_remembered() -> None:
    primary = CalloutPrimary("accept")
    callout = Callout(timeout=5)
    with smtp_server(primary) as port:
        first = callout.check("someone@acme.test", "127.0.0.1", port)
        second = callout.check("someone@acme.test", "127.0.0.1", port)
    assert (first.verdict, first.cached) == (Verdict.ACCEPT, False)
    assert first.reply("someone@acme.test") is None
    assert (second.verdict, second.cached) == (Verdict.ACCEPT, True)
    assert primary.recipients == ["someone@acme.test"]  # asked once
    assert primary.senders == ["<>"]  # a null sender: the check sends nothing
    assert primary.ended == ["RSET", "QUIT"]  # and leaves no transaction open


def test_the_primarys_refusal_becomes_our_550_with_its_words() -> None:
    primary = CalloutPrimary("reject")
    clock = Clock()
    callout = Callout(timeout=5, negative_seconds=600, clock=clock)
    with smtp_server(primary) as port:
        result = callout.check("nobody@acme.test", "127.0.0.1", port)
        again = callout.check("nobody@acme.test", "127.0.0.1", port)
        clock.now += 601
        later = callout.check("nobody@acme.test", "127.0.0.1", port)
    assert result.verdict is Verdict.REJECT
    reply = result.reply("nobody@acme.test")
    assert reply is not None and reply.startswith("550 5.1.1 <nobody@acme.test>: ")
    assert "User unknown in virtual mailbox table" in reply
    assert again.cached and again.verdict is Verdict.REJECT
    assert not later.cached
    assert primary.recipients == ["nobody@acme.test", "nobody@acme.test"]


def test_a_positive_answer_is_kept_longer_than_a_negative_one() -> None:
    primary = CalloutPrimary("accept")
    clock = Clock()
    callout = Callout(timeout=5, positive_seconds=3600, negative_seconds=600, clock=clock)
    with smtp_server(primary) as port:
        callout.check("someone@acme.test", "127.0.0.1", port)
        clock.now += 3000
        assert callout.check("someone@acme.test", "127.0.0.1", port).cached
        clock.now += 601
        assert not callout.check("someone@acme.test", "127.0.0.1", port).cached
    assert len(primary.recipients) == 2


def test_a_temporary_refusal_asks_the_sender_to_retry_and_is_not_cached() -> None:
    primary = CalloutPrimary("defer")
    callout = Callout(timeout=5)
    with smtp_server(primary) as port:
        result = callout.check("someone@acme.test", "127.0.0.1", port)
        again = callout.check("someone@acme.test", "127.0.0.1", port)
    assert result.verdict is Verdict.TEMPFAIL
    reply = result.reply("someone@acme.test")
    assert reply is not None and reply.startswith("450 4.3.0 ")
    assert not again.cached
    assert len(primary.recipients) == 2


def test_a_hanging_primary_is_given_up_at_the_deadline() -> None:
    primary = CalloutPrimary("hang")
    callout = Callout(timeout=1.0)
    with smtp_server(primary) as port:
        started = time.monotonic()
        result = callout.check("someone@acme.test", "127.0.0.1", port)
        took = time.monotonic() - started
    assert result.verdict is Verdict.TEMPFAIL
    assert result.answer == "no answer within 1 s"
    assert took < 2.5
    reply = result.reply("someone@acme.test")
    assert reply is not None and reply.startswith("450 4.4.1 ")


def test_a_primary_that_drops_the_connection_is_a_temporary_failure() -> None:
    primary = CalloutPrimary("drop")
    callout = Callout(timeout=5)
    with smtp_server(primary) as port:
        result = callout.check("someone@acme.test", "127.0.0.1", port)
    assert (result.verdict, result.answer) == (
        Verdict.TEMPFAIL,
        "the primary closed the connection",
    )


def test_a_refused_connection_is_a_temporary_failure() -> None:
    result = Callout(timeout=5).check("someone@acme.test", "127.0.0.1", free_port())
    assert result.verdict is Verdict.TEMPFAIL
    assert "refused" in result.answer.lower()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throwaway CA (made with openssl) and a server certificate for 127.0.0.1."""
    return make_test_ca(tmp_path_factory.mktemp("callout-tls"))


def test_starttls_with_the_callers_context(certificates: tuple[Path, Path, Path]) -> None:
    ca, cert, key = certificates
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    primary = CalloutPrimary("accept")
    trusting = ssl.create_default_context(cafile=str(ca))
    with smtp_server(primary, tls_context=server_side, require_starttls=True) as port:
        trusted = Callout(timeout=5).check(
            "someone@acme.test", "127.0.0.1", port, tls="starttls", tls_context=trusting
        )
        untrusted = Callout(timeout=5).check("someone@acme.test", "127.0.0.1", port, tls="starttls")
        wrong_name = Callout(timeout=5).check(
            "someone@acme.test",
            "127.0.0.1",
            port,
            tls="starttls",
            tls_context=trusting,
            server_name="mx.other.example",
        )
    assert trusted.verdict is Verdict.ACCEPT
    assert untrusted.verdict is Verdict.TEMPFAIL and untrusted.answer.startswith("TLS failed")
    assert wrong_name.verdict is Verdict.TEMPFAIL
    assert primary.recipients == ["someone@acme.test"]  # nothing asked without TLS


def test_starttls_asked_of_a_primary_without_it_is_a_temporary_failure() -> None:
    with smtp_server(CalloutPrimary("accept")) as port:
        result = Callout(timeout=5).check("someone@acme.test", "127.0.0.1", port, tls="starttls")
    assert (result.verdict, result.answer) == (
        Verdict.TEMPFAIL,
        "the primary does not offer STARTTLS",
    )


def test_concurrent_checks_of_one_address_share_one_conversation() -> None:
    primary = CalloutPrimary("accept", delay=0.5)
    callout = Callout(timeout=5)
    results: list[Verdict] = []
    with smtp_server(primary) as port:

        def ask() -> None:
            results.append(callout.check("someone@acme.test", "127.0.0.1", port).verdict)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert results == [Verdict.ACCEPT] * 8
    assert primary.recipients == ["someone@acme.test"]


def test_concurrent_checks_share_a_failure_too_and_end_at_the_deadline() -> None:
    primary = CalloutPrimary("hang")
    callout = Callout(timeout=1.0)
    results: list[Verdict] = []
    with smtp_server(primary) as port:

        def ask() -> None:
            results.append(callout.check("someone@acme.test", "127.0.0.1", port).verdict)

        started = time.monotonic()
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        took = time.monotonic() - started
    assert results == [Verdict.TEMPFAIL] * 4
    assert primary.recipients == ["someone@acme.test"]
    assert took < 2.5


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    primary = CalloutPrimary("accept")
    callout = Callout(timeout=5, max_entries=2)
    with smtp_server(primary) as port:
        for name in ("a", "b", "a", "c", "a", "b"):
            callout.check(f"{name}@acme.test", "127.0.0.1", port)
    assert callout.cached() == 2
    # "b" was the least recently used when "c" came, so it was asked about again.
    assert primary.recipients == ["a@acme.test", "b@acme.test", "c@acme.test", "b@acme.test"]


def test_a_primary_without_smtputf8_refuses_an_internationalised_address() -> None:
    primary = CalloutPrimary("accept")
    with smtp_server(primary, enable_SMTPUTF8=False) as port:
        result = Callout(timeout=5).check("josé@acme.test", "127.0.0.1", port)
    assert result.verdict is Verdict.REJECT
    assert primary.recipients == []
    reply = result.reply("josé@acme.test")
    assert reply is not None and reply.startswith("550 5.6.7 ") and reply.isascii()


def test_a_primary_with_smtputf8_is_asked_about_an_internationalised_address() -> None:
    primary = CalloutPrimary("accept")
    with smtp_server(primary, enable_SMTPUTF8=True) as port:
        result = Callout(timeout=5).check("josé@acme.test", "127.0.0.1", port)
    assert result.verdict is Verdict.ACCEPT
    assert primary.recipients == ["josé@acme.test"]


# ---------------------------------------------------------------------------
# Limits per client
# ---------------------------------------------------------------------------
def test_the_defaults_are_generous() -> None:
    limits = GatewayLimits()
    assert (
        limits.max_connections_per_client,
        limits.max_messages_per_minute,
        limits.max_recipients_per_minute,
        limits.callout_positive_seconds,
        limits.callout_negative_seconds,
        limits.max_message_size,
        limits.trusted_networks,
    ) == (50, 1000, 5000, 3600, 600, 50 * 1024 * 1024, ())


def test_connections_past_the_limit_get_421_until_one_ends() -> None:
    limits = ClientLimits(GatewayLimits(max_connections_per_client=3))
    assert [limits.open_connection("192.0.2.1") for _ in range(3)] == [None] * 3
    assert limits.open_connection("192.0.2.1") == TOO_MANY_CONNECTIONS
    assert TOO_MANY_CONNECTIONS.startswith("421 4.7.0 ")
    assert limits.open_connection("192.0.2.2") is None  # another client
    limits.close_connection("192.0.2.1")
    assert limits.open_connection("192.0.2.1") is None


def test_loopback_and_trusted_networks_are_not_limited() -> None:
    settings = GatewayLimits(
        max_connections_per_client=1,
        max_messages_per_minute=1,
        trusted_networks=parse_networks(["198.51.100.0/24", "2001:db8::/32"]),
    )
    limits = ClientLimits(settings)
    for client in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "198.51.100.7", "2001:db8::5"):
        assert [limits.open_connection(client) for _ in range(5)] == [None] * 5
        assert [limits.allow_message(client) for _ in range(5)] == [None] * 5
    assert limits.open_connection("203.0.113.1") is None
    assert limits.open_connection("203.0.113.1") == TOO_MANY_CONNECTIONS


def test_messages_past_the_rate_get_451_and_the_allowance_refills() -> None:
    clock = Clock()
    limits = ClientLimits(GatewayLimits(max_messages_per_minute=5), clock=clock)
    assert [limits.allow_message("192.0.2.1") for _ in range(5)] == [None] * 5
    assert limits.allow_message("192.0.2.1") == TOO_MANY_MESSAGES
    assert TOO_MANY_MESSAGES.startswith("451 4.7.1 ")
    assert limits.allow_message("192.0.2.9") is None  # another client
    clock.now += 12  # a fifth of a minute: one message more
    assert limits.allow_message("192.0.2.1") is None
    assert limits.allow_message("192.0.2.1") == TOO_MANY_MESSAGES


def test_recipients_past_the_rate_get_451() -> None:
    clock = Clock()
    limits = ClientLimits(GatewayLimits(max_recipients_per_minute=10), clock=clock)
    assert [limits.allow_recipient("192.0.2.1") for _ in range(10)] == [None] * 10
    assert limits.allow_recipient("192.0.2.1") == TOO_MANY_RECIPIENTS
    assert limits.allow_message("192.0.2.1") is None  # messages count apart


def test_threads_sharing_the_limits_get_exactly_the_allowance() -> None:
    clock = Clock()  # time stands still: nothing refills
    limits = ClientLimits(GatewayLimits(max_recipients_per_minute=3000), clock=clock)
    allowed: list[int] = []

    def send() -> None:
        allowed.append(sum(limits.allow_recipient("192.0.2.1") is None for _ in range(1000)))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(allowed) == 3000


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    limits = ClientLimits(GatewayLimits(max_messages_per_minute=2))
    assert limits.allow_message("2001:db8:1:2::1") is None
    assert limits.allow_message("2001:db8:1:2::ffff") is None
    assert limits.allow_message("2001:db8:1:2:abcd::9") == TOO_MANY_MESSAGES
    assert limits.allow_message("2001:db8:1:3::1") is None


def test_memory_is_bounded() -> None:
    clock = Clock()
    limits = ClientLimits(GatewayLimits(), max_clients=1000, clock=clock)
    for number in range(5000):
        limits.allow_message(f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}")
    assert limits.tracked() <= 1001
    clock.now += 61  # every allowance has refilled: nothing worth keeping
    limits.allow_message("192.0.2.1")
    limits.allow_recipient("192.0.2.1")
    assert limits.tracked() == 1
    limits.open_connection("192.0.2.2")
    limits.close_connection("192.0.2.2")
    assert limits.tracked() == 1


def test_a_trusted_network_that_is_none_is_named() -> None:
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])


# ---------------------------------------------------------------------------
# The message's bytes
# ---------------------------------------------------------------------------
def test_bare_cr_and_lf_become_crlf() -> None:
    assert normalise_line_endings(b"a\nb\rc\r\nd\r\r\n") == b"a\r\nb\r\nc\r\nd\r\n\r\n"
    clean = b"Subject: x\r\n\r\nbody\r\n"
    assert normalise_line_endings(clean) is clean


def test_a_smuggled_end_of_data_is_an_ordinary_line_after_normalising() -> None:
    """CVE-2023-51764's shape: ``\\n.\\n`` inside DATA. aiosmtpd ends data at CRLF.CRLF
    only; normalised, the smuggled dot is a line of its own, which anyone passing the
    message on dot-stuffs, so it cannot end the data there either."""
    data = b"Subject: hi\r\n\r\nbody\n.\nMAIL FROM:<evil@example>\r\n"
    normal = normalise_line_endings(data)
    assert b"\n" not in normal.replace(b"\r\n", b"")
    assert b"\r" not in normal.replace(b"\r\n", b"")
    assert normal == b"Subject: hi\r\n\r\nbody\r\n.\r\nMAIL FROM:<evil@example>\r\n"


def test_received_headers_are_counted_in_the_header_block_only() -> None:
    headers = b"Received: from a\r\n\tby b; date\r\nRECEIVED: x\r\nreceived : y\r\n"
    headers += b"X-Received: not this\r\nSubject: Received: nor this\r\n"
    body = b"\r\nReceived: in the body\r\n"
    assert count_received(headers + body) == 3


def test_more_than_100_received_headers_is_a_loop() -> None:
    hop = b"Received: from a.example by b.example;\r\n Mon, 30 Nov 2026 03:00:00 +0000\r\n"
    at_limit = hop * 100 + b"Subject: x\r\n\r\nbody\r\n"
    assert check_message(at_limit, smtputf8=False) is None
    assert check_message(hop + at_limit, smtputf8=False) == LOOP
    assert LOOP.startswith("554 5.4.6 ")


def test_eight_bit_headers_need_smtputf8() -> None:
    message = "Subject: café\r\n\r\nbody\r\n".encode()
    assert check_message(message, smtputf8=False) == EIGHT_BIT
    assert check_message(message, smtputf8=True) is None
    eight_bit_body = "Subject: cafe\r\n\r\ncafé\r\n".encode()
    assert check_message(eight_bit_body, smtputf8=False) is None  # 8BITMIME's part
    latin1 = "Subject: café\r\n\r\nbody\r\n".encode("latin-1")
    assert check_message(latin1, smtputf8=True) == NOT_UTF8


def test_nul_is_refused_anywhere() -> None:
    assert check_message(b"Subject: x\r\n\r\nbo\0dy\r\n", smtputf8=True) == NUL
    assert NUL.startswith("554 5.6.0 ")


def test_message_id_is_unfolded_sanitised_and_capped() -> None:
    assert message_id(b"Subject: x\r\nMessage-ID:\r\n <abc@example>\r\n\r\n") == "<abc@example>"
    assert message_id(b"message-id: <a\x07b@example>\r\n\r\n") == "<ab@example>"
    assert message_id(b"Subject: x\r\n\r\nMessage-ID: <in-body@example>\r\n") is None
    long = b"Message-ID: <" + b"x" * 1000 + b"@example>\r\n\r\n"
    assert len(message_id(long) or "") == 250


def test_the_received_line_names_the_client_and_us() -> None:
    when = parsedate_to_datetime("Mon, 30 Nov 2026 03:30:39 +0000")
    line = received_header(
        helo="mx.sender.example",
        client_ip="192.0.2.1",
        our_name="gw.continuity.example",
        with_protocol=protocol(esmtp=True, tls=True, authenticated=False, smtputf8=False),
        queue_id="Q123ABC",
        recipient="user@acme.test",
        when=when,
    )
    assert line == (
        b"Received: from mx.sender.example ([192.0.2.1])\r\n"
        b"\tby gw.continuity.example with ESMTPS id Q123ABC\r\n"
        b"\tfor <user@acme.test>;\r\n"
        b"\tMon, 30 Nov 2026 03:30:39 +0000\r\n"
    )
    parsed = email.message_from_bytes(line + b"Subject: x\r\n\r\nbody\r\n")
    assert parsed["Subject"] == "x"
    assert len(parsed.get_all("Received") or []) == 1


def test_a_hostile_helo_cannot_add_a_header() -> None:
    line = received_header(
        helo="evil.example)\r\nX-Injected: yes\r\n(",
        client_ip="2001:db8::1",
        client_name="host.sender.example",
        our_name="gw.continuity.example",
        with_protocol="ESMTP",
        queue_id="Q1",
    )
    assert line.count(b"\r\n") == 3
    assert b"\nX-Injected" not in line
    assert b"(host.sender.example [IPv6:2001:db8::1])" in line
    assert b" for " not in line  # several recipients: none named
    parsed = email.message_from_bytes(line + b"Subject: x\r\n\r\nbody\r\n")
    assert parsed.keys() == ["Received", "Subject"]


def test_protocol_names() -> None:
    assert protocol(esmtp=False, tls=False, authenticated=False, smtputf8=False) == "SMTP"
    assert protocol(esmtp=True, tls=False, authenticated=False, smtputf8=False) == "ESMTP"
    assert protocol(esmtp=True, tls=True, authenticated=True, smtputf8=False) == "ESMTPSA"
    assert protocol(esmtp=True, tls=True, authenticated=False, smtputf8=True) == "UTF8SMTPS"
    assert protocol(esmtp=True, tls=False, authenticated=False, smtputf8=True) == "UTF8SMTP"
