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
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.standby import CopyResult, StandbyStore
from gateway.standby_users import refresh_users_file
from roster.logs import log_event
from roster.models import COPY_DONE, COPY_FAILED, COPY_PENDING, utcnow
from roster.queue import Copy, claim_copies, copies_due, record_copy, writing

log = logging.getLogger("continuity.gateway")

COPY_BACKOFF_SECONDS = (10, 30, 60, 300, 900)
BATCH = 50
USERS_FILE_SETTLE_SECONDS = 2
# The gateway that writes the users file looks at the roster this often (service.py);
# a gateway that does not write it gives a refused copy one more try after that.
USERS_REFRESH_SECONDS = 10.0
ANOTHER_WRITER_SECONDS = USERS_REFRESH_SECONDS + USERS_FILE_SETTLE_SECONDS + 3
RECORD_EVERY = 10  # outcomes written per transaction


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


class Copier:
    """One copy loop; the gateway's copiers share one pool of LMTP connections."""

    def __init__(
        self,
        engine: Engine,
        store: StandbyStore,
        users: UsersFile,
        worker: str,
        *,
        lease: timedelta,
    ) -> None:
        self.engine = engine
        self.store = store
        self.users = users
        self.worker = worker
        self.lease = lease
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
        # Outcomes are written a few at a time, in one transaction each: a transaction
        # per copy queued the copiers on SQLite's one writer (copies ran at 0.43 of
        # Dovecot's rate). A crash can repeat at most the copies not yet written.
        outcomes: list[tuple[Copy, CopyResult, float | None]] = []
        for copy in copies:
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
        if not result.permanent:
            return None
        if self.users.refresh():
            return USERS_FILE_SETTLE_SECONDS
        if self.users.path is None and copy.attempts == 0:
            return ANOTHER_WRITER_SECONDS
        return None

    def _record(self, outcomes: list[tuple[Copy, CopyResult, float | None]]) -> None:
        now = utcnow()
        rows = []
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
        # Not waiting for the disk (PostgreSQL): an outcome lost in a crash of the
        # database server only makes the copy again.
        with writing(self.engine, durable=False) as connection:
            for copy, result, status, retry in rows:
                reply = f"{result.code or ''} {result.reply}"
                record_copy(connection, copy.id, status, reply, retry, worker=self.worker)
        for copy, result, status, _ in rows:
            log_event(
                log,
                logging.INFO if status != COPY_FAILED else logging.WARNING,
                "standby_copy",
                queue_id=copy.queue_id,
                status=status,
                attempt=copy.attempts + 1,
                reply=result.reply[:200],
            )
