"""The record of sync runs: which ones were abandoned, and whether the sync is healthy.

A run that was killed (or whose host died) leaves its record at ``running``. Nobody
can write "abandoned" at the moment it dies, so readers decide it: a running record
is the current run only while the sync lease is held by a live holder, and the next
run records every record left running as abandoned, under its own lease.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from roster.locks import lease_alive
from roster.models import SyncRun, utcnow

RUNNING = "running"
SUCCESS = "success"
ABANDONED = "abandoned"
TROUBLED = frozenset({"failed", "guard", ABANDONED})
"""Outcomes of a last run that make the sync degraded."""

LEASE = "sync"
ABANDONED_ERROR = (
    "the run stopped before it finished (its process was killed, or its lease lapsed);"
    " it changed nothing"
)


@dataclass(frozen=True)
class RunView:
    """The latest run of one source, as a reader should see it."""

    source: str
    mode: str
    outcome: str  # RUNNING only for the run that holds the lease now
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    last_success_at: datetime | None


@dataclass(frozen=True)
class Reason:
    """Why the sync is degraded, for one source."""

    source: str
    code: str  # "failed", "guard", "abandoned", "stale" (no success lately), "never"
    at: datetime | None  # when the run started, or the last success

    def text(self) -> str:
        """The reason in English, for monitors and logs."""
        when = self.at.isoformat(timespec="seconds") if self.at else ""
        return {
            "failed": f"{self.source}: the last sync failed (started {when})",
            "guard": f"{self.source}: a guard stopped the last sync (started {when})",
            "abandoned": f"{self.source}: the last sync was abandoned (started {when})",
            "stale": f"{self.source}: no sync has succeeded since {when}",
            "never": f"{self.source}: no sync has succeeded yet",
        }[self.code]


@dataclass(frozen=True)
class SyncHealth:
    """The latest run of each source and what is wrong, if anything."""

    runs: list[RunView]
    reasons: list[Reason]

    @property
    def degraded(self) -> bool:
        """True when a last run failed or was abandoned, or no run succeeded lately."""
        return bool(self.reasons)


def abandon_lapsed(session: Session, now: datetime | None = None) -> int:
    """Record every run left running as abandoned; returns how many.

    Call it only while holding the sync lease: then no other run is going, so every
    record still running belongs to a run that died.
    """
    result = session.execute(
        update(SyncRun)
        .where(SyncRun.outcome == RUNNING)
        .values(outcome=ABANDONED, finished_at=now or utcnow(), error=ABANDONED_ERROR)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def latest_runs(session: Session, sources: Iterable[str] | None = None) -> list[RunView]:
    """The latest run of each source (of ``sources``, or of all that ever ran)."""
    newest = select(func.max(SyncRun.id)).group_by(SyncRun.source)
    successes = dict(
        session.execute(
            select(SyncRun.source, func.max(SyncRun.started_at))
            .where(SyncRun.outcome == SUCCESS)
            .group_by(SyncRun.source)
        ).all()
    )
    query = select(SyncRun).where(SyncRun.id.in_(newest)).order_by(SyncRun.source)
    if sources is not None:
        query = query.where(SyncRun.source.in_(list(sources)))
    runs = list(session.scalars(query))
    # Only one run goes at a time (the lease), and only the newest can be it.
    current = max((r.id for r in runs if r.outcome == RUNNING), default=None)
    if current is not None and not lease_alive(session, LEASE):
        current = None
    return [
        RunView(
            source=run.source,
            mode=run.mode,
            outcome=ABANDONED if run.outcome == RUNNING and run.id != current else run.outcome,
            started_at=run.started_at,
            finished_at=run.finished_at,
            error=ABANDONED_ERROR if run.outcome == RUNNING and run.id != current else run.error,
            last_success_at=successes.get(run.source),
        )
        for run in runs
    ]


def sync_health(
    session: Session,
    sources: Sequence[str],
    stale_after: timedelta,
    now: datetime | None = None,
) -> SyncHealth:
    """The sync's health for ``sources`` (the configured ones; none: every one that ran).

    Degraded when a source's last run failed, was stopped by a guard or was abandoned,
    or when it has had no successful run within ``stale_after``.
    """
    now = now or utcnow()
    runs = latest_runs(session, sources or None)
    seen = {run.source: run for run in runs}
    reasons: list[Reason] = []
    for source in sorted(set(sources) | set(seen)):
        run = seen.get(source)
        if run is not None and run.outcome in TROUBLED:
            reasons.append(Reason(source, run.outcome, run.started_at))
        elif run is None or run.last_success_at is None:
            reasons.append(Reason(source, "never", None))
        elif now - run.last_success_at > stale_after:
            reasons.append(Reason(source, "stale", run.last_success_at))
    return SyncHealth(runs, reasons)
