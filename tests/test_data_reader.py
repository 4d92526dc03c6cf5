"""The gateway's DATA reader (gateway/receiver.py ``read_message``), on asyncio's own
stream reader fed the way a network feeds it: whole, or a byte at a time. The end of
data is CRLF.CRLF and nothing else, wherever the pieces break; what follows it stays in
the stream for the next command. The receiver's tests send the same over a socket."""

from __future__ import annotations

import asyncio

import pytest

from gateway.receiver import (
    SPLIT_UP_TO,
    MemoryBudget,
    NoRoom,
    longest_line,
    read_message,
    unstuffed,
)

NEXT = b"QUIT\r\n"


def read(
    sent: bytes,
    *,
    pieces: int | None = None,
    limit: int | None = None,
    memory: MemoryBudget | None = None,
) -> tuple[bytes | None, bytes]:
    """(what read_message returned, what the stream still held), ``sent`` fed whole
    or in pieces of ``pieces`` bytes, with a stream limit like aiosmtpd's (1001)."""

    async def run() -> tuple[bytes | None, bytes]:
        reader = asyncio.StreamReader(limit=1001)

        async def feed() -> None:
            data = sent + NEXT
            step = pieces or len(data)
            for start in range(0, len(data), step):
                reader.feed_data(data[start : start + step])
                await asyncio.sleep(0)
            reader.feed_eof()

        feeding = asyncio.ensure_future(feed())
        try:
            got = await read_message(reader, limit, memory)
        finally:
            await feeding
        return got, await reader.read()

    return asyncio.run(run())


CASES = [
    # (what the client sends after 354, the message it means)
    (b".\r\n", b""),
    (b"\r\n.\r\n", b"\r\n"),
    (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
    (b"Subject: a\r\n\r\nbody\r\n.\r\n", b"Subject: a\r\n\r\nbody\r\n"),
    (b"..starts with a dot\r\n..\r\n.\r\n", b".starts with a dot\r\n.\r\n"),
    (b".x\r\n.\r\n", b"x\r\n"),
    (b"a\r\n.\r\n", b"a\r\n"),
    (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n"),  # a bare LF ends nothing
    (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n"),  # nor a bare CR
    (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n"),  # nor LF.CRLF (CVE-2023-51764)
    (b"\r\r\n.\r\n", b"\r\r\n"),
    (b"line\r\n" * 2000 + b".\r\n", b"line\r\n" * 2000),
    (
        b"x" * 990 + b"\r\n" + b"y" * 5000 + b"\r\n.\r\n",
        b"x" * 990 + b"\r\n" + b"y" * 5000 + b"\r\n",
    ),
]


@pytest.mark.parametrize("pieces", [None, 1, 2, 3, 4, 5, 7, 1000])
@pytest.mark.parametrize(("sent", "meant"), CASES)
def test_the_message_ends_at_crlf_dot_crlf_and_what_follows_is_left(
    sent: bytes, meant: bytes, pieces: int | None
) -> None:
    got, left = read(sent, pieces=pieces)
    assert got is not None
    assert unstuffed(got) == meant
    assert left == NEXT


def test_a_message_over_the_limit_is_read_to_its_end_and_not_kept() -> None:
    sent = b"z" * 900 + b"\r\n"
    got, left = read(sent * 20 + b".\r\n", limit=18_000)
    assert got is None and left == NEXT
    got, left = read(sent * 20 + b".\r\n", limit=18_040)
    assert got is not None and len(unstuffed(got)) == 18_040 and left == NEXT


@pytest.mark.parametrize("filler", [b"\r\n", b"\r", b"\n", b".\r", b"a.\r\n"])
def test_a_message_of_line_ends_or_dots_alone_meets_the_limit_too(filler: bytes) -> None:
    """Blank lines, bare CRs, dots: none of them escapes the size limit (an earlier
    reader took them a byte at a time, keeping all)."""
    sent = filler * (200_000 // len(filler)) + b"\r\n.\r\n"
    got, left = read(sent, limit=10_000)
    assert got is None and left == NEXT
    got, left = read(sent, pieces=4096, limit=10_000)
    assert got is None and left == NEXT


def test_the_longest_line_is_measured_with_its_crlf() -> None:
    assert longest_line(b"ab\r\nabcd\r\n.\r\n") == 6
    assert longest_line(b"a" * 1000 + b"\r\n.\r\n") == 1002
    # Only CRLF ends a line; a last line without one is counted without it.
    assert longest_line(b"a\rb\nc\r\nxy") == 7
    assert longest_line(b"a\r\nlonger line") == 11
    assert longest_line(b"") == 0
    # A message over SPLIT_UP_TO is measured line by line, the same way.
    big = b"x" * 5 + b"\r\n" + b"y" * SPLIT_UP_TO + b"\r\nz"
    assert len(big) > SPLIT_UP_TO and longest_line(big) == SPLIT_UP_TO + 2
    assert longest_line(big[: SPLIT_UP_TO - 10]) == SPLIT_UP_TO - 17


def test_a_client_gone_in_the_middle_leaves_nothing() -> None:
    async def run() -> None:
        reader = asyncio.StreamReader(limit=1001)
        reader.feed_data(b"Subject: half\r\n" * 100)
        reader.feed_eof()
        await read_message(reader, None)

    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(run())


@pytest.mark.parametrize("pieces", [None, 1, 700])
def test_a_message_the_memory_has_no_room_for_is_read_to_its_end_and_not_kept(
    pieces: int | None,
) -> None:
    """The gateway holds at most so much message data at once: one that does not fit is
    read to its end (the session goes on with the next command) and refused."""
    memory = MemoryBudget(4000)
    memory.take(1000)  # another connection's message, still being read
    with pytest.raises(NoRoom):
        read(b"line\r\n" * 1000 + b".\r\n", pieces=pieces, memory=memory)
    assert memory.used == 1000  # nothing of the refused one is still held
    got, rest = read(b"line\r\n" * 100 + b".\r\n", pieces=pieces, memory=memory)
    assert got == b"line\r\n" * 100 + b".\r\n" and rest == NEXT
    assert memory.used == 1000 + len(got)  # held until the caller gives it back


def test_a_message_alone_is_taken_whatever_its_size() -> None:
    """A limit below the largest message refuses none for good: alone, it is taken."""
    memory = MemoryBudget(100)
    got, _rest = read(b"line\r\n" * 1000 + b".\r\n", pieces=500, memory=memory)
    assert got is not None and memory.used == len(got)


def test_a_refused_size_or_a_lost_client_gives_the_memory_back() -> None:
    memory = MemoryBudget(10_000)
    got, rest = read(b"x" * 900 + b"\r\n" + b"y" * 900 + b"\r\n.\r\n", limit=1000, memory=memory)
    assert got is None and rest == NEXT and memory.used == 0

    async def lost() -> None:
        reader = asyncio.StreamReader(limit=1001)
        reader.feed_data(b"half a message\r\n" * 50)
        reader.feed_eof()
        await read_message(reader, None, memory)

    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(lost())
    assert memory.used == 0
