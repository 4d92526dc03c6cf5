"""``continuity gateway health`` and ``continuity sync health``: is it healthy, for
monitoring scripts, cron and systemd.

Both print one line per check (``--json``: an object) and exit 0 when healthy, 1 when
something needs a person, 2 when they cannot tell (a bad configuration, a roster that
cannot be read). Registered by continuity.cli on the ``gateway`` and ``sync`` groups.
"""

from __future__ import annotations

import json
import logging
import smtplib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, NoReturn, ParamSpec

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from continuity.cli import State, pass_state
from roster.config import ConfigError, host_port
from roster.db import current_revision, session_factory, sqlite_file_missing
from roster.locks import holder_alive
from roster.metrics import (
    HELD,
    PrimaryState,
    Waiting,
    domain_names,
    monitor_lease,
    primaries,
    waiting,
)
from roster.models import utcnow
from roster.syncruns import sync_health

HEALTHY, UNHEALTHY, UNKNOWN = 0, 1, 2
_STATUS = {HEALTHY: "healthy", UNHEALTHY: "unhealthy", UNKNOWN: "unknown"}
LISTENER_TIMEOUT = 5.0
P = ParamSpec("P")
log = logging.getLogger("continuity.health")


@dataclass(frozen=True)
class Check:
    """One thing looked at, and what was found."""

    check: str
    ok: bool
    detail: str


class CannotTell(Exception):
    """The roster cannot be read: nobody can say whether the service is healthy."""


def _report(what: str, checks: list[Check], as_json: bool, extra: dict[str, Any]) -> NoReturn:
    """Print the checks and exit 0 when all passed, else 1."""
    status = HEALTHY if all(c.ok for c in checks) else UNHEALTHY
    if as_json:
        body = {"status": _STATUS[status], "checks": [asdict(c) for c in checks], **extra}
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo(f"{what}: {_STATUS[status]}")
        for check in checks:
            click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.check}: {check.detail}")
    sys.exit(status)


def _cannot_tell(what: str, reason: str, as_json: bool) -> NoReturn:
    """Say why nothing could be checked and exit 2."""
    if as_json:
        click.echo(json.dumps({"status": _STATUS[UNKNOWN], "reason": reason}, indent=2))
    else:
        click.echo(f"{what}: {_STATUS[UNKNOWN]}: {reason}")
    sys.exit(UNKNOWN)


def _never_crashes(what: str) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """A health command whose unexpected error is "cannot tell" (exit 2, one line), not
    a traceback with exit status 1, which a monitor would read as "unhealthy". The
    traceback goes to the log at debug level (-vv)."""

    def decorate(command: Callable[P, None]) -> Callable[P, None]:
        @wraps(command)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                command(*args, **kwargs)
            except (click.exceptions.Exit, click.ClickException, click.Abort):
                raise  # click's own ways of ending a command
            except Exception as error:  # noqa: BLE001 - any error means "cannot tell"
                log.debug("%s health failed", what, exc_info=True)
                words = " ".join(f"{type(error).__name__}: {error}".split())[:200]
                _cannot_tell(what, f"unexpected error: {words}", bool(kwargs.get("as_json")))

        return wrapper

    return decorate


@contextmanager
def _roster(state: State) -> Iterator[Session]:
    """A read of the roster; CannotTell when it has no file, no schema or no answer."""
    missing = sqlite_file_missing(state.config.database_url)
    if missing is not None:
        raise CannotTell(f"the roster database {missing} does not exist")
    try:
        if current_revision(state.engine) is None:
            raise CannotTell("the roster database is empty (no schema)")
        with session_factory(state.engine)() as session, session.begin():
            yield session
    except SQLAlchemyError as error:
        raise CannotTell(f"the roster database cannot be read: {type(error).__name__}") from None


def _ago(now: datetime, moment: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 7200:
        return f"{seconds // 60} minutes"
    return f"{seconds // 3600} hours {seconds % 3600 // 60} minutes"


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


# ---------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------
def _listener_address(listen: str) -> tuple[str, int]:
    """Where to reach a listener on ``listen`` from this host (a wildcard: loopback)."""
    host, _, port = host_port(listen, "[gateway].listen").rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):  # noqa: S104 - the wildcard is read, not bound
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def check_listener(listen: str) -> Check:
    """The gateway on this host answers SMTP with 220 on [gateway] listen."""
    host, port = _listener_address(listen)
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        client = smtplib.SMTP(host, port, local_hostname="health.invalid", timeout=LISTENER_TIMEOUT)
    except (OSError, smtplib.SMTPException) as error:
        reason = f"{type(error).__name__}: {error}"[:200]
        return Check("listener", False, f"{where} does not answer SMTP ({reason})")
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()
    return Check("listener", True, f"{where} answers 220")


