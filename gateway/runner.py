"""The queue runner: claims due recipients, delivers them to their primary server (or
notices through the outbound relay), records each outcome, retries with growing
back-off, tells senders of delays and failures.

Several runners (threads of one gateway, or gateways on several hosts sharing one
PostgreSQL roster) work the same queue: a claim is a lease, so rows of a runner that
died are taken by another once their lease has lapsed.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, select

from gateway import dsn, event_notices
from gateway.delivery import (
    Result,
    SessionFailed,
    Target,
    deliver_batch,
    primary_target,
    tls_context,
)
from roster.config import Config
from roster.continuity import failure_counts, record_check
from roster.logs import log_event
from roster.models import BOUNCED, DEFERRED, DELIVERED, ROUTE_PRIMARY, ROUTE_RELAY, Domain, utcnow
from roster.queue import (
    Delivery,
    Incoming,
    Outcome,
    Recipient,
    claim_deliveries,
    delay_notified,
    deliveries_due,
    keep_claims,
    mark_delay_notified,
    message_body,
    new_queue_id,
    record_outcomes,
    renew_claim,
    store,
    writing,
)

log = logging.getLogger("continuity.gateway")

# RFC 5321 4.5.4.1: retry after at least 30 minutes in general; start sooner for the
# short hiccups a primary has (a restart), and grow to an hour.
BACKOFF_SECONDS = (60, 300, 900, 1800, 3600)


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
    max_held: timedelta = timedelta(days=30)
    batch: int = 100
    ca_file: str | None = None
    relay: tuple[str, int] | None = None
    relay_username: str | None = None
    relay_password: str | None = None
    backoff: tuple[int, ...] = BACKOFF_SECONDS


class QueueRunner:
    """One delivery loop; a gateway runs a few of them in threads."""

    def __init__(self, engine: Engine, config: Config, settings: RunnerSettings, worker: str):
        self.engine = engine
        self.config = config
        self.settings = settings
        self.worker = worker
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.teller = event_notices.Teller(
            engine, event_notices.settings_from(config, settings.hostname)
        )

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
        self.teller.join(10.0)

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
        verdicts: list[tuple[bool, str] | None] = []
        try:
            target = (
                self._relay_target() if route == ROUTE_RELAY else self._primary_target(domain_id)
            )
        except SessionFailed as failed:
            # Nothing reached a server (no primary set, its address refused, its name
            # unknown): the mail waits, but that is no verdict on the server's health.
            for delivery in batch:
                self._record(delivery, failed, host="")
            return
        told: list[SessionFailed] = []

        def heard(delivery: Delivery, result: Result | SessionFailed) -> None:
            if (
                isinstance(result, SessionFailed)
                and not result.reply[0]
                and route == ROUTE_PRIMARY
                and domain_id is not None
                and not told
                and not any(verdict and verdict[0] for verdict in verdicts)
            ):
                # The primary did not answer, and took nothing of this batch: said before
                # the outcomes are written, so that a hand-back it stops is stopped first
                # (the monitor ends a hand-back once every held message was offered).
                told.append(result)
                self._judge(domain_id, [(False, result.said)], silent=True)
            verdicts.append(self._record(delivery, result, host=target.host))

        with self._claims_kept(batch):
            deliver_batch(
                target,
                batch,
                heard,
                forward_client=route != ROUTE_RELAY,
                still_ours=self._renew,
            )
        if route == ROUTE_PRIMARY and domain_id is not None and not told:
            self._judge(domain_id, verdicts)

    @contextmanager
    def _claims_kept(self, batch: Sequence[Delivery]) -> Iterator[None]:
        """Keep the batch's claims while it is sent, every third of a lease: one message
        to a slow primary can outlast a claim (each reply may take minutes), and another
        runner would send it again."""
        rows = [row for delivery in batch for row, _ in delivery.recipients]
        done = threading.Event()

        def keep() -> None:
            while not done.wait(self.settings.lease.total_seconds() / 3):
                try:
                    with writing(self.engine) as connection:
                        keep_claims(connection, self.worker, rows, self.settings.lease)
                except Exception as error:  # the next round tries again
                    log_event(log, logging.ERROR, "claims_not_kept", error=type(error).__name__)

        keeper = threading.Thread(target=keep, name=f"{self.worker}-claims", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join()

    def _renew(self, delivery: Delivery) -> bool:
        """Renew this runner's claim on a message's recipients just before sending it (a
        batch to a slow primary can outlast the claim it started with) and read its body."""
        with writing(self.engine) as connection:
            rows = [row for row, _ in delivery.recipients]
            if not renew_claim(connection, self.worker, rows, self.settings.lease):
                return False
            # Read now, not with the claim: a batch of large messages is never all in memory.
            delivery.body = message_body(connection, delivery.queue_id)
            return True

    def _judge(
        self, domain_id: int, verdicts: list[tuple[bool, str] | None], *, silent: bool = False
    ) -> None:
        """One verdict on the primary per batch, for failover: a success if any message
        was taken; a failure if the session failed or every message of the batch was
        refused whole (or a reply code the admin listed came back); otherwise none.
        Counting each message would let one batch start an event on its own."""
        known = [v for v in verdicts if v is not None]
        if not known:
            return
        good = [v for v in known if v[0]]
        bad = [v for v in known if not v[0]]
        listed = [v for v in bad if v[1].startswith("listed ")]
        if listed:
            verdict = (False, listed[0][1].removeprefix("listed "))
        elif good:
            verdict = good[0]
        elif len(bad) == len(verdicts):
            verdict = bad[0]
        else:
            return
        with writing(self.engine) as connection:
            transition = record_check(
                connection, domain_id, verdict[0], verdict[1], by_monitor=False, silent=silent
            )
        if transition is not None:
            event_notices.log_transition(transition)
            # After the transition's commit, in a transaction of their own.
            self.teller.poke()

    def _primary_target(self, domain_id: int | None) -> Target:
        with self.engine.connect() as connection:
            domain = connection.execute(
                select(
                    Domain.primary_host,
                    Domain.primary_port,
                    Domain.primary_tls,
                    Domain.primary_tls_verify,
                ).where(Domain.id == domain_id)
            ).one_or_none()
        if domain is None or not domain.primary_host:
            raise SessionFailed((0, "no primary server is set for the domain"))
        return primary_target(
            self.config,
            domain.primary_host,
            domain.primary_port,
            domain.primary_tls,
            domain.primary_tls_verify,
            helo=self.settings.hostname,
            ca_file=self.settings.ca_file,
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
            tls_context=tls_context(self.settings.ca_file, verify=True),
            require_tls=bool(self.settings.relay_username),
            username=self.settings.relay_username,
            password=self.settings.relay_password,
            helo=self.settings.hostname,
        )

    # -- outcomes --------------------------------------------------------------
    def _record(
        self, delivery: Delivery, result: Result | SessionFailed, host: str
    ) -> tuple[bool, str] | None:
        """Write the outcome of one message's attempt, with any notice it calls for; what
        the attempt says of the primary (see ``_judge``)."""
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
        # Mail held in a continuity event does not expire with the ordinary lifetime:
        # outages after ransomware last weeks (up to [gateway] max_held_days).
        lifetime = self.settings.max_held if delivery.via_continuity else self.settings.lifetime
        expired = now - delivery.received_at >= lifetime
        for row in accepted:
            outcomes.append(Outcome(row, DELIVERED, "250 accepted"))
        for row, (raw, text) in refused.items():
            # A garbled reply is no verdict; nor is a failed session (a 5xx greeting, a
            # refused XFORWARD or log-in): it says nothing of this message, which waits.
            code = raw if 400 <= raw < 600 and not isinstance(result, SessionFailed) else 0
            reply = f"{raw} {text}" if raw else text
            if code >= 500 or expired:
                outcomes.append(Outcome(row, BOUNCED, reply))
                failed.append((row, addresses[row], code, text))
            else:
                outcomes.append(
                    Outcome(row, DEFERRED, reply, next_attempt(delivery.attempts + 1, now))
                )
                delayed.append((row, addresses[row], code, text))
        verdict = None
        with writing(self.engine) as connection:
            record_outcomes(connection, self.worker, outcomes, now)
            notices = self._notices(connection, delivery, failed, delayed, host, now)
            if notices:
                store(connection, notices)
            if delivery.route == ROUTE_PRIMARY and delivery.domain_id is not None:
                verdict = self._server_verdict(connection, delivery, result, refused, accepted)
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
        return verdict

    @staticmethod
    def _server_verdict(
        connection: Connection,
        delivery: Delivery,
        result: Result | SessionFailed,
        refused: dict[int, tuple[int, str]],
        accepted: list[int],
    ) -> tuple[bool, str] | None:
        """What this attempt says of the primary as a whole, for failover: a failed
        session, or every recipient of a transaction of several refused, or a reply code
        the admin listed, is a failure; an accepted message a success; a single refused
        recipient (a full mailbox, an unknown user) says nothing of the server."""
        if isinstance(result, SessionFailed):
            return False, result.said
        codes = connection.scalar(
            select(Domain.failover_codes).where(Domain.id == delivery.domain_id)
        )
        for code, text in refused.values():
            if failure_counts(code, codes or ""):
                return False, f"listed {code} {text}"
        if accepted:
            return True, "250 accepted"
        if len(refused) > 1:
            # Every recipient of a transaction of several refused; one refused recipient
            # (a busy or full mailbox) says nothing of the server.
            code, text = next(iter(refused.values()))
            return False, f"every recipient refused: {code} {text}"
        return None

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
        # A refusal of the content or of the sender by the primary's own policy (5.7.x:
        # spam, virus, SPF) is not told to the envelope sender: it is usually forged,
        # and telling would make the gateway a source of backscatter. Tracking shows it.
        failed = [entry for entry in failed if not entry[3].lstrip().startswith("5.7.")]
        if delivery.route == ROUTE_RELAY or not (failed or delayed):
            return []
        body = delivery.body or message_body(connection, delivery.queue_id)
        header_block = body.split(b"\r\n\r\n", 1)[0]
        if not dsn.should_notify(delivery.sender, header_block):
            return []
        language = (
            connection.scalar(select(Domain.language).where(Domain.id == delivery.domain_id))
            if delivery.domain_id is not None
            else None
        ) or "en"
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
                        retry_until=delivery.received_at
                        + (
                            self.settings.max_held
                            if delivery.via_continuity
                            else self.settings.lifetime
                        ),
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
