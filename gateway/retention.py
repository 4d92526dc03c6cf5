"""Retention, the IMAP side and the run: expunge standby mail older than its domain's age
from every covered person's mailboxes (all folders), empty the mailboxes of people no
longer covered once their grace is over, prune the queue, count and log what went.

The store is reached as the portal reaches it: IMAP, the master user with SASL PLAIN and
the person's address as the authorization identity, so it works with a Dovecot on
another host (STARTTLS required off loopback). Old mail is found with ``UID SEARCH
BEFORE`` (the message's arrival in the store, its INTERNALDATE, by date), flagged
``\\Deleted`` and removed with ``UID EXPUNGE`` (UIDPLUS), which leaves alone any other
message a person flagged ``\\Deleted``; without UIDPLUS a plain EXPUNGE does the same job.

A message still waiting for the primary is never removed: the roster knows the queue ids
of the standby copies whose message has a recipient queued or deferred, and every copy
carries the gateway's ``Received:`` line with that id (``... with ESMTP id QUEUEID;``);
its Message-ID is compared too. Only the mailboxes that hold such messages have their
old messages' headers read.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from imapclient import IMAPClient  # type: ignore[import-untyped]
from imapclient.exceptions import (  # type: ignore[import-untyped]
    IMAPClientError,
    LoginError,
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.standby_users import is_mailbox_address, refresh_users_file
from roster.config import Config
from roster.locks import Lease, LockHeld
from roster.logs import log_event
from roster.models import Domain, utcnow
from roster.queue import writing
from roster.retention import (
    FAILED,
    INCOMPLETE,
    LEASE_NAME,
    OK,
    Held,
    RetentionSettings,
    clear_emptying,
    covered_mailboxes,
    finish_run,
    forget_mailbox,
    held_by_mailbox,
    prune_queue,
    retention_due,
    start_run,
    still_uncovered,
    sweep_mailboxes,
)
from roster.standby import holders_copies, mailboxes_of_others, mark_removed, store_uses_tls

log = logging.getLogger("continuity.retention")

LEASE_SECONDS = 900
RENEW_EVERY = 60.0
IMAP_TIMEOUT = 60.0
USERS_FILE_WAIT = 15.0
"""How long a run waits for the store to know a mailbox it must empty (the gateways
write the users file every 10 s; Dovecot reads it within a second)."""
BATCH = 500
DELETED = b"\\Deleted"

_QUEUE_ID = re.compile(rb"\bid\s+([0-9A-Z]{20})\b")
_FOLDED = re.compile(rb"\r?\n[ \t]+")


class StoreUnavailable(Exception):
    """The standby store cannot be reached or refused the master user."""


@dataclass
class RetentionReport:
    """What a run removed (or, in a dry run, would remove)."""

    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str = OK
    mailboxes: int = 0
    mailboxes_failed: int = 0
    messages_expunged: int = 0
    messages_kept_held: int = 0
    uncovered_mailboxes_emptied: int = 0
    uncovered_messages_expunged: int = 0
    uncovered_waiting: int = 0
    # Covered mailboxes that held someone else's mail (the address passed to another
    # person), emptied before their new holder may open the webmail.
    handed_over_emptied: int = 0
    handed_over_messages_expunged: int = 0
    newly_uncovered: int = 0
    covered_again: int = 0
    queue_messages: int = 0
    queue_recipients: int = 0
    queue_copies: int = 0
    bodies_dropped: int = 0
    standby: bool = True
    by_domain: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        """The counts, for the run's record and the log line."""
        shown = asdict(self)
        for key in ("dry_run", "started_at", "finished_at", "outcome"):
            shown.pop(key)
        return shown

    def as_dict(self) -> dict[str, Any]:
        """The --json summary."""
        return {
            "dry_run": self.dry_run,
            "outcome": self.outcome,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "finished_at": self.finished_at.isoformat(timespec="seconds")
            if self.finished_at
            else None,
            **self.counts(),
        }


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StandbyIMAP:
    """Where the store's IMAP is and the master user's credentials."""

    host: str
    port: int
    master_user: str
    master_password: str
    ca_file: str | None = None
    timeout: float = IMAP_TIMEOUT
    tls: bool | None = None  # None: unless the store is on loopback

    @classmethod
    def from_config(cls, config: Config) -> StandbyIMAP | None:
        """From [standby] imap, master_user, master_password, imap_tls and ca_file (as the
        webmail reads them); None when not all needed are set."""
        standby = config.standby
        if not (standby.get("imap") and standby.get("master_password")):
            return None
        host, _, port = str(standby["imap"]).rpartition(":")
        tls = standby.get("imap_tls")
        return cls(
            host.strip("[]"),
            int(port),
            standby.get("master_user", "portal"),
            standby["master_password"],
            standby.get("ca_file"),
            tls=None if tls is None else bool(tls),
        )

    def _uses_tls(self) -> bool:
        return store_uses_tls(self.host, self.tls)

    @contextlib.contextmanager
    def mailbox(self, address: str) -> Iterator[IMAPClient]:
        """Signed in to ``address``'s mailbox as the master user (LoginError when the store
        does not know the address; StoreUnavailable when it cannot be reached)."""
        if not is_mailbox_address(address):
            raise LoginError(f"{address!r} cannot name a standby mailbox")
        try:
            client = IMAPClient(self.host, port=self.port, ssl=False, timeout=self.timeout)
        except (OSError, IMAPClientError) as error:
            raise StoreUnavailable(f"{self.host}:{self.port}: {error}") from error
        try:
            if self._uses_tls():
                # The master password never crosses the network in clear.
                if not client.has_capability("STARTTLS"):
                    raise StoreUnavailable(f"{self.host}:{self.port} offers no STARTTLS")
                client.starttls(ssl.create_default_context(cafile=self.ca_file))
            client.plain_login(self.master_user, self.master_password, address)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()


