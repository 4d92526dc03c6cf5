"""The queue runner: claims due recipients, delivers them to their primary server (or
notices through the outbound relay), records each outcome, retries with growing
back-off, tells senders of delays and failures.

Several runners (threads of one gateway, or gateways on several hosts sharing one
PostgreSQL roster) work the same queue: a claim is a lease, so rows of a runner that
died are taken by another once their lease has lapsed.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, select

from gateway import dsn
from gateway.delivery import Result, SessionFailed, Target, deliver_batch
from roster.config import Config
from roster.logs import log_event
from roster.models import BOUNCED, DEFERRED, DELIVERED, ROUTE_RELAY, Domain, utcnow
from roster.primary_address import (
    PrimaryAddressRefused,
    PrimaryUnresolved,
    check_primary_address,
    resolve_primary,
)
from roster.queue import (
    Delivery,
    Incoming,
    Outcome,
    Recipient,
    claim_deliveries,
    delay_notified,
    deliveries_due,
    mark_delay_notified,
    new_queue_id,
    record_outcomes,
    store,
    writing,
)

log = logging.getLogger("continuity.gateway")

# RFC 5321 4.5.4.1: retry after at least 30 minutes in general; start sooner for the
# short hiccups a primary has (a restart), and grow to an hour.
BACKOFF_SECONDS = (60, 300, 900, 1800, 3600)
RESOLVE_TIMEOUT = 10.0


def next_attempt(attempts: int, now: datetime) -> datetime:
    """When to try again after ``attempts`` failed attempts (1 for the first)."""
    step = BACKOFF_SECONDS[min(max(attempts, 1), len(BACKOFF_SECONDS)) - 1]
    return now + timedelta(seconds=step)


@dataclass
class RunnerSettings:
    """What the runner needs from the configuration."""

    hostname: str
    lease: timedelta = timedelta(minutes=5)
    delay_warning: timedelta = timedelta(hours=4)
    lifetime: timedelta = timedelta(days=5)
    batch: int = 100
    ca_file: str | None = None
    relay: tuple[str, int] | None = None
    relay_username: str | None = None
    relay_password: str | None = None
    backoff: tuple[int, ...] = BACKOFF_SECONDS
    languages: dict[int, str] = field(default_factory=dict)


class QueueRunner:
    """One delivery loop; a gateway runs a few of them in threads."""

    def __init__(self, engine: Engine, config: Config, settings: RunnerSettings, worker: str):
        self.engine = engine
        self.config = config
        self.settings = settings
        self.worker = worker
        self.stopping = threading.Event()
        self.wake = threading.Event()

    # -- the loop --------------------------------------------------------------
    def run(self, idle: float = 1.0) -> None:
        """Work until stopped: claim, deliver, record; sleep ``idle`` when nothing is due."""
        while not self.stopping.is_set():
            try:
                worked = self.run_once()
            except Exception as error:  # a database hiccup must not end the loop
                log.debug("runner failure", exc_info=True)
                log_event(
                    log,
                    logging.ERROR,
                    "runner_failed",
                    error=type(error).__name__,
                    detail=str(error)[:200],
                )
                worked = 0
            if not worked:
                self.wake.wait(idle)
                self.wake.clear()

    def run_once(self) -> int:
        """One round: claim what is due and deliver it; how many messages were tried."""
        with self.engine.connect() as connection:
            if not deliveries_due(connection):
                return 0
        with writing(self.engine) as connection:
            deliveries = claim_deliveries(
                connection, self.worker, limit=self.settings.batch, lease=self.settings.lease
            )
        if not deliveries:
            return 0
        groups: dict[tuple[str, int | None], list[Delivery]] = defaultdict(list)
        for delivery in deliveries:
            groups[(delivery.route, delivery.domain_id)].append(delivery)
        for (route, domain_id), batch in groups.items():
            self._deliver(route, domain_id, batch)
        return len(deliveries)

    # -- one batch -------------------------------------------------------------
    def _deliver(self, route: str, domain_id: int | None, batch: Sequence[Delivery]) -> None:
        try:
            target = (
                self._relay_target() if route == ROUTE_RELAY else self._primary_target(domain_id)
            )
        except SessionFailed as failed:
            for delivery in batch:
                self._record(delivery, failed, host="")
            return
        deliver_batch(
            target,
            batch,
            lambda delivery, result: self._record(delivery, result, host=target.host),
            forward_client=route != ROUTE_RELAY,
        )

    def _primary_target(self, domain_id: int | None) -> Target:
        with self.engine.connect() as connection:
            domain = connection.execute(
                select(
                    Domain.name,
                    Domain.primary_host,
                    Domain.primary_port,
                    Domain.primary_tls,
                    Domain.primary_tls_verify,
                ).where(Domain.id == domain_id)
            ).one_or_none()
        if domain is None or not domain.primary_host:
            raise SessionFailed((0, "no primary server is set for the domain"))
        address = self._checked_address(domain.primary_host, domain.primary_port)
        return Target(
            host=domain.primary_host,
            address=address,
            port=domain.primary_port,
            tls=domain.primary_tls,
            tls_context=self._tls_context(domain.primary_tls_verify),
            require_tls=domain.primary_tls == "starttls" and domain.primary_tls_verify,
            helo=self.settings.hostname,
        )

    def _relay_target(self) -> Target:
        if self.settings.relay is None:
            raise SessionFailed((0, "no [outbound] relay is configured"))
        host, port = self.settings.relay
        return Target(
            host=host,
            address=host,
            port=port,
            tls="starttls",
            tls_context=self._tls_context(True),
            require_tls=bool(self.settings.relay_username),
            username=self.settings.relay_username,
            password=self.settings.relay_password,
            helo=self.settings.hostname,
        )

    def _checked_address(self, host: str, port: int) -> str:
        try:
            addresses = resolve_primary(host, port, RESOLVE_TIMEOUT)
        except PrimaryUnresolved as error:
            raise SessionFailed((0, str(error))) from error
        refusal: PrimaryAddressRefused | None = None
        for address in addresses:
            try:
                check_primary_address(self.config, address, host)
            except PrimaryAddressRefused as error:
                refusal = refusal or error
                continue
            return str(address)
        raise SessionFailed((0, f"refused: {refusal or host}"))

    def _tls_context(self, verify: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.settings.ca_file)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    # -- outcomes --------------------------------------------------------------
    def _record(self, delivery: Delivery, result: Result | SessionFailed, host: str) -> None:
        """Write the outcome of one message's attempt, with any notice it calls for."""
        now = utcnow()
        outcomes: list[Outcome] = []
        failed: list[tuple[int, str, int, str]] = []  # row, address, code, reply
        delayed: list[tuple[int, str, int, str]] = []
        addresses = dict(delivery.recipients)
        if isinstance(result, SessionFailed):
            refused = {row: result.reply for row, _ in delivery.recipients}
            accepted: list[int] = []
        else:
            refused, accepted = result.refused, result.accepted
        expired = now - delivery.received_at >= self.settings.lifetime
        for row in accepted:
            outcomes.append(Outcome(row, DELIVERED, "250 accepted"))
        for row, (code, text) in refused.items():
            reply = f"{code} {text}" if code else text
            if code >= 500 or expired:
                outcomes.append(Outcome(row, BOUNCED, reply))
                failed.append((row, addresses[row], code, text))
            else:
                outcomes.append(
                    Outcome(row, DEFERRED, reply, next_attempt(delivery.attempts + 1, now))
                )
                delayed.append((row, addresses[row], code, text))
        with writing(self.engine) as connection:
            record_outcomes(connection, self.worker, outcomes, now)
            notices = self._notices(connection, delivery, failed, delayed, host, now)
            if notices:
                store(connection, notices)
        for outcome in outcomes:
            log_event(
                log,
                logging.INFO if outcome.status != BOUNCED else logging.WARNING,
                "delivery",
                queue_id=delivery.queue_id,
                route=delivery.route,
                status=outcome.status,
                attempt=delivery.attempts + 1,
                reply=outcome.reply[:200],
            )

    def _notices(
        self,
        connection: Connection,
        delivery: Delivery,
        failed: list[tuple[int, str, int, str]],
        delayed: list[tuple[int, str, int, str]],
        host: str,
        now: datetime,
    ) -> list[Incoming]:
        """A failure notice for bounced recipients, and a delay notice (once) for those
        deferred past the warning time; none for the null sender or a notice."""
        if delivery.route == ROUTE_RELAY or not (failed or delayed):
            return []
        header_block = delivery.body.split(b"\r\n\r\n", 1)[0]
        if not dsn.should_notify(delivery.sender, header_block):
            return []
        language = self.settings.languages.get(delivery.domain_id or 0, "en")
        mta, daemon = self.settings.hostname, f"MAILER-DAEMON@{self.settings.hostname}"
        notices = []
        if failed:
            reports = [
                dsn.RecipientReport(a, c or None, t, host or None, now) for _, a, c, t in failed
            ]
            notices.append(
                dsn.build_failure(
                    header_block,
                    delivery.sender,
                    reports,
                    arrival=delivery.received_at,
                    reporting_mta=mta,
                    from_address=daemon,
                    language=language,
                    now=now,
                )
            )
        if delayed and now - delivery.received_at >= self.settings.delay_warning:
            told = delay_notified(connection, [row for row, *_ in delayed])
            fresh = [entry for entry in delayed if entry[0] not in told]
            if fresh:
                reports = [
                    dsn.RecipientReport(a, c or None, t, host or None, now) for _, a, c, t in fresh
                ]
                notices.append(
                    dsn.build_delay(
                        header_block,
                        delivery.sender,
                        reports,
                        arrival=delivery.received_at,
                        retry_until=delivery.received_at + self.settings.lifetime,
                        reporting_mta=mta,
                        from_address=daemon,
                        language=language,
                        now=now,
                    )
                )
                mark_delay_notified(connection, [row for row, *_ in fresh])
        return [
            Incoming(
                queue_id=new_queue_id(),
                sender="",
                body=notice.data,
                recipients=[Recipient(notice.rcpt_to, 0, known=True)],
                origin="notice",
                route=ROUTE_RELAY,
                received_at=now,
            )
            for notice in notices
        ]
