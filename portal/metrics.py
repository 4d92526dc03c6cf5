"""``GET /metrics``: the service's figures in Prometheus' text format.

The figures are read from the roster at each scrape (roster.metrics), by a collector
of prometheus-client: any portal worker of any host gives the same answer, whatever the
number of gateways. Nobody reads them without leave: a request with
``Authorization: Bearer`` and ``[portal] metrics_token``, or one from a network the
operator listed in ``[portal] metrics_networks`` (none by default: not even loopback,
since a reverse proxy on the same host that adds no forwarding header, as nginx's
``proxy_pass`` or a TCP proxy, makes every request seem to come from 127.0.0.1). A
request carrying a forwarding header while ``trusted_proxies = 0`` counts as the
proxy's, so only the token lets it in.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Blueprint, Flask, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from roster.config import Config
from roster.logs import log_event
from roster.metrics import (
    RELAY,
    WAITING_STATES,
    AppendOnlyTally,
    Figures,
    read_figures,
    sign_in_tally,
)

bp = Blueprint("metrics", __name__)
log = logging.getLogger("continuity.portal")

F = TypeVar("F", bound=Callable[..., Any])
REGISTRY = "metrics_registry"
NETWORKS = "metrics_networks"
_FORWARDED = ("X-Forwarded-For", "Forwarded", "X-Real-Ip")
SCRAPE_TIMEOUT_MS = 10000  # PostgreSQL's statement_timeout for a scrape's reads


def _seconds(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _age(now: datetime, moment: datetime | None) -> float:
    return max(0.0, (now - moment).total_seconds()) if moment is not None else 0.0


class RosterCollector(Collector):
    """The roster's figures as metric families, read at each scrape."""

    def __init__(self, sessions: sessionmaker[Session], config: Config) -> None:
        self.sessions = sessions
        self.sources = [d.name for d in config.directories]
        self.stale_after = timedelta(minutes=config.sync_stale_after_minutes)
        self.sign_ins: AppendOnlyTally = sign_in_tally()

    def collect(self) -> Iterator[Metric]:
        """Read the roster and yield every family; the roster unreadable: up 0 alone."""
        started = time.monotonic()
        try:
            with self.sessions() as session, session.begin():
                if session.get_bind().dialect.name == "postgresql":
                    # A scrape never holds a worker for long, whatever the database does.
                    session.connection().exec_driver_sql(
                        f"SET LOCAL statement_timeout = {SCRAPE_TIMEOUT_MS}"
                    )
                figures = read_figures(
                    session,
                    sources=self.sources,
                    stale_after=self.stale_after,
                    sign_ins=self.sign_ins,
                )
        except SQLAlchemyError as error:
            log_event(log, logging.WARNING, "metrics_failed", error=type(error).__name__)
            yield _gauge("continuity_roster_up", "1 when the roster database could be read.", 0)
            return
        yield _gauge("continuity_roster_up", "1 when the roster database could be read.", 1)
        if figures.sign_ins_error is not None:
            log_event(log, logging.WARNING, "metrics_sign_ins_failed", error=figures.sign_ins_error)
        yield _gauge(
            "continuity_metrics_read_seconds",
            "How long reading the roster's figures took for this scrape.",
            time.monotonic() - started,
        )
        yield from _mail(figures)
        yield from _primaries(figures)
        yield from _sync(figures)
        yield from _sign_ins(figures)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _mail(figures: Figures) -> Iterator[Metric]:
    now = figures.now
    waiting = GaugeMetricFamily(
        "continuity_queue_recipients",
        "Recipients waiting for delivery, by domain and state (queued, deferred, held"
        " during a continuity event, handing_back to the primary).",
        labels=["domain", "state"],
    )
    oldest = GaugeMetricFamily(
        "continuity_queue_oldest_age_seconds",
        "Age of the oldest message waiting, by domain and state.",
        labels=["domain", "state"],
    )
    overdue = GaugeMetricFamily(
        "continuity_queue_overdue_recipients",
        "Recipients due for an attempt that no gateway has taken (held mail excluded).",
        labels=["domain"],
    )
    overdue_age = GaugeMetricFamily(
        "continuity_queue_overdue_seconds",
        "How long the most overdue recipient has waited past its attempt time.",
        labels=["domain"],
    )
    seen_states: dict[str, set[str]] = {}
    overdue_by: dict[str, tuple[int, datetime | None]] = {}
    for item in figures.waiting:
        waiting.add_metric([item.domain, item.state], item.recipients)
        oldest.add_metric([item.domain, item.state], _age(now, item.oldest_received_at))
        seen_states.setdefault(item.domain, set()).add(item.state)
        count, since = overdue_by.get(item.domain, (0, None))
        if item.overdue_since is not None:
            since = item.overdue_since if since is None else min(since, item.overdue_since)
        overdue_by[item.domain] = (count + item.overdue, since)
    # Every domain, and the gateway's own notices through [outbound] relay, shows every
    # state, 0 when empty, so that an alert sees it go back to 0.
    for domain in [primary.domain for primary in figures.primaries] + [RELAY]:
        for state in WAITING_STATES:
            if state not in seen_states.get(domain, set()):
                waiting.add_metric([domain, state], 0)
                oldest.add_metric([domain, state], 0)
        overdue_by.setdefault(domain, (0, None))
    for domain, (count, since) in sorted(overdue_by.items()):
        overdue.add_metric([domain], count)
        overdue_age.add_metric([domain], _age(now, since))
    yield from (waiting, oldest, overdue, overdue_age)

    copies = GaugeMetricFamily(
        "continuity_standby_copies_pending",
        "Copies for covered people's standby mailboxes not made yet, by domain.",
        labels=["domain"],
    )
    copies_age = GaugeMetricFamily(
        "continuity_standby_copies_oldest_age_seconds",
        "Age of the oldest message whose standby copy is not made yet, by domain.",
        labels=["domain"],
    )
    for item in figures.copies:
        copies.add_metric([item.domain], item.recipients)
        copies_age.add_metric([item.domain], _age(now, item.oldest_received_at))
    yield from (copies, copies_age)

    yield _gauge(
        "continuity_mail_messages_last_hour",
        "Messages the gateways accepted in the last hour.",
        figures.messages_last_hour,
    )
    recent = GaugeMetricFamily(
        "continuity_mail_recipients_last_hour",
        "Recipients of the messages accepted in the last hour, by domain and where they"
        " stand now (delivered, bounced, queued, deferred, held, handing_back).",
        labels=["domain", "status"],
    )
    for (domain, status), count in sorted(figures.recipients_last_hour.items()):
        recent.add_metric([domain, status], count)
    yield recent