def _folders(client: IMAPClient) -> list[str]:
    """Every selectable folder of the mailbox."""
    names = []
    for flags, _delimiter, name in client.list_folders():
        if any(f.lower() in (b"\\noselect", b"\\nonexistent") for f in flags):
            continue
        names.append(name)
    return names


def _held_uids(client: IMAPClient, uids: list[int], held: Held) -> set[int]:
    """Which of ``uids`` are copies of messages still waiting for the primary."""
    kept: set[int] = set()
    part = b"BODY[HEADER.FIELDS (RECEIVED MESSAGE-ID)]"
    for start in range(0, len(uids), BATCH):
        fetched = client.fetch(
            uids[start : start + BATCH], ["BODY.PEEK[HEADER.FIELDS (RECEIVED MESSAGE-ID)]"]
        )
        for uid, data in fetched.items():
            headers = _FOLDED.sub(b" ", data.get(part, b""))
            for line in headers.split(b"\n"):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"received":
                    ids = {m.decode() for m in _QUEUE_ID.findall(value)}
                    if ids & held.queue_ids:
                        kept.add(uid)
                elif (
                    name == b"message-id"
                    and value.strip().decode("utf-8", "replace") in held.message_ids
                ):
                    kept.add(uid)
    return kept


def expunge(
    client: IMAPClient,
    criteria: list[Any],
    held: Held | None,
    *,
    dry_run: bool,
    between: Callable[[], None] = lambda: None,
) -> tuple[int, int, bool]:
    """Remove the messages matching ``criteria`` in every folder, but those ``held``:
    (removed, kept because held, every folder empty afterwards). ``between`` runs before
    each batch (the lease's renewal, for a very large folder)."""
    removed = kept = 0
    empty = True
    uidplus = client.has_capability("UIDPLUS")
    for folder in _folders(client):
        exists = client.select_folder(folder, readonly=dry_run)[b"EXISTS"]
        if not exists:
            continue
        uids = sorted(client.search(criteria))
        if held:
            keep = _held_uids(client, uids, held)
            uids = [uid for uid in uids if uid not in keep]
            kept += len(keep)
        if len(uids) < exists:
            empty = False
        if dry_run or not uids:
            removed += len(uids)
            continue
        for start in range(0, len(uids), BATCH):
            chunk = uids[start : start + BATCH]
            between()
            client.add_flags(chunk, [DELETED], silent=True)
            if uidplus:
                client.uid_expunge(chunk)
            else:
                client.expunge()
        removed += len(uids)
        client.close_folder()
    return removed, kept, empty


def _remove_folders(client: IMAPClient) -> None:
    """Delete every folder but INBOX, deepest first (the store makes the usual ones again
    if the person is covered once more)."""
    for name in sorted(_folders(client), key=len, reverse=True):
        if name.upper() != "INBOX":
            with contextlib.suppress(IMAPClientError):
                client.delete_folder(name)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
class _Renewer:
    """Renews the lease at most every RENEW_EVERY seconds (LeaseLost ends the run)."""

    def __init__(self, lease: Lease | None) -> None:
        self.lease = lease
        self.last = time.monotonic()

    def __call__(self) -> None:
        if self.lease is not None and time.monotonic() - self.last >= RENEW_EVERY:
            self.lease.renew()
            self.last = time.monotonic()


