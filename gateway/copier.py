"""Standby copies: claims due copies and delivers them over LMTP into the covered
person's standby mailbox, whatever the primary does.

A standby store that is down delays copies (retried with back-off, tracked on each
copy), never the delivery to the primary: copies are rows of their own. The store knows
only the people in its users file, which the gateway keeps current from the roster; a
copy refused as unknown makes the copier write the file again and try once more, so a
person covered a moment ago is not missed.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.standby import CopyResult, StandbyStore
from gateway.standby_users import refresh_users_file
from roster.logs import log_event
from roster.models import COPY_DONE, COPY_FAILED, COPY_PENDING, utcnow
from roster.queue import (
    Copy,
    CopyOutcome,
    claim_copies,
    copies_due,
    record_copies,
    renew_copy_claims,
    writing,
)

log = logging.getLogger("continuity.gateway")

COPY_BACKOFF_SECONDS = (10, 30, 60, 300, 900)
BATCH = 50
USERS_FILE_SETTLE_SECONDS = 2
# The gateway that writes the users file looks at the roster this often (service.py);
# a gateway that does not write it gives a refused copy one more try after that.
USERS_REFRESH_SECONDS = 10.0
ANOTHER_WRITER_SECONDS = USERS_REFRESH_SECONDS + USERS_FILE_SETTLE_SECONDS + 3
RECORD_EVERY = 10  # outcomes a copier hands to the recorder at a time
RECORDER_BACKLOG = 16  # handed-over groups waiting to be written before copiers wait
RECORD_RETRY_SECONDS = (0.5, 2.0, 5.0)  # pauses before writing outcomes again


def next_copy_attempt(attempts: int, now: datetime) -> datetime:
    """When to try a copy again after ``attempts`` failed attempts."""
    step = COPY_BACKOFF_SECONDS[min(max(attempts, 1), len(COPY_BACKOFF_SECONDS)) - 1]
    return now + timedelta(seconds=step)


class UsersFile:
    """The standby store's users file, written from the roster when asked (one writer
    at a time in this process)."""

    def __init__(self, engine: Engine, path: str | os.PathLike[str] | None) -> None:
        self.engine = engine
        self.path = path
        self._lock = threading.Lock()
        self._changed_at = float("-inf")

    def refresh(self) -> bool:
        """Write the covered addresses; True when the file changed now or only moments
        ago (another thread's write that Dovecot, which reads the file at most once a
        second, may not have seen when it refused a copy)."""
        if self.path is None:
            return False
        with self._lock, Session(self.engine) as session:
            changed = refresh_users_file(session, self.path)
            now = time.monotonic()
            if changed:
                self._changed_at = now
            recent = now - self._changed_at < USERS_FILE_SETTLE_SECONDS + 1
        if changed:
            log_event(log, logging.INFO, "standby_users_written")
        return recent


Outcome = tuple[Copy, CopyResult, str, datetime | None]  # the copy, its result, status, retry


class Recorder:
    """Writes the copiers' outcomes, on a thread of its own, all that are waiting in one
    transaction. A copier hands its outcomes over and goes on to its next copy: its LMTP
    connection no longer waits while the roster is written (a copier spent a sixth of
    its time writing), and on SQLite the copiers no longer queue for its one writer.

    A crash loses at most the outcomes not yet written: those copies are made again
    once their claims lapse (as a crash between a copy and its outcome always could).
    """

    def __init__(self, engine: Engine, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self._waiting: queue.Queue[tuple[str, list[Outcome]]] = queue.Queue(RECORDER_BACKLOG)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def start(self) -> None:
        """Start writing."""
        with self._lock:
            self._closed.clear()
            self._thread = threading.Thread(target=self._run, name="copy-outcomes", daemon=True)
            self._thread.start()

    def hand_over(self, worker: str, outcomes: list[Outcome]) -> None:
        """Outcomes of copies claimed by ``worker``, to be written: by the recorder's
        thread, waiting while many are waiting already; at once by the caller when the
        thread is not running (or stopped meanwhile)."""
        while True:
            with self._lock:  # handed over only while the thread will still read them
                running = self._thread is not None and not self._closed.is_set()
                if running:
                    try:
                        self._waiting.put_nowait((worker, outcomes))
                        return
                    except queue.Full:
                        pass
            if not running:
                self._write_retrying([(worker, outcomes)])
                return
            time.sleep(0.01)  # the thread is busy writing: wait for room

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is waiting, then stop (outcomes handed over later are written by
        whoever hands them over)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._closed.set()
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                groups = [self._waiting.get(timeout=0.2)]
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            while True:
                try:
                    groups.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            self._write_retrying(groups)

    def _write_retrying(self, groups: Sequence[tuple[str, list[Outcome]]]) -> None:
        """``write``, tried again a few times (SQLite busy, a database hiccup): an
        outcome not written makes its copy again once the claim lapses."""
        for pause in (*RECORD_RETRY_SECONDS, None):
            try:
                self.write(groups)
                return
            except Exception as error:
                log_event(
                    log,
                    logging.ERROR,
                    "copy_outcomes_failed",
                    error=type(error).__name__,
                    detail=str(error)[:200],
                    outcomes=sum(len(outcomes) for _worker, outcomes in groups),
                    again=pause is not None,
                )
                if pause is None:
                    return
                time.sleep(pause)

    def write(self, groups: Sequence[tuple[str, list[Outcome]]]) -> None:
        """Write ``groups`` of outcomes in one transaction, then log each copy."""
        # Not waiting for the disk (PostgreSQL): an outcome lost in a crash of the
        # database server only makes the copy again.
        with writing(self.engine, durable=False) as connection:
            record_copies(
                connection,
                [
                    CopyOutcome(
                        copy.id, status, f"{result.code or ''} {result.reply}", retry, worker
                    )
                    for worker, outcomes in groups
                    for copy, result, status, retry in outcomes
                ],
            )
        for _worker, outcomes in groups:
            for copy, result, status, _retry in outcomes:
                log_event(
                    log,
                    logging.INFO if status != COPY_FAILED else logging.WARNING,
                    "standby_copy",
                    queue_id=copy.queue_id,
                    status=status,
                    attempt=copy.attempts + 1,
                    reply=result.reply[:200],
                )


class Copier:
    """One copy loop; the gateway's copiers share one pool of LMTP connections and one
    recorder of their outcomes."""

    def __init__(
        self,
        engine: Engine,
        store: StandbyStore,
        users: UsersFile,
        worker: str,
        *,
        lease: timedelta,
        recorder: Recorder | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.users = users
        self.worker = worker
        self.lease = lease
        self.recorder = recorder or Recorder(engine, worker)
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def run(self, idle: float = 1.0) -> None:
        """Copy until stopped; sleep ``idle`` when nothing is due."""
        while not self.stopping.is_set():
            try:
                worked = self.run_once()
            except Exception as error:  # a database hiccup must not end the loop
                log_event(
                    log,
                    logging.ERROR,
                    "copier_failed",
                    error=type(error).__name__,
                    detail=str(error)[:200],
                )
                worked = 0
            if not worked:
                self.wake.wait(idle)
                self.wake.clear()

    def run_once(self) -> int:
        """Claim due copies and deliver them; how many were tried."""
        with self.engine.connect() as connection:
            if not copies_due(connection):
                return 0
        with writing(self.engine, durable=False) as connection:
            copies = claim_copies(connection, self.worker, limit=BATCH, lease=self.lease)
        # Outcomes go to the recorder a few at a time (a transaction per copy queued the
        # copiers on SQLite's one writer: copies ran at 0.43 of Dovecot's rate). A crash
        # can repeat at most the copies whose outcomes were not yet written.
        outcomes: list[tuple[Copy, CopyResult, float | None]] = []
        ours, renewed = {copy.id for copy in copies}, time.monotonic()
        for copy in copies:
            # A batch into a slow store (a stalled disk) must not outlast its claim:
            # another gateway would take the copies not made yet, or made but with their
            # outcomes still to be written, and make them again.
            if time.monotonic() - renewed > self.lease.total_seconds() / 2:
                with writing(self.engine, durable=False) as connection:
                    ids = [claimed.id for claimed in copies]
                    ours = renew_copy_claims(connection, self.worker, ids, self.lease)
                renewed = time.monotonic()
            if copy.id not in ours:
                continue  # its claim lapsed and another copier has it now
            result = self._copy(copy)
            outcomes.append((copy, result, self._again_in(copy, result)))
            if len(outcomes) >= RECORD_EVERY:
                self._record(outcomes)
                outcomes = []
        if outcomes:
            self._record(outcomes)
        return len(copies)

    def _copy(self, copy: Copy) -> CopyResult:
        return self.store.deliver(copy.body, [copy.mailbox], sender=copy.sender)[copy.mailbox]

    def _again_in(self, copy: Copy, result: CopyResult) -> float | None:
        """Seconds until a copy refused as unknown is tried once more, or None.

        A copy is made only for a person the roster covers, so the store refusing the
        mailbox means its users file lags the roster: the person was covered a moment
        ago. When writing the file changes it, once Dovecot has read it (it looks at the
        file at most once a second); when another gateway writes it, once after its next
        look at the roster.
        """
        if not result.permanent or result.code is None:
            return None  # a refusal without the store's word (no mailbox can have it)
        if self.users.refresh():
            return USERS_FILE_SETTLE_SECONDS
        # Once: unless the store refused it as unknown before (another kind of failure,
        # a store down for a moment, leaves the copy its one more try).
        if self.users.path is None and not copy.last_reply.startswith("5"):
            return ANOTHER_WRITER_SECONDS
        return None

    def _record(self, outcomes: list[tuple[Copy, CopyResult, float | None]]) -> None:
        now = utcnow()
        rows: list[Outcome] = []
        for copy, result, again_in in outcomes:
            if result.copied:
                status, retry = COPY_DONE, None
            elif again_in is not None:
                status, retry = COPY_PENDING, now + timedelta(seconds=again_in)
            elif result.permanent:
                status, retry = COPY_FAILED, None
            else:
                status, retry = COPY_PENDING, next_copy_attempt(copy.attempts + 1, now)
            rows.append((copy, result, status, retry))
        self.recorder.hand_over(self.worker, rows)
