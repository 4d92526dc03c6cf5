"""Group commit: the messages that arrive together share one durable commit.

The receiver hands each message over and waits; a committing thread writes everything
that is waiting in one transaction and then wakes every waiter. While a commit runs, the
next messages gather, so the number of commits per second stays near what the disk
allows while the number of messages per commit grows with the load. A 250 goes out only
after the commit that covers its message returned.

One group commits at a time: everything that gathered during a commit goes in the next
one. On PostgreSQL a second thread stands by, on its own connection, for a commit that
stalls (a lock, a slow disk): once the commit under way has held the next messages for
``STALL_SECONDS``, the second thread commits them beside it. Two groups committing side
by side as a rule split the messages into twice as many commits, each with its own
statements and round trips in Python: on a slower 2-core machine that cost 12-20% of the
accepted rate (445-460/s against 500-550/s with one at a time), where on a faster one it
had gained by overlapping WAL flushes. On SQLite, with its one writer, a second thread
would only wait for the first.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, event

from roster.logs import log_event
from roster.queue import Incoming, store

log = logging.getLogger("continuity.gateway")

# Most messages one commit carries: bounds a transaction's size on a burst.
BATCH = 500
# How long a commit may hold back the next messages before a second thread commits them
# (PostgreSQL): far above a commit's usual 2-15 ms, far below a sender's patience.
STALL_SECONDS = 0.2
# A committing thread's connection idle longer than this goes back to the pool at the
# next group, which takes one the pool has checked (pinged).
HELD_IDLE_SECONDS = 1.0


def make_durable(engine: Engine) -> None:
    """On SQLite, make this engine's commits survive a power loss (``synchronous=FULL``).

    The roster runs WAL with ``synchronous=NORMAL``, where a commit may be lost at a power
    cut; a message acknowledged with 250 must not be. PostgreSQL's default already waits
    for the WAL to reach the disk.
    """
    if engine.dialect.name != "sqlite":
        return

    def full(dbapi_connection: object, *_: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    # At every checkout, not only at connect: a connection the pool opened before (the
    # command's schema check) would otherwise keep the roster's synchronous=NORMAL.
    event.listen(engine, "checkout", full)


def committing_threads(engine: Engine) -> int:
    """How many groups may be committing at once on this database (the second only
    beside a stalled one)."""
    return 2 if engine.dialect.name == "postgresql" else 1


class GroupCommitter:
    """Threads that store waiting messages together, one transaction per group."""

    def __init__(self, engine: Engine, threads: int | None = None) -> None:
        self._engine = engine
        self._waiting: queue.Queue[tuple[Incoming, Future[None]] | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._run, name=f"group-commit-{index}", daemon=True)
            for index in range(threads or committing_threads(engine))
        ]
        self._turn = threading.Lock()  # held by the thread whose group commits now
        self._held = threading.local()  # each thread's connection between commits
        self._counting = threading.Lock()
        self.commits = 0
        self.messages = 0
        # Spent writing and committing, summed over the threads: busy/elapsed shows the
        # headroom (up to the number of threads).
        self.seconds = 0.0

    def start(self) -> None:
        """Start the writing threads."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Write what is waiting, then stop."""
        for _ in self._threads:
            self._waiting.put(None)
        for thread in self._threads:
            thread.join()

    def submit(self, message: Incoming) -> Future[None]:
        """Queue ``message`` for the next commit; the future completes once it is durable."""
        done: Future[None] = Future()
        self._waiting.put((message, done))
        return done

    async def store(self, message: Incoming) -> None:
        """Wait until ``message`` is durable (raises if its commit failed)."""
        await asyncio.wrap_future(self.submit(message))

    def _run(self) -> None:
        try:
            while True:
                try:
                    if not self._round():
                        return
                except Exception as error:  # the thread must outlive anything one group does
                    log_event(log, logging.ERROR, "group_commit_failed", error=type(error).__name__)
        finally:
            held = getattr(self._held, "connection", None)
            if held is not None:
                held.close()

    def _round(self) -> bool:
        """Take what is waiting and commit it; False once asked to stop."""
        stopping = False
        first = self._waiting.get()
        if first is None:
            return False
        # The group is gathered once this thread's turn came (or the commit under way
        # stalled), so it holds everything that waited meanwhile.
        turn = self._turn.acquire(timeout=STALL_SECONDS)
        try:
            group = [first]
            while len(group) < BATCH:
                try:
                    item = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                group.append(item)
            # A client that left before its commit (aiosmtpd cancels the waiting handler)
            # can get no 250: its message is not stored, and its sender will send it
            # again. The others' futures are marked running: they can no longer be
            # cancelled.
            live = [
                (message, done) for message, done in group if done.set_running_or_notify_cancel()
            ]
            if live:
                self._commit(live)
        finally:
            if turn:
                self._turn.release()
        return not stopping

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A write transaction on this thread's connection, committed at the end.

        The thread keeps its connection from one commit to the next: taking one from
        the pool for every group cost a ping of the database each time (the pool's
        pre-ping) and a fifth of the Python time of a commit. A connection left idle
        longer than ``HELD_IDLE_SECONDS`` goes back to the pool when the next group
        comes, and the group takes one the pool has checked; one whose transaction
        failed goes back at once (the pool drops it if it was lost).
        """
        held: Connection | None = getattr(self._held, "connection", None)
        self._held.connection = None
        if held is not None and time.monotonic() - self._held.used > HELD_IDLE_SECONDS:
            held.close()
            held = None
        self._held.reused = held is not None
        if held is None:
            held = self._engine.connect().execution_options(begin_immediate=True)
        try:
            with held.begin():
                yield held
        except BaseException:
            held.close()
            raise
        self._held.connection = held
        self._held.used = time.monotonic()

    def _commit(self, group: Sequence[tuple[Incoming, Future[None]]], again: bool = False) -> None:
        started = time.perf_counter()
        try:
            with self._transaction() as connection:
                store(connection, [message for message, _ in group])
        except Exception as error:  # every waiter learns its message was not stored
            log_event(
                log,
                logging.ERROR,
                "queue_commit_failed",
                messages=len(group),
                error=type(error).__name__,
            )
            if self._held.reused and not again:
                # The kept connection may have been lost since its last commit (the
                # database restarted): once more on one the pool has checked.
                self._commit(group, again=True)
                return
            if len(group) > 1:
                # One bad message must not fail its neighbours: store them one by one.
                for item in group:
                    self._commit([item], again=True)
                return
            for _, done in group:
                done.set_exception(error)
            return
        with self._counting:
            self.commits += 1
            self.messages += len(group)
            self.seconds += time.perf_counter() - started
        for _, done in group:
            done.set_result(None)
