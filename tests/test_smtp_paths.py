"""The gateway reads MAIL and RCPT paths of the usual shape itself: for every path it
must give what aiosmtpd's reader gives (the address and the rest), and send anything
else to that reader."""

from __future__ import annotations

import random

import pytest
from aiosmtpd.smtp import SMTP

from gateway.receiver import _PLAIN_PATH, GatewaySMTP

USUAL = [
    "<ana@acme.test>",
    "<ana@acme.test> SIZE=10240",
    "<ana@acme.test>  SIZE=10240 BODY=8BITMIME",
    "<ana@acme.test>\tSIZE=1",
    "<ana@acme.test> ",
    "<ANA.Maria+tag@Mail.Acme-Corp.Test>",
    "<o'brien!x#y$z%w&v*u/t=s?r^q_p`o{n|m}l~k-j@a.b>",
    "<a@b>x",
    "<ana@acme.test>>",
    "<a@b>SIZE=1",
    "<a@b.-c>",
    "<a@1.2.3.4>",
]
ELSE = [
    "<>",
    "<> SIZE=1",
    "<ana@acme.test>(a comment) SIZE=1",
    "<ana@acme.test> (a comment) SIZE=1",
    "<a..b@acme.test>",
    "<.a@acme.test>",
    "<a.@acme.test>",
    '<"a b"@acme.test>',
    "<a@[127.0.0.1]>",
    "<a@[IPv6:::1]>",
    "<@relay.test:ana@acme.test>",
    "<@a.test,@b.test:ana@acme.test>",
    "<ana@acme.test.>",
    "<ana@-acme.test>",
    "<ana @acme.test>",
    "<ana@ acme.test>",
    "< ana@acme.test>",
    "<ana@acme.test >",
    "ana@acme.test",
    " <ana@acme.test>",
    "<ana@acme.test",
    "<ana>",
    "<@acme.test>",
    "<ana@>",
    "<ñandú@acme.test>",
    "<ana@açme.test>",
    "<<ana@acme.test>>",
    "<a(b)@acme.test>",
    "<a\\@b@acme.test>",
    "<=?utf-8?q?ana?=@acme.test>",
    "<=?utf-8?q?victim=40evil.test?=@acme.test>",
    "",
]
ALPHABET = "aZ09.-_+'@<>  \t()\"\\[]:,;!#=?éx"


def reference(arg: str) -> tuple[str | None, str | None] | str:
    """aiosmtpd's own reading of ``arg``, or the name of what it raised."""
    try:
        return SMTP._getaddr(reader(), arg)
    except Exception as error:  # noqa: BLE001 - compared, not hidden
        return type(error).__name__


def ours(arg: str) -> tuple[str | None, str | None] | str:
    try:
        return reader()._getaddr(arg)
    except Exception as error:  # noqa: BLE001 - compared, not hidden
        return type(error).__name__


def reader(local_part_limit: int = 0) -> GatewaySMTP:
    """A server object with only what reading a path needs (no connection)."""
    server = GatewaySMTP.__new__(GatewaySMTP)
    server.local_part_limit = local_part_limit
    return server


@pytest.mark.parametrize("arg", USUAL)
def test_a_usual_path_is_read_without_the_header_parser_to_the_same_result(arg: str) -> None:
    assert _PLAIN_PATH.match(arg) is not None
    assert ours(arg) == reference(arg)


@pytest.mark.parametrize("arg", ELSE)
def test_any_other_path_goes_to_aiosmtpd_unchanged(arg: str) -> None:
    assert _PLAIN_PATH.match(arg) is None or "=?" in arg  # encoded words: aiosmtpd's
    assert ours(arg) == reference(arg)


def test_random_paths_read_the_same_both_ways() -> None:
    """Thousands of paths made of the characters that matter, around and inside the
    usual shape: every one reads the same; many take the new way."""
    chance = random.Random(20261130)  # noqa: S311 - test data, not secrets
    taken = 0
    for _ in range(20000):
        local = "".join(chance.choice(ALPHABET) for _ in range(chance.randint(0, 6)))
        domain = "".join(chance.choice(ALPHABET) for _ in range(chance.randint(0, 6)))
        tail = "".join(chance.choice(ALPHABET) for _ in range(chance.randint(0, 4)))
        if chance.random() < 0.5:
            local = local.strip(' \t<>@()"\\[]:,;.é') or "a"
            domain = domain.strip(" \t<>@()\"\\[]:,;.é'+_!#=") or "b"
        arg = f"<{local}@{domain}>{tail}"
        taken += _PLAIN_PATH.match(arg) is not None
        assert ours(arg) == reference(arg), arg
    assert taken > 2000


def test_the_local_part_limit_holds_on_both_ways() -> None:
    """With a limit on local parts (aiosmtpd's local_part_limit), a longer one is
    malformed whichever way the path is read."""
    limited = reader(local_part_limit=8)
    assert limited._getaddr("<abcdefgh@acme.test>") == ("abcdefgh@acme.test", "")
    assert limited._getaddr("<abcdefghi@acme.test>") == (None, None)
    assert limited._getaddr('<"abcdefghi"@acme.test>') == (None, None)