def run_retention(
    config: Config,
    engine: Engine,
    *,
    dry_run: bool = False,
    started_by: str = "cli",
    now: datetime | None = None,
    unless_ran_within: timedelta | None = None,
) -> RetentionReport | None:
    """One retention run under the deployment's lease (LockHeld if another holds it).

    With ``unless_ran_within``, nothing is done (None) when a run finished within that
    time: checked once the lease is held, so two gateways that both found the day's run
    due do not run it one after the other.
    """
    settings = RetentionSettings.from_config(config)
    now = now or utcnow()
    report = RetentionReport(dry_run=dry_run, started_at=now)
    lease = Lease(engine, LEASE_NAME, LEASE_SECONDS)
    lease.acquire()
    if unless_ran_within is not None:
        with Session(engine) as session:
            due = retention_due(session, now, unless_ran_within)
        if not due:
            lease.release()
            return None
    renew = _Renewer(lease)
    run_id = None if dry_run else start_run(engine, started_by, now)
    try:
        store = StandbyIMAP.from_config(config)
        if store is None:
            report.standby = False
            log_event(log, logging.WARNING, "retention_standby_not_configured")
        else:
            _standby(config, engine, store, settings, now, report, renew)
        pruned = prune_queue(engine, settings, now, dry_run=dry_run, between=renew)
        report.queue_messages = pruned["messages"]
        report.queue_recipients = pruned["recipients"]
        report.queue_copies = pruned["copies"]
        report.bodies_dropped = pruned["bodies"]
        if report.mailboxes_failed or report.uncovered_waiting:
            report.outcome = INCOMPLETE
    except Exception:
        report.outcome = FAILED
        raise
    finally:
        report.finished_at = utcnow()
        if run_id is not None:
            with contextlib.suppress(Exception):
                finish_run(engine, run_id, report.outcome, report.counts())
        lease.release()
        log_event(
            log,
            logging.INFO if report.outcome == OK else logging.WARNING,
            "retention",
            outcome=report.outcome,
            dry_run=dry_run,
            started_by=started_by,
            **{k: v for k, v in report.counts().items() if k != "by_domain"},
        )
    return report


def _standby(
    config: Config,
    engine: Engine,
    store: StandbyIMAP,
    settings: RetentionSettings,
    now: datetime,
    report: RetentionReport,
    renew: _Renewer,
) -> None:
    """The standby store's part of a run."""
    dry_run = report.dry_run
    with Session(engine) as session:
        # An address that cannot name a mailbox has none (the users file leaves it out).
        covered = [m for m in covered_mailboxes(session, settings) if is_mailbox_address(m.address)]
        held = held_by_mailbox(session)
        domain_names = {row.id: row.name for row in session.execute(select(Domain.id, Domain.name))}
        holders = {m.address: m.person_id for m in covered}
        others = mailboxes_of_others(session, holders)
    due, changes = sweep_mailboxes(engine, covered, settings, now, dry_run=dry_run)
    report.newly_uncovered = changes["newly_uncovered"]
    report.covered_again = changes["covered_again"]
    users_file = config.standby.get("users_file")
    if due and users_file and not dry_run:
        with Session(engine) as session:
            refresh_users_file(session, users_file)
    marked = time.monotonic()

    for mailbox in covered:
        renew()
        if mailbox.address in others:
            spellings = others[mailbox.address]
            if not _empty_for_new_holder(
                store, engine, mailbox.address, spellings, mailbox.person_id, report
            ):
                return
            continue
        before: date = (now - timedelta(days=mailbox.retention_days)).date()
        try:
            with store.mailbox(mailbox.address) as client:
                removed, kept, _ = expunge(
                    client,
                    ["BEFORE", before],
                    held.get(mailbox.address),
                    dry_run=dry_run,
                    between=renew,
                )
        except StoreUnavailable as error:
            report.mailboxes_failed += len(covered) - report.mailboxes
            log_event(log, logging.ERROR, "retention_store_unavailable", error=str(error)[:200])
            return
        except (LoginError, IMAPClientError, OSError) as error:
            report.mailboxes += 1
            report.mailboxes_failed += 1
            log_event(
                log,
                logging.WARNING,
                "retention_mailbox_failed",
                mailbox=mailbox.address,
                error=type(error).__name__,
                detail=str(error)[:200],
            )
            continue
        report.mailboxes += 1
        report.messages_expunged += removed
        report.messages_kept_held += kept
        if removed:
            name = domain_names.get(mailbox.domain_id, str(mailbox.domain_id))
            report.by_domain[name] = report.by_domain.get(name, 0) + removed

    for address in due:
        renew()
        if dry_run:
            report.uncovered_mailboxes_emptied += 1
            continue
        with Session(engine) as session:
            if not still_uncovered(session, address):
                clear_emptying(engine, address)
                continue
        _empty(store, engine, address, held.get(address), marked, report)
    if due and users_file and not dry_run:
        with Session(engine) as session:
            refresh_users_file(session, users_file)


