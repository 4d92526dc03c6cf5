"""One sync run: choose the mode, read, plan, guard, apply in one transaction, record."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from roster.config import Config, DirectoryConfig
from roster.db import session_factory, transaction
from roster.locks import Lease, LeaseLost, lease
from roster.logs import log_event
from roster.models import Person, SyncRun, utcnow
from roster.syncruns import LEASE, abandon_lapsed
from sync.apply import (
    DatabaseRoster,
    apply_plan,
    apply_roles,
    domain_ids,
    load_marks,
    load_roster,
    outside_scope,
    save_mark,
)
from sync.directory import DirectoryRead, DirectoryReadError
from sync.plan import FULL, INCREMENTAL, Plan, plan_sync

log = logging.getLogger("continuity.sync")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_GUARD = 3
EXIT_LOCKED = 75

SUCCESS = "success"
FAILED = "failed"
GUARD = "guard"
DRY_RUN = "dry-run"


ROOMY_CACHE_AFTER = 50_000
ROOMY_CACHE_KIB = 131_072
"""SQLite page cache for a run that creates more than ROOMY_CACHE_AFTER people."""

KEPT_WARNINGS = 20
"""Warnings a run keeps in its summary and record; the rest are counted."""


class GuardTripped(Exception):
    """The run would do something a healthy directory never asks for."""


@dataclass
class RunReport:
    """What one source's run did, for the summary line, --json and the exit status."""

    source: str
    mode: str
    outcome: str
    entries_read: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    plan: Plan | None = None
    server: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """The process exit status this outcome calls for."""
        return {SUCCESS: EXIT_OK, DRY_RUN: EXIT_OK, GUARD: EXIT_GUARD}.get(
            self.outcome, EXIT_FAILED
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "source": self.source,
            "mode": self.mode,
            "outcome": self.outcome,
            "server": self.server,
            "entries_read": self.entries_read,
            "counts": self.counts,
            "duration_seconds": round(self.seconds, 3),
            "phase_seconds": {k: round(v, 3) for k, v in self.phases.items()},
            "error": self.error,
            "warnings": self.warnings,
        }


@dataclass
class SyncOptions:
    """How a run was asked to behave (the command line's flags)."""

    full: bool = False
    dry_run: bool = False
    allow_mass_removal: bool = False
    progress: Callable[[str, int], None] | None = None


def _choose_mode(session: Session, source: DirectoryConfig, full: bool) -> dict[str, str] | None:
    """None for a full read, else the per-server marks for an incremental one."""
    if full:
        return None
    last_full = session.scalar(
        select(func.max(SyncRun.started_at)).where(
            SyncRun.source == source.name, SyncRun.mode == FULL, SyncRun.outcome == SUCCESS
        )
    )
    if last_full is None:
        return None
    if utcnow() - last_full > timedelta(hours=source.full_sync_interval_hours):
        return None
    return load_marks(session, source.name) or None


def _guard(plan: Plan, entries_read: int, source: DirectoryConfig, allow_mass: bool) -> None:
    """Raise GuardTripped when the plan looks like a broken directory, not a real change.

    An incremental run removes too (people who left the filter or the scope group): an
    emptied scope group is stopped by the same share as a full run's removals.
    """
    if plan.mode == FULL and entries_read == 0 and plan.live_in_source:
        raise GuardTripped(
            f"the directory returned no entries but the roster holds {plan.live_in_source}"
            " people of this source; check base_dn and user_filter"
        )
    share = plan.removal_share()
    if share > source.max_removal_share and not allow_mass:
        raise GuardTripped(
            f"the run would remove {len(plan.removals)} of {plan.live_in_source} people"
            f" ({share:.0%}, limit {source.max_removal_share:.0%});"
            " run again with --allow-mass-removal if that is right"
        )


