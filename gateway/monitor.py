"""The primary-health monitor: one per deployment, elected through a lease in the roster.

Every gateway runs this loop; the one holding the ``gateway-monitor`` lease checks each
active domain's primary every ``probe_interval_seconds`` (connect, greeting, EHLO,
through the domain's TLS setting) and records the result with the failover rules of
``roster.continuity``: after ``failures_before_failover`` failures in a row an event
starts, after ``recover_after`` successes during an event the hand-back starts, and an
event whose held mail is all back ends. If that gateway dies, its lease lapses and
another takes over; the events live in the roster, so nothing starts or ends twice.
"""

from __future__ import annotations

import logging
import smtplib
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, or_, select

from gateway import event_notices
from gateway.delivery import SessionFailed, open_session, primary_target
from roster.config import Config
from roster.continuity import (
    Transition,
    events_in_recovery,
    failure_counts,
    finish_recovery,
    record_check,
)
from roster.locks import Lease, LeaseLost, LockHeld
from roster.logs import log_event
from roster.models import ContinuityEvent, Domain, utcnow
from roster.queue import writing

log = logging.getLogger("continuity.gateway")

LEASE_NAME = "gateway-monitor"
LEASE_SECONDS = 15
PROBE_TIMEOUT = 10.0


class Monitor:
    """The monitor loop of one gateway (active only while it holds the lease)."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        *,
        hostname: str,
        ca_file: str | None = None,
        tick: float = 1.0,
    ) -> None:
        self.engine = engine
        self.config = config
        self.hostname = hostname
        self.ca_file = ca_file
        self.tick = tick
        self.stopping = threading.Event()
        self.lease = Lease(engine, LEASE_NAME, LEASE_SECONDS)
        self.holding = False
        self.transitions: list[Transition] = []
        self.teller = event_notices.Teller(engine, event_notices.settings_from(config, hostname))

    def run(self) -> None:
        """Hold (or wait for) the lease, and check the primaries while holding it."""
        while not self.stopping.is_set():
            try:
                if self._hold():
                    self.run_once()
            except Exception as error:  # a database hiccup must not end the loop
                log_event(
                    log,
                    logging.ERROR,
                    "monitor_failed",
                    error=type(error).__name__,
                    detail=str(error)[:200],
                )
            self.stopping.wait(self.tick)
        self.teller.join(10.0)
        if self.holding:
            try:
                self.lease.release()
            except Exception:  # noqa: BLE001 - the lease lapses on its own
                log.debug("monitor lease not released", exc_info=True)

    def _hold(self) -> bool:
        try:
            if self.holding:
                self.lease.renew()
            else:
                self.lease.acquire()
                self.holding = True
                log_event(log, logging.INFO, "monitor_elected", holder=self.lease.holder)
        except LockHeld:
            self.holding = False
        except LeaseLost:
            self.holding = False
            log_event(log, logging.WARNING, "monitor_lease_lost")
        return self.holding

    def run_once(self) -> None:
        """Check every primary that is due, then end the recoveries that are done."""
        now = utcnow()
        with self.engine.connect() as connection:
            domains = connection.execute(
                select(
                    Domain.id,
                    Domain.name,
                    Domain.primary_host,
                    Domain.primary_port,
                    Domain.primary_tls,
                    Domain.primary_tls_verify,
                    Domain.probe_interval_seconds,
                    Domain.failover_codes,
                    Domain.last_check_at,
                ).where(
                    Domain.primary_host.is_not(None),
                    # Active domains, and any with an open event (deactivated during
                    # one): its held mail waits for these checks to be handed back.
                    or_(
                        Domain.continuity_active.is_(True),
                        Domain.id.in_(
                            select(ContinuityEvent.domain_id).where(
                                ContinuityEvent.ended_at.is_(None)
                            )
                        ),
                    ),
                )
            ).all()
        for domain in domains:
            due = domain.last_check_at is None or (
                now - domain.last_check_at >= timedelta(seconds=domain.probe_interval_seconds)
            )
            # The lease is renewed before each check: a round of slow primaries must not
            # outlast it and let a second monitor count the same checks again.
            if due and not self.stopping.is_set() and self._hold():
                self._check(domain)
        ended: list[Transition] = []
        if self.stopping.is_set() or not self._hold():
            return
        with writing(self.engine) as connection:
            for event_id in events_in_recovery(connection):
                finished = finish_recovery(connection, event_id)
                if finished is not None:
                    ended.append(finished)
        for transition in ended:  # noted once committed
            self._note(transition)
        # Tell what others changed too: an admin by hand, another gateway's delivery.
        self.teller.poke()

    def _check(self, domain: Any) -> None:
        ok, reply = check_primary(
            self.config,
            domain,
            helo=self.hostname,
            ca_file=self.ca_file,
        )
        # A slow primary's check (up to 10 s a step) can outlast the lease: a monitor
        # that lost it meanwhile keeps its result to itself, as the new one checks too.
        if not self._hold():
            log_event(log, logging.INFO, "primary_check_dropped", domain=domain.name)
            return
        with writing(self.engine) as connection:
            transition = record_check(connection, domain.id, ok, reply)
        log_event(
            log,
            logging.INFO if ok else logging.WARNING,
            "primary_check",
            domain=domain.name,
            ok=ok,
            reply=reply[:200],
        )
        if transition is not None:
            self._note(transition)

    def _note(self, transition: Transition) -> None:
        self.transitions.append(transition)
        event_notices.log_transition(transition)
        # The transition is committed: its notices go in a transaction of their own.
        self.teller.poke()


def check_primary(
    config: Config, domain: Any, *, helo: str, ca_file: str | None
) -> tuple[bool, str]:
    """One check of a domain's primary, as a delivery would meet it: connect (to an
    allowed address), greeting, EHLO, STARTTLS as the domain says, then MAIL FROM:<> and
    RCPT TO:<postmaster@domain> and RSET, so that a server that greets but takes no mail
    (a full disk answering a listed code such as 452) fails too. A refused postmaster
    (5xx) says nothing of the server's health and passes."""
    try:
        target = primary_target(
            config,
            domain.primary_host,
            domain.primary_port,
            domain.primary_tls,
            domain.primary_tls_verify,
            helo=helo,
            ca_file=ca_file,
        )
        client = open_session(target, timeout=PROBE_TIMEOUT)
    except SessionFailed as failed:
        return False, failed.said
    try:
        code, text = client.docmd("MAIL FROM:<>")
        if code != 250:
            return False, f"MAIL: {code} {text.decode('utf-8', 'replace')}"[:300]
        code, text = client.docmd(f"RCPT TO:<postmaster@{domain.name}>")
        client.rset()
        words = f"{code} {text.decode('utf-8', 'replace')}"[:300]
        if failure_counts(code, domain.failover_codes or "") or 400 <= code < 500:
            return False, f"RCPT: {words}"
        return True, words
    except (OSError, smtplib.SMTPException) as error:
        return False, f"{type(error).__name__}: {error}"[:300]
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()