def _empty_for_new_holder(
    store: StandbyIMAP,
    engine: Engine,
    address: str,
    spellings: set[str],
    holder: int,
    report: RetentionReport,
) -> bool:
    """Empty a covered mailbox of someone else's mail (the address was another
    person's): everything but the copies made for its holder goes, what waited for the
    primary too (it is not the holder's to read), and every folder but INBOX (where the
    copies are) with its name. Until then the webmail stays closed to the holder. False
    when the store cannot be reached at all (the run stops looking at mailboxes)."""
    report.mailboxes += 1
    if report.dry_run:
        report.handed_over_emptied += 1
        return True
    moment = utcnow()
    with Session(engine) as session:
        keep = Held(queue_ids=holders_copies(session, spellings, holder))
    try:
        with store.mailbox(address) as client:
            removed, _kept, _empty = expunge(client, ["ALL"], keep, dry_run=False)
            _remove_folders(client)
    except StoreUnavailable as error:
        report.mailboxes_failed += 1
        log_event(log, logging.ERROR, "retention_store_unavailable", error=str(error)[:200])
        return False
    except (LoginError, IMAPClientError, OSError) as error:
        report.mailboxes_failed += 1
        log_event(
            log,
            logging.WARNING,
            "retention_mailbox_failed",
            mailbox=address,
            error=type(error).__name__,
            detail=str(error)[:200],
        )
        return True
    with writing(engine) as connection:
        mark_removed(connection, spellings, holder, moment)
    report.handed_over_emptied += 1
    report.handed_over_messages_expunged += removed
    log_event(log, logging.WARNING, "retention_handed_over", mailbox=address, removed=removed)
    return True


def _empty(
    store: StandbyIMAP,
    engine: Engine,
    address: str,
    held: Held | None,
    marked: float,
    report: RetentionReport,
) -> None:
    """Empty the mailbox of someone no longer covered, waiting a little for the store to
    know the address again (the users file lists it while it is being emptied)."""
    if not is_mailbox_address(address):  # never in the users file: the store has no mailbox
        forget_mailbox(engine, address)
        return
    while True:
        try:
            with store.mailbox(address) as client:
                removed, kept, empty = expunge(client, ["ALL"], held, dry_run=False)
                if empty:
                    _remove_folders(client)
        except LoginError:
            if time.monotonic() - marked < USERS_FILE_WAIT:
                time.sleep(1.0)
                continue
            report.uncovered_waiting += 1
            log_event(log, logging.WARNING, "retention_empty_waiting", mailbox=address)
            return
        except (StoreUnavailable, IMAPClientError, OSError) as error:
            report.uncovered_waiting += 1
            log_event(
                log, logging.WARNING, "retention_empty_failed", mailbox=address, error=str(error)
            )
            return
        break
    report.uncovered_messages_expunged += removed
    report.messages_kept_held += kept
    if empty:
        forget_mailbox(engine, address)
        report.uncovered_mailboxes_emptied += 1
    log_event(log, logging.INFO, "retention_emptied", mailbox=address, removed=removed, kept=kept)


# ---------------------------------------------------------------------------
# Once a day inside the gateway
# ---------------------------------------------------------------------------
class DailyRetention:
    """The gateway's own retention: every ``check`` seconds it looks whether a run
    finished (here, in another gateway or from cron) in the last day, and runs one if
    not; the lease keeps two gateways from running at once."""

    def __init__(self, config: Config, engine: Engine, worker: str, check: float) -> None:
        self.config, self.engine, self.worker, self.check = config, engine, worker, check
        self.stopping = threading.Event()

    def run(self) -> None:
        """Check until stopped."""
        while not self.stopping.wait(self.check):
            try:
                with Session(self.engine) as session:
                    due = retention_due(session, utcnow(), timedelta(days=1))
                if due:
                    run_retention(
                        self.config,
                        self.engine,
                        started_by=f"gateway:{self.worker}",
                        unless_ran_within=timedelta(days=1),
                    )
            except LockHeld:
                continue
            except Exception as error:  # the next check tries again
                log_event(
                    log,
                    logging.ERROR,
                    "retention_failed",
                    error=type(error).__name__,
                    detail=str(error)[:200],
                )
