"""Standby copies: claims due copies and delivers them over LMTP into the covered
person's standby mailbox, whatever the primary does.

A standby store that is down delays copies (retried with back-off, tracked on each
copy), never the delivery to the primary: copies are rows of their own.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import Engine

from roster.logs import log_event
from roster.models import COPY_DONE, COPY_FAILED, COPY_PENDING, utcnow
from roster.queue import claim_copies, record_copy, writing

log = logging.getLogger("continuity.gateway")

COPY_BACKOFF_SECONDS = (10, 30, 60, 300, 900)
BATCH = 50


def next_copy_attempt(attempts: int, now: datetime) -> datetime:
    """When to try a copy again after ``attempts`` failed attempts."""
    step = COPY_BACKOFF_SECONDS[min(max(attempts, 1), len(COPY_BACKOFF_SECONDS)) - 1]
    return now + timedelta(seconds=step)


class Copier:
    """One copy loop over one LMTP connection; a gateway runs a few of them."""

    def __init__(
        self, engine: Engine, lmtp: tuple[str, int] | None, worker: str, *, lease: timedelta
    ) -> None:
        self.engine = engine
        self.worker = worker
        self.lease = lease
        from gateway.standby import StandbyStore

        self.store = StandbyStore(lmtp[0], lmtp[1], connections=1) if lmtp else None
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def run(self, idle: float = 1.0) -> None:
        """Copy until stopped; sleep ``idle`` when nothing is due."""
        try:
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
        finally:
            if self.store is not None:
                self.store.close()

    def run_once(self) -> int:
        """Claim due copies and deliver them; how many were tried."""
        if self.store is None:
            return 0
        with writing(self.engine) as connection:
            copies = claim_copies(connection, self.worker, limit=BATCH, lease=self.lease)
        for copy in copies:
            result = self.store.deliver(copy.body, [copy.mailbox])[copy.mailbox]
            now = utcnow()
            if result.copied:
                status, retry = COPY_DONE, None
            elif result.permanent:
                status, retry = COPY_FAILED, None
            else:
                status, retry = COPY_PENDING, next_copy_attempt(copy.attempts + 1, now)
            with writing(self.engine) as connection:
                record_copy(connection, copy.id, status, result.reply, retry)
            log_event(
                log,
                logging.INFO if status != COPY_FAILED else logging.WARNING,
                "standby_copy",
                queue_id=copy.queue_id,
                status=status,
                attempt=copy.attempts + 1,
                reply=result.reply[:200],
            )
        return len(copies)