def _primaries(figures: Figures) -> Iterator[Metric]:
    active = GaugeMetricFamily(
        "continuity_domain_active", "1 when Continuity Service is active.", labels=["domain"]
    )
    up = GaugeMetricFamily(
        "continuity_primary_up",
        "1 when the last check of the domain's primary passed, 0 when it failed"
        " (absent before the first check).",
        labels=["domain"],
    )
    checked = GaugeMetricFamily(
        "continuity_primary_last_check_timestamp_seconds",
        "When the domain's primary was last checked (Unix time).",
        labels=["domain"],
    )
    failures = GaugeMetricFamily(
        "continuity_primary_failures_in_a_row",
        "Failed checks (and deliveries) of the primary in a row.",
        labels=["domain"],
    )
    event_open = GaugeMetricFamily(
        "continuity_event_open",
        "1 while a continuity event of the domain is open (its mail held or handed back).",
        labels=["domain"],
    )
    recovering = GaugeMetricFamily(
        "continuity_event_recovering",
        "1 while an open event hands the held mail back to the primary.",
        labels=["domain"],
    )
    event_started = GaugeMetricFamily(
        "continuity_event_started_timestamp_seconds",
        "When the open continuity event started (Unix time).",
        labels=["domain"],
    )
    for primary in figures.primaries:
        labels = [primary.domain]
        active.add_metric(labels, 1 if primary.active else 0)
        if primary.last_check_ok is not None:
            up.add_metric(labels, 1 if primary.last_check_ok else 0)
        checked_at = _seconds(primary.last_check_at)
        if checked_at is not None:
            checked.add_metric(labels, checked_at)
        failures.add_metric(labels, primary.failures_in_a_row)
        is_open = primary.event_started_at is not None
        event_open.add_metric(labels, 1 if is_open else 0)
        recovering.add_metric(labels, 1 if primary.recovery_started_at is not None else 0)
        started_at = _seconds(primary.event_started_at)
        if started_at is not None:
            event_started.add_metric(labels, started_at)
    yield from (active, up, checked, failures, event_open, recovering, event_started)

    events = CounterMetricFamily(
        "continuity_events", "Continuity events started, by domain.", labels=["domain"]
    )
    held = CounterMetricFamily(
        "continuity_held_recipients",
        "Recipients held by continuity events, counted when each event ends.",
        labels=["domain"],
    )
    replayed = CounterMetricFamily(
        "continuity_replayed_recipients",
        "Held recipients handed back to the primary, counted when each event ends.",
        labels=["domain"],
    )
    for totals in figures.events:
        events.add_metric([totals.domain], totals.started)
        held.add_metric([totals.domain], totals.held)
        replayed.add_metric([totals.domain], totals.handed_back)
    yield from (events, held, replayed)

    yield _gauge(
        "continuity_gateway_monitor_up",
        "1 while a gateway holds the monitor lease (renewed about every second while it"
        " runs): some gateway of the deployment is alive.",
        1 if figures.monitor.alive(figures.now) else 0,
    )


