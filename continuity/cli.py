"""The `continuity` command line. Commands stay thin: build the configuration, call one
function of roster, sync, gateway or portal, print the result."""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

import click
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from roster.config import Config, ConfigError, host_port, load_config
from roster.db import (
    current_revision,
    make_engine,
    session_factory,
    sqlite_file_missing,
    transaction,
    upgrade,
)
from roster.domains import (
    Primary,
    RosterError,
    add_domain,
    domain_state,
    get_domain,
    parse_primary,
)
from roster.locks import LockHeld
from roster.models import Alias, Domain, Person

EXIT_USAGE = 2


class State:
    """What every command shares: the configuration and the database, loaded on demand."""

    def __init__(self, config_path: str | None, verbose: int) -> None:
        self.config_path = config_path
        self.verbose = verbose
        self._config: Config | None = None
        self._engine: Engine | None = None

    @property
    def config(self) -> Config:
        """The configuration; a bad one ends the command with exit status 2."""
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as error:
                fail(f"configuration error: {error}", EXIT_USAGE)
        return self._config

    def close(self) -> None:
        """Give back the database connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        """The roster database engine (it never creates a SQLite roster file)."""
        if self._engine is None:
            self._engine = make_engine(self.config.database_url)
        return self._engine

    @contextmanager
    def session(self, writing: bool = False) -> Iterator[Session]:
        """A roster transaction; roster refusals end the command with a clear line."""
        try:
            with transaction(session_factory(self.engine), writing=writing) as session:
                yield session
        except RosterError as error:
            fail(str(error), 1)
        except OperationalError as error:
            fail(f"the roster database cannot be used: {error.orig}", 1)

    def require_schema(self) -> None:
        """Stop with a hint when the database has not been set up."""
        missing = sqlite_file_missing(self.config.database_url)
        if missing is not None:
            fail(f"the roster database {missing} does not exist: run `continuity db upgrade`", 1)
        try:
            revision = current_revision(self.engine)
        except OperationalError as error:
            fail(f"the roster database cannot be reached: {error.orig}", 1)
        if revision is None:
            fail("the roster database is empty: run `continuity db upgrade` first", 1)


def fail(message: str, status: int) -> NoReturn:
    """Print one line to stderr and exit with ``status``."""
    click.echo(f"continuity: {message}", err=True)
    sys.exit(status)


def actor() -> str:
    """Who is running this command, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


P = ParamSpec("P")
R = TypeVar("R")
_pass_state = click.make_pass_decorator(State)


def pass_state(command: Callable[Concatenate[State, P], R]) -> Callable[P, R]:
    """Give a command the group's State as its first argument (click.make_pass_decorator,
    as a function so that mypy knows its type in the command modules this one imports)."""
    return _pass_state(command)