def _plan(factory: sessionmaker[Session], source: DirectoryConfig, read: DirectoryRead) -> Plan:
    """Plan one run from the directory read and a snapshot of the roster.

    A full run loads a fingerprint of each person first and plans while the pages
    arrive, so an entry that changes nothing is never kept, and new people wait in a
    file past the first 20,000 (sync.plan.Creates). An incremental run reads its (few) entries
    first and loads only the roster rows they touch. The snapshot is taken outside the
    write transaction: only the sync, under its lease, changes what the plan reads, and
    the write lock is not held while the directory is slow to answer.
    """
    with factory() as session:
        domains = domain_ids(session)
        if read.full:
            known = DatabaseRoster(session, source.name)
            return plan_sync(source.name, FULL, read.entries(), known, domains)
        entries = list(read.entries())
        departed = set(read.departed)
        if read.scope is not None:
            departed.update(outside_scope(session, source.name, read.scope))
        addresses = [a for e in entries for a in (e.mail, *e.aliases)]
        wanted = [e.external_id for e in entries] + sorted(departed)
        roster = load_roster(session, source.name, wanted, addresses)
        plan = plan_sync(
            source.name,
            INCREMENTAL,
            entries,
            roster,
            domains,
            departed,
            claimants=lambda addresses: read.claimants(addresses, domains),
        )
        if plan.removals:
            # The guard's share is of the whole source, not of the rows this run loaded.
            plan.live_in_source = (
                session.scalar(
                    select(func.count())
                    .select_from(Person)
                    .where(Person.source == source.name, Person.removed_at.is_(None))
                )
                or 0
            )
        session.rollback()
        return plan


def sync_source(
    engine: Engine,
    factory: sessionmaker[Session],
    source: DirectoryConfig,
    options: SyncOptions,
    held: Lease | None = None,
) -> RunReport:
    """Run the sync for one source and record it; never raises for a failed run."""
    clock = time.monotonic()
    started = utcnow()
    with factory() as session:
        marks = _choose_mode(session, source, options.full)
    mode = FULL if marks is None else INCREMENTAL
    run_id = None
    if not options.dry_run:
        with transaction(factory, writing=True) as session:
            run = SyncRun(source=source.name, mode=mode, started_at=started)
            session.add(run)
            session.flush()
            run_id = run.id
    report = RunReport(source=source.name, mode=mode, outcome=FAILED)
    last_renew = [time.monotonic()]

    def progress(read: int) -> None:
        if options.progress:
            options.progress(source.name, read)
        if held is not None and time.monotonic() - last_renew[0] > 30:
            held.renew()
            last_renew[0] = time.monotonic()

    # A run builds hundreds of thousands of small objects that form no cycles; the
    # cyclic collector would rescan them over and over as they accumulate.
    collecting = gc.isenabled()
    gc.disable()
    try:
        read = DirectoryRead(source, marks, progress, started=started)
        report.mode = mode = FULL if read.full else INCREMENTAL
        report.server = read.server
        plan = _plan(factory, source, read)
        report.entries_read = plan.entries_read
        report.phases["read+plan"] = time.monotonic() - clock
        report.plan = plan
        report.counts = plan.counts()
        # What the plan refused (an address taken, an invalid entry): the run still
        # succeeds, and says so in its summary, its record and the domain overview.
        report.warnings = plan.problems[:KEPT_WARNINGS]
        if len(plan.problems) > KEPT_WARNINGS:
            report.warnings.append(f"and {len(plan.problems) - KEPT_WARNINGS} more")
        _guard(plan, report.entries_read, source, options.allow_mass_removal)
        if options.dry_run:
            report.outcome = DRY_RUN
        else:
            with transaction(factory, writing=True) as session:
                if engine.dialect.name == "sqlite" and len(plan.creates) > ROOMY_CACHE_AFTER:
                    # SQLite's 2 MB page cache makes a million inserts into the person
                    # indexes a third slower; the sync process ends after its run.
                    session.execute(text(f"PRAGMA cache_size = -{ROOMY_CACHE_KIB}"))
                domains = domain_ids(session)
                apply_plan(session, plan, domains, actor=f"sync:{source.name}")
                report.counts["staff_roles"] = apply_roles(
                    session, source.name, read.role_members, source.domains, domains
                )
                save_mark(session, source.name, read.mark_key, read.next_mark)
                if held is not None:
                    held.confirm(session)
                report.phases["apply"] = time.monotonic() - clock - report.phases["read+plan"]
                report.outcome = SUCCESS
                _finish(session, run_id, report, clock)
    except LeaseLost as error:
        report.error = f"{error}; this run changed nothing"
    except GuardTripped as error:
        report.outcome, report.error = GUARD, str(error)
    except DirectoryReadError as error:
        report.error = str(error)
    except Exception as error:  # noqa: BLE001 - any failure is recorded, then reported
        log.exception("sync failed")
        report.error = f"{type(error).__name__}: {error}"
    finally:
        if collecting:
            gc.enable()
    report.seconds = time.monotonic() - clock
    if report.outcome != SUCCESS and run_id is not None:
        with transaction(factory) as session:
            _finish(session, run_id, report, clock)
    level = logging.INFO if report.outcome in (SUCCESS, DRY_RUN) else logging.ERROR
    log_event(
        log,
        level,
        "sync.run",
        source=source.name,
        mode=report.mode,
        outcome=report.outcome,
        read=report.entries_read,
        error=report.error,
        **{k: v for k, v in report.counts.items() if v},
    )
    return report