def _primary_down_since(primary: PrimaryState) -> datetime | None:
    """Since when the primary has been failing, as far as the roster says."""
    if primary.event_started_at is not None and primary.recovery_started_at is None:
        return primary.event_started_at
    if primary.last_check_ok is False and primary.last_check_at is not None:
        # The failures in a row came about one probe interval apart.
        interval = timedelta(seconds=primary.probe_interval_seconds)
        return primary.last_check_at - interval * max(0, primary.failures_in_a_row - 1)
    return None


def primary_checks(
    found: list[PrimaryState], now: datetime, max_down: timedelta
) -> Iterator[Check]:
    """A check for each active domain's primary: failing no longer than ``max_down``,
    and checked lately (a monitor that stopped checking is a problem of its own)."""
    for primary in found:
        if not (primary.active or primary.event_started_at) or not primary.has_primary:
            continue
        name = f"primary {primary.domain}"
        since = _primary_down_since(primary)
        # Three probe intervals and a minute: the monitor's lease moves to another
        # gateway within 15 seconds, and a round of slow primaries takes its time.
        stale = timedelta(seconds=3 * primary.probe_interval_seconds + 60)
        if primary.last_check_at is None:
            yield Check(name, False, "never checked: is a gateway running?")
        elif now - primary.last_check_at > stale:
            yield Check(
                name,
                False,
                f"last checked {_ago(now, primary.last_check_at)} ago: is a gateway running?",
            )
        elif since is not None:
            held = " (continuity event open: its mail is held)" if primary.event_started_at else ""
            words = f"failing for about {_ago(now, since)}{held}"
            yield Check(name, now - since <= max_down, words)
        elif primary.recovery_started_at is not None:
            yield Check(name, True, "answers again: the held mail is being handed back")
        else:
            yield Check(name, True, f"answers (checked {_ago(now, primary.last_check_at)} ago)")


def queue_checks(
    found: list[Waiting],
    now: datetime,
    *,
    max_overdue: timedelta,
    max_age: timedelta,
    max_deferred: int,
) -> Iterator[Check]:
    """Delivery keeps up (nothing due waits long untaken), nothing but held mail is
    older than ``max_age``, and no more than ``max_deferred`` recipients are deferred."""
    flowing = [w for w in found if w.state != HELD]
    overdue = sum(w.overdue for w in flowing)
    since = min((w.overdue_since for w in flowing if w.overdue_since), default=None)
    if since is not None and now - since > max_overdue:
        yield Check(
            "delivery",
            False,
            f"{overdue} recipient(s) due and taken by no gateway, the oldest for"
            f" {_ago(now, since)}: are the gateways delivering?",
        )
    else:
        yield Check("delivery", True, f"{overdue} recipient(s) due now, none waiting long")
    oldest = min((w.oldest_received_at for w in flowing if w.oldest_received_at), default=None)
    waiting_now = sum(w.recipients for w in flowing)
    held = sum(w.recipients for w in found if w.state == HELD)
    held_words = f"; {held} held for continuity events" if held else ""
    if oldest is not None and now - oldest > max_age:
        yield Check(
            "queue",
            False,
            f"{waiting_now} recipient(s) waiting, the oldest message for {_ago(now, oldest)}"
            f"{held_words}",
        )
    else:
        age = f", the oldest for {_ago(now, oldest)}" if oldest else ""
        yield Check("queue", True, f"{waiting_now} recipient(s) waiting{age}{held_words}")
    deferred = sum(w.recipients for w in found if w.state == "deferred")
    yield Check("deferred", deferred <= max_deferred, f"{deferred} (limit {max_deferred})")