@click.group()
@click.option(
    "--config",
    "config_path",
    envvar="CONTINUITY_CONFIG",
    type=click.Path(dir_okay=False),
    help="The TOML configuration (default: $CONTINUITY_CONFIG).",
)
@click.option("-v", "--verbose", count=True, help="Log more (repeat for debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Continuity: standby mail for when the primary mail server fails."""
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every SMTP command, addresses included, at INFO: only with -vv.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    ctx.obj = State(config_path, verbose)
    ctx.call_on_close(ctx.obj.close)


@cli.group()
def db() -> None:
    """The roster database."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Create the roster schema or bring it up to date (a SQLite file is made if missing)."""
    try:
        engine = make_engine(state.config.database_url, create=True)
    except OSError as error:
        fail(f"the roster database cannot be created: {error}", 1)
    try:
        upgrade(engine)
        revision = current_revision(engine)
    except OperationalError as error:
        fail(f"the roster database cannot be used: {error.orig}", 1)
    finally:
        engine.dispose()
    click.echo(f"roster schema at revision {revision}")


@cli.group(invoke_without_command=True)
@click.option("--full", is_flag=True, help="Read the whole directory (the only run that removes).")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--allow-mass-removal", is_flag=True, help="Let this run remove more than the limit.")
@click.option("--source", help="Sync only this [[directory]] source.")
@click.pass_context
def sync(
    ctx: click.Context,
    full: bool,
    dry_run: bool,
    as_json: bool,
    allow_mass_removal: bool,
    source: str | None,
) -> None:
    """Bring the roster in line with the directory (`sync status`: how the last runs went).

    Exit status: 0 success, 1 failure, 3 a guard stopped the run, 75 another run holds
    the lock.
    """
    if ctx.invoked_subcommand is not None:
        return
    from sync.run import EXIT_LOCKED, SyncOptions, run_sync

    state: State = ctx.obj

    config = state.config
    if not config.directories:
        fail("configuration error: [[directory]]: no directory source configured", EXIT_USAGE)
    if source:
        try:
            config.directory(source)
        except ConfigError as error:
            fail(f"configuration error: {error}", EXIT_USAGE)
    state.require_schema()
    progress = None
    if sys.stderr.isatty() and not as_json:
        progress = _progress_printer(state, source)
    options = SyncOptions(
        full=full, dry_run=dry_run, allow_mass_removal=allow_mass_removal, progress=progress
    )
    try:
        reports = run_sync(config, state.engine, options, only=source)
    except LockHeld as error:
        fail(f"{error}; not starting a second run", EXIT_LOCKED)
    finally:
        if progress is not None:
            click.echo("", err=True)
    if as_json:
        runs = []
        for report in reports:
            body = report.as_dict()
            if dry_run and report.plan is not None:
                body["plan"] = _plan_lines(report.plan)
            runs.append(body)
        click.echo(json.dumps({"runs": runs}, indent=2, ensure_ascii=False))
    for report in reports:
        if dry_run and report.plan is not None and not as_json:
            for line in _plan_lines(report.plan):
                click.echo(line)
        if not as_json:
            _print_summary(report)
    sys.exit(max(r.exit_status for r in reports))


@sync.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def sync_status(state: State, as_json: bool) -> None:
    """How the last run of each source went; exit 1 when the sync is degraded.

    Degraded: a source's last run failed or was abandoned, or none of its runs
    succeeded within [sync] stale_after_minutes.
    """
    from datetime import timedelta

    from roster.syncruns import sync_health

    state.require_schema()
    stale_after = timedelta(minutes=state.config.sync_stale_after_minutes)
    with state.session() as session:
        health = sync_health(session, [d.name for d in state.config.directories], stale_after)
    if as_json:
        body = {
            "status": "degraded" if health.degraded else "ok",
            "reasons": [reason.text() for reason in health.reasons],
            "last_sync": [
                {
                    "source": run.source,
                    "mode": run.mode,
                    "outcome": run.outcome,
                    "started_at": run.started_at.isoformat(timespec="seconds"),
                    "finished_at": run.finished_at.isoformat(timespec="seconds")
                    if run.finished_at
                    else None,
                    "last_success_at": run.last_success_at.isoformat(timespec="seconds")
                    if run.last_success_at
                    else None,
                    "error": run.error,
                }
                for run in health.runs
            ],
        }
        click.echo(json.dumps(body, indent=2))
    else:
        for run in health.runs:
            success = (
                run.last_success_at.isoformat(timespec="seconds")
                if run.last_success_at
                else "never"
            )
            click.echo(
                f"source={run.source} mode={run.mode} outcome={run.outcome}"
                f" started={run.started_at.isoformat(timespec='seconds')}"
                f" last_success={success}"
            )
        click.echo("status=degraded" if health.degraded else "status=ok")
        for reason in health.reasons:
            click.echo(f"reason {reason.text()}")
    sys.exit(1 if health.degraded else 0)


def _progress_printer(state: State, only: str | None) -> Callable[[str, int], None]:
    """A progress bar on the terminal; the total is the roster's size for the source."""
    from sqlalchemy import func

    totals: dict[str, int] = {}
    with state.session() as session:
        rows = session.execute(
            select(Person.source, func.count())
            .where(Person.removed_at.is_(None))
            .group_by(Person.source)
        )
        totals = {name: count for name, count in rows}

    def show(source: str, read: int) -> None:
        total = totals.get(source, 0)
        if total >= read and total:
            done = int(30 * read / total)
            bar = "#" * done + "-" * (30 - done)
            line = f"\r{source}: [{bar}] {read:,}/{total:,} entries read"
        else:
            line = f"\r{source}: {read:,} entries read"
        click.echo(line, err=True, nl=False)

    return show


def _plan_lines(plan: Any) -> list[str]:
    """The actions of a dry run, one per line."""
    lines = [f"create  {c.entry.mail}  ({c.entry.dn})" for c in plan.creates]
    for update in plan.updates:
        if update.renamed_from:
            lines.append(f"rename  {update.renamed_from} -> {update.entry.mail}")
        if update.disabled_now:
            lines.append(f"disable {update.entry.mail}")
        if update.enabled_now:
            lines.append(f"enable  {update.entry.mail}")
        if update.restored:
            lines.append(f"restore {update.entry.mail}")
        rest = [c for c in update.changed if c not in ("mail", "disabled")]
        if rest and not update.restored:
            lines.append(f"update  {update.entry.mail}  ({', '.join(rest)})")
    lines += [f"remove  {removal.mail}" for removal in plan.removals]
    lines += [f"warning {problem}" for problem in plan.problems]
    return lines


def _print_summary(report: Any) -> None:
    """One line per source: what a cron mail or a person reads first."""
    counts = " ".join(f"{k}={v}" for k, v in report.counts.items() if v)
    line = (
        f"sync source={report.source} mode={report.mode} outcome={report.outcome}"
        f" read={report.entries_read} {counts} duration={report.seconds:.1f}s"
    ).replace("  ", " ")
    if report.warnings:
        total = len(report.plan.problems) if report.plan else len(report.warnings)
        line += f" warnings={total}"
    if report.error:
        line += f" error={json.dumps(report.error)}"
    click.echo(line)
    if report.outcome != "dry-run":  # a dry run printed them with its plan
        for warning in report.warnings:
            click.echo(f"warning source={report.source} {warning}")


@cli.group()
def domain() -> None:
    """Mail domains and their Continuity settings."""


@domain.command("add")
@click.argument("name")
@click.option("--primary", help="The domain's own mail server, HOST:PORT.")
@pass_state
def domain_add(state: State, name: str, primary: str | None) -> None:
    """Add a mail domain to the roster."""
    state.require_schema()
    parsed: Primary | None = None
    if primary:
        try:
            parsed = parse_primary(primary)
        except RosterError as error:
            fail(f"--primary: {error}", EXIT_USAGE)
    with state.session(writing=True) as session:
        added = add_domain(session, name, actor(), parsed)
        click.echo(f"added domain {added.name}")


@domain.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def domain_list(state: State, as_json: bool) -> None:
    """List the domains of the roster."""
    state.require_schema()
    with state.session() as session:
        domains = [domain_state(d) for d in session.scalars(select(Domain).order_by(Domain.name))]
    if as_json:
        click.echo(json.dumps(domains, indent=2))
        return
    for item in domains:
        active = "active" if item["continuity_active"] else "inactive"
        click.echo(f"{item['name']}\t{active}\t{item['coverage_mode']}\t{item['primary'] or '-'}")


@domain.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def domain_show(state: State, name: str, as_json: bool) -> None:
    """Show one domain's settings, its people, its last sync and its continuity state."""
    from roster.service import overview

    state.require_schema()
    with state.session() as session:
        found = get_domain(session, name)
        shown = _overview_json(overview(session, found, state.config.sources_for(found.name)))
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    for key, value in shown.items():
        click.echo(f"{key}: {value}")


def _overview_json(found: Any) -> dict[str, Any]:
    """A domain's overview (roster.service.Overview) as plain values, for `domain show`."""
    run = found.last_sync
    check = found.primary_check
    return {
        **found.settings,
        "people": found.people,
        "people_disabled": found.people_disabled,
        "covered": found.covered,
        "covered_without_emergency_password": found.covered_without_emergency_password,
        "listed": found.listed,
        "last_sync": None
        if run is None
        else {
            "source": run.source,
            "mode": run.mode,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "outcome": run.outcome,
            "counts": run.counts,
            "error": run.error,
        },
        "continuity_state": found.continuity_state,
        "outage_since": found.outage_since.isoformat() if found.outage_since else None,
        "primary_checked_at": check.at.isoformat() if check else None,
        "primary_check_ok": check.ok if check else None,
        "recovering_since": found.recovering_since.isoformat() if found.recovering_since else None,
        "mail_today": None
        if found.mail is None
        else {"since": found.mail_since.isoformat(), **dataclasses.asdict(found.mail)},
    }


@domain.command("activate")
@click.argument("name")
@pass_state
def domain_activate(state: State, name: str) -> None:
    """Activate Continuity Service for a domain (at once: no restart)."""
    from roster.service import activate

    state.require_schema()
    with state.session(writing=True) as session:
        found = get_domain(session, name)
        changed = activate(session, found, actor())
    click.echo(f"Continuity Service is active for {found.name}" + ("" if changed else " (it was)"))


@domain.command("deactivate")
@click.argument("name")
@pass_state
def domain_deactivate(state: State, name: str) -> None:
    """Deactivate Continuity Service: no more standby copies, no emergency sign-in.

    Mail already held is kept and still handed back to the primary server."""
    from roster.service import deactivate

    state.require_schema()
    with state.session(writing=True) as session:
        found = get_domain(session, name)
        changed = deactivate(session, found, actor())
    click.echo(
        f"Continuity Service is inactive for {found.name}" + ("" if changed else " (it was)")
    )


@domain.command("set")
@click.argument("name")
@click.option(
    "--emergency-password",
    type=click.Choice(["on", "off"]),
    help="Let covered people sign in with an emergency password.",
)
@click.option("--primary", help="The domain's own mail server, HOST:PORT.")
@click.option("--primary-tls", type=click.Choice(["starttls", "tls", "none"]))
@click.option("--failover", type=click.Choice(["automatic", "manual"]))
@click.option("--probe-interval", type=int, help="Seconds between probes of the primary.")
@click.option("--failures-before-failover", type=int, help="Failed probes before failover.")
@click.option(
    "--primary-tls-verify",
    type=click.Choice(["on", "off"]),
    help="Check the primary's certificate (off: a security decision, audited).",
)
@click.option("--recover-after", type=int, help="Good checks in a row that start the hand-back.")
@click.option("--failover-codes", help="Reply codes that count as a failure, e.g. 452,552.")
@click.option(
    "--language", type=click.Choice(["en", "es"]), help="The language of the product's mail."
)
@click.option(
    "--verify-recipients",
    type=click.Choice(["on", "off"]),
    help="Ask the primary about unknown recipients at RCPT time.",
)
@click.option(
    "--sent-copies",
    type=click.Choice(["on", "off"]),
    help="Hand what people send from the webmail during an event to the primary for Sent.",
)
@click.option(
    "--webmail",
    type=click.Choice(["always", "outage"]),
    help="Open the standby webmail at all times, or only during a continuity event.",
)
@pass_state
def domain_set(
    state: State,
    name: str,
    emergency_password: str | None,
    primary: str | None,
    primary_tls: str | None,
    failover: str | None,
    probe_interval: int | None,
    failures_before_failover: int | None,
    primary_tls_verify: str | None,
    recover_after: int | None,
    failover_codes: str | None,
    language: str | None,
    verify_recipients: str | None,
    sent_copies: str | None,
    webmail: str | None,
) -> None:
    """Change a domain's settings; each change is audited."""
    from roster.domains import Refused, check_primary
    from roster.service import set_primary, set_webmail_access, switch_emergency_password

    state.require_schema()
    primary_options = (
        primary,
        primary_tls,
        failover,
        probe_interval,
        failures_before_failover,
        primary_tls_verify,
        recover_after,
        failover_codes,
        language,
        verify_recipients,
        sent_copies,
    )
    nothing_else = emergency_password is None and webmail is None
    if nothing_else and all(value is None for value in primary_options):
        fail("nothing to set: give at least one option (see --help)", EXIT_USAGE)
    parsed: Primary | None = None
    if primary:
        try:
            parsed = parse_primary(primary)
        except RosterError as error:
            fail(f"--primary: {error}", EXIT_USAGE)
    with state.session(writing=True) as session:
        found = get_domain(session, name)
        if any(value is not None for value in primary_options):
            host = parsed.host if parsed else found.primary_host
            if host is None:
                fail("--primary: the domain has no primary server yet; name it", EXIT_USAGE)
            try:
                settings = check_primary(
                    host,
                    parsed.port if parsed else found.primary_port,
                    primary_tls or found.primary_tls,
                    found.failover_automatic if failover is None else failover == "automatic",
                    found.probe_interval_seconds if probe_interval is None else probe_interval,
                    found.failures_before_failover
                    if failures_before_failover is None
                    else failures_before_failover,
                    tls_verify=found.primary_tls_verify
                    if primary_tls_verify is None
                    else primary_tls_verify == "on",
                    recover_after=found.recover_after if recover_after is None else recover_after,
                    failover_codes=found.failover_codes
                    if failover_codes is None
                    else failover_codes,
                    language=language or found.language,
                    verify_recipients=found.verify_recipients
                    if verify_recipients is None
                    else verify_recipients == "on",
                    sent_copies=found.sent_copies_to_primary
                    if sent_copies is None
                    else sent_copies == "on",
                )
            except Refused as refused:
                fail(str(refused), EXIT_USAGE)
            set_primary(session, found, settings, actor())
        if emergency_password is not None:
            switched_on = emergency_password == "on"  # noqa: S105 (on|off, not a password)
            switch_emergency_password(session, found, switched_on, actor())
        if webmail is not None:
            set_webmail_access(session, found, webmail, actor())
        state_now = domain_state(found)
    for key, value in state_now.items():
        click.echo(f"{key}: {value}")


@cli.group()
def coverage() -> None:
    """Who Continuity Service covers in a domain: all users or only selected users."""


@coverage.command("mode")
@click.argument("name")
@click.argument("mode", type=click.Choice(["all", "selected"]))
@click.option(
    "--yes",
    is_flag=True,
    help="Go on even if people lose coverage: to all users, the list of selected users is"
    " emptied; to only selected users, everyone not on the list is uncovered.",
)
@pass_state
def coverage_mode(state: State, name: str, mode: str, yes: bool) -> None:
    """Cover all users, or only the users on the domain's list."""
    from roster.domains import Refused
    from roster.service import set_coverage_mode

    state.require_schema()
    with state.session(writing=True) as session:
        found = get_domain(session, name)
        try:
            emptied = set_coverage_mode(session, found, mode, actor(), confirmed=yes)
        except Refused as refused:
            if refused.code == "confirm_all_users":
                fail(
                    f"{refused.params['count']} individually added user(s) of {found.name}"
                    " will be removed from the list when everyone is covered: run again with"
                    " --yes",
                    1,
                )
            if refused.code == "confirm_selected_users":
                fail(
                    f"{refused.params['count']} covered user(s) of {found.name} are not on the"
                    " list of selected users and will no longer be covered: run again with"
                    " --yes, or add them first (coverage add)",
                    1,
                )
            raise
    covered = "all users" if mode == "all" else "only selected users"
    note = f"; {emptied} listed user(s) taken off the list" if emptied else ""
    click.echo(f"{found.name} covers {covered}{note}")


@coverage.command("add")
@click.argument("name")
@click.argument("addresses", nargs=-1, required=True)
@pass_state
def coverage_add(state: State, name: str, addresses: tuple[str, ...]) -> None:
    """Put people on the domain's list of selected users (exit 1 if any is refused)."""
    _coverage_change(state, name, addresses, "add")


@coverage.command("remove")
@click.argument("name")
@click.argument("addresses", nargs=-1, required=True)
@pass_state
def coverage_remove(state: State, name: str, addresses: tuple[str, ...]) -> None:
    """Take people off the domain's list of selected users (exit 1 if any is refused)."""
    _coverage_change(state, name, addresses, "remove")


def _coverage_change(state: State, name: str, addresses: tuple[str, ...], action: str) -> None:
    from roster.bulk import bulk

    state.require_schema()
    with state.session(writing=True) as session:
        found = get_domain(session, name)
        report = bulk(session, found, "\n".join(addresses), action, actor())
    for line in report:
        click.echo(("" if line.done else "refused: ") + line.message, err=not line.done)
    if not all(line.done for line in report):
        sys.exit(1)


@coverage.command("list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def coverage_list(state: State, name: str, as_json: bool) -> None:
    """The people Continuity Service covers now (with all users: every active person)."""
    from roster.service import covered_people

    state.require_schema()
    with state.session() as session:
        found = get_domain(session, name)
        rows = [
            {"mail": p.mail, "display_name": p.display_name} for p in covered_people(session, found)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        click.echo(f"{row['mail']}\t{row['display_name']}")


@cli.group()
def roster() -> None:
    """The people in the roster."""


@roster.command("list")
@click.option("--domain", "domain_name", required=True, help="The mail domain.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--include-removed", is_flag=True, help="Also list people marked removed.")
@pass_state
def roster_list(state: State, domain_name: str, as_json: bool, include_removed: bool) -> None:
    """List the people of a domain."""
    state.require_schema()
    with state.session() as session:
        found = get_domain(session, domain_name)
        query = select(Person).where(Person.domain_id == found.id).order_by(Person.mail)
        if not include_removed:
            query = query.where(Person.removed_at.is_(None))
        people = list(session.scalars(query))
        aliases: dict[int, list[str]] = {}
        for person_id, address in session.execute(
            select(Alias.person_id, Alias.address)
            .join(Person, Person.id == Alias.person_id)
            .where(Person.domain_id == found.id)
            .order_by(Alias.address)
        ):
            aliases.setdefault(person_id, []).append(address)
        rows = [
            {
                "mail": p.mail,
                "display_name": p.display_name,
                "aliases": aliases.get(p.id, []),
                "status": "removed" if p.removed_at else "disabled" if p.disabled else "active",
                "source": p.source,
                "external_id": p.external_id,
                "dn": p.dn,
                "alternate_contact": p.alternate_contact,
            }
            for p in people
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        extra = f"\t{', '.join(row['aliases'])}" if row["aliases"] else ""
        click.echo(f"{row['mail']}\t{row['status']}\t{row['display_name']}{extra}")


@cli.group()
def staff() -> None:
    """Staff accounts: helpdesk and admins."""


@staff.command("add")
@click.argument("address")
@click.option(
    "--role",
    type=click.Choice(["helpdesk", "admin", "global-admin"]),
    required=True,
    help="helpdesk or admin of --domain, or global-admin of every domain.",
)
@click.option("--domain", "domain_name", help="The domain served (not for global-admin).")
@click.option(
    "--password-file",
    type=click.File("r", encoding="utf-8"),
    help="Read the password from this file (default: ask twice).",
)
@pass_state
def staff_add(
    state: State, address: str, role: str, domain_name: str | None, password_file: Any
) -> None:
    """Create a local staff account (or give an existing one another role)."""
    from roster.identity import ROLE_GLOBAL_ADMIN, add_local_staff
    from roster.passwords import MIN_LENGTH

    state.require_schema()
    if role == "global-admin" and domain_name:
        fail("--domain: a global admin serves every domain; leave it out", EXIT_USAGE)
    if role != "global-admin" and not domain_name:
        fail(f"--domain: a {role} serves one domain; name it", EXIT_USAGE)
    local, at, host = address.strip().rpartition("@")
    if not (local and at and host) or any(c.isspace() for c in address.strip()):
        fail(f"{address!r} is not an email address", EXIT_USAGE)
    if password_file is not None:
        password = password_file.read().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_LENGTH:
        fail(f"the password must have at least {MIN_LENGTH} characters", EXIT_USAGE)
    with state.session(writing=True) as session:
        domain = get_domain(session, domain_name) if domain_name else None
        add_local_staff(
            session,
            address,
            password,
            ROLE_GLOBAL_ADMIN if role == "global-admin" else role,
            domain,
            actor(),
        )
    where = f" of {domain.name}" if domain else ""
    click.echo(f"{address.strip().lower()} is {role}{where}")


@cli.command()
@click.option("--listen", default=None, help="HOST:PORT to listen on (default [portal].listen).")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Worker processes, 1 or more (default [portal].workers, else 2 a core plus 1, at most 5).",
)
@pass_state
def serve(state: State, listen: str | None, workers: int | None) -> None:
    """Run the portal under gunicorn until SIGTERM or Ctrl-C."""
    from portal import create_app
    from portal.server import default_workers, serve_app

    config = state.config
    address = _listen_option(listen) or str(config.portal.get("listen", "127.0.0.1:8080"))
    if workers is None:
        workers = int(config.portal.get("workers") or default_workers())
    if workers < 1:
        # gunicorn would run a master with no worker: a portal that answers nobody.
        fail(f"--workers: must be at least 1, got {workers}", EXIT_USAGE)
    state.require_schema()
    try:
        app = create_app(config=config)
    except ConfigError as error:
        fail(f"configuration error: {error}", EXIT_USAGE)
    serve_app(app, address, workers)


def _listen_option(value: str | None) -> str | None:
    """A --listen HOST:PORT checked as the configuration's addresses are (exit 2 if bad)."""
    if value is None:
        return None
    try:
        return host_port(value, "--listen")
    except ConfigError as error:
        fail(str(error), EXIT_USAGE)


@cli.group(invoke_without_command=True)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Where the demo keeps everything (default: .demo here, or /var/tmp/continuity-demo"
    " when Dovecot's users cannot reach this directory, as under /root).",
)
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="The portal.")
@click.option(
    "--gateway", "gateway_listen", default="127.0.0.1:2525", show_default=True, help="SMTP in."
)
@click.option(
    "--probe-interval",
    default=10,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="Seconds between checks of each primary (below 10 only for tests).",
)
@click.option("--no-serve", is_flag=True, help="Set up and sync, then stop.")
@click.option("--no-seed", is_flag=True, help="Send no demo mail.")
@click.pass_context
def demo(
    ctx: click.Context,
    workdir: str | None,
    listen: str,
    gateway_listen: str,
    probe_interval: int,
    no_serve: bool,
    no_seed: bool,
) -> None:
    """Run the whole product on this machine with demo data, until Ctrl-C."""
    from continuity.demo import DemoError, DemoOptions, demo_workdir, run_demo

    ctx.obj = demo_workdir(workdir)
    if ctx.invoked_subcommand is not None:
        return
    options = DemoOptions(
        workdir=ctx.obj,
        listen=_listen_option(listen) or listen,
        gateway=host_port_option(gateway_listen, "--gateway"),
        probe_interval=probe_interval,
        serve=not no_serve,
        seed=not no_seed,
    )
    try:
        status = run_demo(options)
    except DemoError as error:
        fail(str(error), 1)
    sys.exit(status)


def host_port_option(value: str, option: str) -> str:
    """A HOST:PORT option checked as the configuration's addresses are (exit 2 if bad)."""
    try:
        return host_port(value, option)
    except ConfigError as error:
        fail(str(error), EXIT_USAGE)


@demo.command("outage")
@click.argument("domain")
@click.pass_obj
def demo_outage(workdir: Any, domain: str) -> None:
    """Take a demo domain's primary mail server down (in the running demo)."""
    _switch(workdir, domain, down=True)


@demo.command("recover")
@click.argument("domain")
@click.pass_obj
def demo_recover(workdir: Any, domain: str) -> None:
    """Bring a demo domain's primary mail server back (in the running demo)."""
    _switch(workdir, domain, down=False)


def _switch(workdir: Any, domain: str, *, down: bool) -> None:
    """Ask the running demo to take a primary down or bring it back; say what happened."""
    from continuity.demo import DemoError, switch_primary

    try:
        click.echo(switch_primary(workdir, domain, down))
    except DemoError as error:
        fail(str(error), 1)


# The mail path's commands live in a module of their own (it imports this one).
from continuity.mail_commands import event, gateway, queue, tracking  # noqa: E402

cli.add_command(gateway)
cli.add_command(queue)
cli.add_command(tracking)
cli.add_command(event)

from continuity.retention_command import retention  # noqa: E402

cli.add_command(retention)

from continuity.dkim_command import dkim  # noqa: E402

domain.add_command(dkim)

from continuity.health_command import gateway_health, sync_health_command  # noqa: E402

gateway.add_command(gateway_health)
sync.add_command(sync_health_command)


def main() -> None:
    """Entry point of the console script."""
    cli(prog_name="continuity")