def _sync(figures: Figures) -> Iterator[Metric]:
    families = {
        "success": GaugeMetricFamily(
            "continuity_sync_last_run_success",
            "1 when the source's last finished sync run succeeded.",
            labels=["source"],
        ),
        "finished": GaugeMetricFamily(
            "continuity_sync_last_run_timestamp_seconds",
            "When the source's last finished sync run ended (Unix time).",
            labels=["source"],
        ),
        "duration": GaugeMetricFamily(
            "continuity_sync_last_run_duration_seconds",
            "How long the source's last finished sync run took.",
            labels=["source"],
        ),
        "read": GaugeMetricFamily(
            "continuity_sync_last_run_entries_read",
            "Directory entries the source's last finished run read.",
            labels=["source"],
        ),
        "success_at": GaugeMetricFamily(
            "continuity_sync_last_success_timestamp_seconds",
            "When the source's last successful sync run started (Unix time).",
            labels=["source"],
        ),
        "running": GaugeMetricFamily(
            "continuity_sync_running",
            "1 while a sync run of the source is going.",
            labels=["source"],
        ),
        "degraded": GaugeMetricFamily(
            "continuity_sync_degraded",
            "1 when /health calls the source's sync degraded (failed, stopped by a guard,"
            " abandoned, or no success within [sync] stale_after_minutes).",
            labels=["source"],
        ),
    }
    changes = GaugeMetricFamily(
        "continuity_sync_last_run_changes",
        "What the source's last finished sync run changed, by kind of change.",
        labels=["source", "change"],
    )
    for run in figures.sync:
        labels = [run.source]
        families["success"].add_metric(labels, 1 if run.outcome == "success" else 0)
        if run.finished_at is not None:
            families["finished"].add_metric(labels, run.finished_at.timestamp())
            duration = (run.finished_at - run.started_at).total_seconds()
            families["duration"].add_metric(labels, max(0.0, duration))
        families["read"].add_metric(labels, run.entries_read)
        success_at = _seconds(run.last_success_at)
        if success_at is not None:
            families["success_at"].add_metric(labels, success_at)
        for change, count in sorted(run.changes.items()):
            changes.add_metric([run.source, change], count)
    for source, (running, degraded) in figures.sync_sources.items():
        families["running"].add_metric([source], 1 if running else 0)
        families["degraded"].add_metric([source], 1 if degraded else 0)
    yield from families.values()
    yield changes