def _finish(session: Session, run_id: int | None, report: RunReport, clock: float) -> None:
    """Write the outcome into the run's record."""
    run = session.get(SyncRun, run_id) if run_id is not None else None
    if run is None:
        return
    run.mode = report.mode
    run.server = report.server
    run.finished_at = utcnow()
    run.outcome = report.outcome
    run.entries_read = report.entries_read
    run.counts = dict(report.counts)
    if report.warnings:
        run.counts["warnings"] = report.warnings
    run.error = report.error
    report.seconds = time.monotonic() - clock


def run_sync(
    config: Config, engine: Engine, options: SyncOptions, only: str | None = None
) -> list[RunReport]:
    """Sync every configured source (or only one), holding the sync lock throughout.

    Raises roster.locks.LockHeld when another run is going; a dry run takes no lock.
    """
    factory = session_factory(engine)
    sources = [config.directory(only)] if only else list(config.directories)
    if options.dry_run:
        return [sync_source(engine, factory, s, options) for s in sources]
    with lease(engine, LEASE, config.sync_lock_seconds) as held:
        with transaction(factory, writing=True) as session:
            abandoned = abandon_lapsed(session)
        if abandoned:
            log_event(log, logging.WARNING, "sync.abandoned_runs_recorded", runs=abandoned)
        reports = [sync_source(engine, factory, s, options, held) for s in sources]
    _refresh_statistics(engine, reports)
    return reports


ANALYZE_AFTER = 1000
"""People created or removed by one run after which SQLite's table statistics are
read again."""


def _refresh_statistics(engine: Engine, reports: list[RunReport]) -> None:
    """Give SQLite's query planner statistics after a large change of the roster.

    Without them (a first sync, a big import) SQLite may walk a whole domain's index
    where ten rows by id would do. PostgreSQL's autovacuum does this by itself.
    """
    if engine.dialect.name != "sqlite":
        return
    changed = sum(
        r.counts.get("created", 0) + r.counts.get("removed", 0)
        for r in reports
        if r.outcome == SUCCESS
    )
    try:
        with engine.connect() as connection:
            # Also when the roster never had statistics (grown in small runs).
            missing = not connection.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
            ).first()
            if changed >= ANALYZE_AFTER or (missing and changed):
                connection.exec_driver_sql("ANALYZE")
                connection.commit()
    except OperationalError as error:
        # The sync itself is done and committed: a busy roster only delays statistics.
        log_event(log, logging.WARNING, "sync.analyze_failed", error=str(error.orig))