@click.command("health")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--max-primary-down",
    type=click.IntRange(0),
    default=30,
    show_default=True,
    help="Minutes an active domain's primary may fail before this is unhealthy.",
)
@click.option(
    "--max-overdue",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="Minutes a recipient may stay due with no gateway taking it.",
)
@click.option(
    "--max-queue-age",
    type=click.IntRange(0),
    help="Minutes the oldest message (held mail aside) may wait"
    " [default: [gateway] delay_warning_hours].",
)
@click.option(
    "--max-deferred",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Deferred recipients allowed.",
)
@click.option(
    "--listener/--no-listener",
    default=None,
    help="Check that [gateway] listen answers SMTP on this host [default: when it is set].",
)
@pass_state
@_never_crashes("gateway")
def gateway_health(
    state: State,
    as_json: bool,
    max_primary_down: int,
    max_overdue: int,
    max_queue_age: int | None,
    max_deferred: int,
    listener: bool | None,
) -> None:
    """Is the mail path healthy? Exit 0 healthy, 1 unhealthy, 2 cannot tell.

    Looks at the roster (reachable), a gateway alive (the monitor lease it renews every
    second), this host's listener, each active domain's primary, and the queue.
    """
    config = state.config  # a bad one exits 2 with a line naming the key
    if max_queue_age is None:
        max_queue_age = int(config.gateway.get("delay_warning_hours", 4)) * 60
    now = utcnow()
    try:
        with _roster(state) as session:
            connection = session.connection()
            # One read of the lease: whether it is alive and who holds it always agree.
            lease = monitor_lease(connection)
            found_primaries = primaries(connection)
            found_waiting = waiting(connection, domain_names(connection), now)
    except CannotTell as error:
        _cannot_tell("gateway", str(error), as_json)
    checks = [Check("roster", True, "reachable")]
    alive = (
        lease.holder is not None
        and lease.expires_at is not None
        and holder_alive(lease.holder, lease.expires_at, now)
    )
    if alive:
        holder = f"the monitor lease is held by {lease.holder}"
        checks.append(Check("gateway", True, f"alive ({holder})"))
    elif lease.expires_at is not None and lease.expires_at > now:
        gone = f"the monitor lease's holder {lease.holder} is no longer running"
        checks.append(Check("gateway", False, gone))
    else:
        last = f" since {_when(lease.expires_at)}" if lease.expires_at else ""
        checks.append(Check("gateway", False, f"no gateway holds the monitor lease{last}"))
    listen = config.gateway.get("listen")
    if listener or (listener is None and listen):
        try:
            checks.append(check_listener(listen or "0.0.0.0:25"))  # noqa: S104 - the default
        except ConfigError as error:
            checks.append(Check("listener", False, str(error)))
    checks.extend(primary_checks(found_primaries, now, timedelta(minutes=max_primary_down)))
    checks.extend(
        queue_checks(
            found_waiting,
            now,
            max_overdue=timedelta(minutes=max_overdue),
            max_age=timedelta(minutes=max_queue_age),
            max_deferred=max_deferred,
        )
    )
    figures = {
        "queue": [
            {
                "domain": w.domain,
                "state": w.state,
                "recipients": w.recipients,
                "oldest_received_at": _when(w.oldest_received_at),
                "overdue": w.overdue,
            }
            for w in found_waiting
        ],
        "primaries": [
            {
                "domain": p.domain,
                "active": p.active,
                "last_check_at": _when(p.last_check_at),
                "last_check_ok": p.last_check_ok,
                "failures_in_a_row": p.failures_in_a_row,
                "event_started_at": _when(p.event_started_at),
                "recovery_started_at": _when(p.recovery_started_at),
            }
            for p in found_primaries
        ],
    }
    _report("gateway", checks, as_json, figures)


# ---------------------------------------------------------------------------
# The directory sync
# ---------------------------------------------------------------------------
@click.command("health")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--stale-after",
    type=click.IntRange(1),
    help="Minutes without a successful run before a source is unhealthy"
    " [default: [sync] stale_after_minutes].",
)
@pass_state
@_never_crashes("sync")
def sync_health_command(state: State, as_json: bool, stale_after: int | None) -> None:
    """Is the directory sync healthy? Exit 0 healthy, 1 unhealthy, 2 cannot tell.

    Unhealthy as /health says "degraded": a source's last run failed, was stopped by a
    guard or was abandoned, or none of its runs succeeded within the limit.
    """
    config = state.config
    sources = [d.name for d in config.directories]
    limit = timedelta(minutes=stale_after or config.sync_stale_after_minutes)
    try:
        with _roster(state) as session:
            health = sync_health(session, sources, limit)
    except CannotTell as error:
        _cannot_tell("sync", str(error), as_json)
    if not sources and not health.runs:
        _cannot_tell("sync", "no [[directory]] source is configured and none ever ran", as_json)
    reasons = {reason.source: reason for reason in health.reasons}
    runs = {run.source: run for run in health.runs}
    checks = [Check("roster", True, "reachable")]
    for source in sorted(set(sources) | set(runs) | set(reasons)):
        reason, run = reasons.get(source), runs.get(source)
        if reason is not None:
            checks.append(Check(f"source {source}", False, reason.text()))
        elif run is not None and run.last_success_at is not None:
            checks.append(
                Check(
                    f"source {source}",
                    True,
                    f"last run {run.outcome}, last success {_when(run.last_success_at)}",
                )
            )
    body = {
        "last_sync": [
            {
                "source": run.source,
                "mode": run.mode,
                "outcome": run.outcome,
                "started_at": _when(run.started_at),
                "finished_at": _when(run.finished_at),
                "last_success_at": _when(run.last_success_at),
            }
            for run in health.runs
        ]
    }
    _report("sync", checks, as_json, body)