def _sign_ins(figures: Figures) -> Iterator[Metric]:
    sign_ins = CounterMetricFamily(
        "continuity_sign_ins",
        "Sign-ins to the portal, by how (directory, emergency or local password).",
        labels=["method"],
    )
    failures = CounterMetricFamily(
        "continuity_sign_in_failures",
        "Refused sign-ins; directory_unreachable: the directory could not be asked.",
        labels=["directory_unreachable"],
    )
    locks = CounterMetricFamily(
        "continuity_sign_in_account_locks", "Accounts locked after too many refused sign-ins."
    )
    methods: dict[str, int] = {"directory": 0, "emergency": 0, "local": 0}
    refused = {"false": 0, "true": 0}
    locked_total = 0
    if figures.sign_ins is not None:  # not counted this time: left out, never a false 0
        for (action, detail), count in figures.sign_ins.items():
            if action == "sign_in":
                methods[detail or "unknown"] = methods.get(detail or "unknown", 0) + count
            elif action == "sign_in.failed":
                refused["true" if detail else "false"] += count
            else:
                locked_total += count
        for method, count in sorted(methods.items()):
            sign_ins.add_metric([method], count)
        for unreachable, count in sorted(refused.items()):
            failures.add_metric([unreachable], count)
        locks.add_metric([], locked_total)
        yield from (sign_ins, failures, locks)
    locked = GaugeMetricFamily(
        "continuity_sign_in_locked",
        "Sign-in locks in force now, by what is locked (account, person, client address).",
        labels=["kind"],
    )
    for kind in ("account", "person", "client"):
        locked.add_metric([kind], figures.locked.get(kind, 0))
    yield locked


# ---------------------------------------------------------------------------
# Who may read them
# ---------------------------------------------------------------------------
def _allowed() -> bool:
    """True for a request with the metrics token, or from an allowed network."""
    config: Config = current_app.config["CONTINUITY"]
    token = config.portal.get("metrics_token")
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), str(token).encode()
        ):
            return True
    if not config.portal.get("trusted_proxies") and any(h in request.headers for h in _FORWARDED):
        # Sent on by a proxy the portal was not told of: its address is the proxy's.
        return False
    networks = current_app.extensions[NETWORKS]
    try:
        client = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    return any(client in network for network in networks)


def monitoring(view: F) -> F:
    """Only a monitor may call this endpoint: a request bearing [portal] metrics_token,
    or from a network listed in [portal] metrics_networks (none unless listed)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _allowed():
            headers = {"WWW-Authenticate": 'Bearer realm="metrics"'}
            return "forbidden\n", 403, {"Content-Type": "text/plain; charset=utf-8", **headers}
        return view(*args, **kwargs)

    wrapper._access = "monitoring"  # type: ignore[attr-defined]  # the permission walk's tag
    return cast(F, wrapper)


def init_app(app: Flask) -> None:
    """Give the app its own registry with the roster's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RosterCollector(app.extensions["roster_sessions"], app.config["CONTINUITY"]))
    app.extensions[REGISTRY] = registry
    # No network unless the operator lists some: loopback is no proof of a local monitor
    # when a reverse proxy on this host passes requests on without saying so.
    given = app.config["CONTINUITY"].portal.get("metrics_networks", ())
    app.extensions[NETWORKS] = tuple(ipaddress.ip_network(n, strict=False) for n in given)


@bp.get("/metrics")
@monitoring
def metrics() -> Any:
    """The figures in Prometheus' text format."""
    registry: CollectorRegistry = current_app.extensions[REGISTRY]
    return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}
