"""``continuity retention``: one run of the three-month archive's retention (daily from
cron or its systemd timer; the gateway also runs it once a day on its own), and
``continuity retention days D [N|default]``: a domain's own age for its standby mail."""

from __future__ import annotations

import json
import sys

import click
from sqlalchemy.exc import OperationalError

from continuity.cli import EXIT_USAGE, State, actor, fail, pass_state
from roster.locks import LockHeld

EXIT_LOCKED = 75
"""Another run holds the lease: this one did nothing (cron and systemd treat it as fine)."""


@click.group(invoke_without_command=True)
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def retention(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Expunge standby mail past its age, empty the mailboxes of people no longer covered
    after their grace, prune the queue's old tracking data; print what went."""
    if ctx.invoked_subcommand is not None:
        return
    from gateway.retention import run_retention
    from roster.retention import OK

    state: State = ctx.obj
    state.require_schema()
    try:
        report = run_retention(state.config, state.engine, dry_run=dry_run, started_by="cli")
    except LockHeld as error:
        fail(f"{error}; not starting a second run", EXIT_LOCKED)
    except OperationalError as error:
        fail(f"the roster database cannot be used: {error.orig}", 1)
    assert report is not None  # noqa: S101 - only a run "unless ran within" returns None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        verb = "would remove" if dry_run else "removed"
        click.echo(
            f"retention ({report.outcome}): {verb} {report.messages_expunged} standby"
            f" message(s) from {report.mailboxes} mailbox(es), kept"
            f" {report.messages_kept_held} still waiting for the primary;"
            f" {report.uncovered_mailboxes_emptied} mailbox(es) of people no longer covered"
            f" emptied ({report.uncovered_messages_expunged} message(s));"
            f" queue: {report.queue_messages} message(s), {report.queue_recipients}"
            f" recipient(s), {report.queue_copies} copy record(s), {report.bodies_dropped}"
            " body(ies) dropped"
        )
        if report.handed_over_emptied:
            click.echo(
                f"{report.handed_over_emptied} mailbox(es) of addresses now held by someone"
                f" else emptied ({report.handed_over_messages_expunged} message(s)): their"
                " new holders may open the webmail"
            )
        if not report.standby:
            click.echo("the standby store is not configured ([standby] imap, master_password)")
        if report.mailboxes_failed or report.uncovered_waiting:
            click.echo(
                f"{report.mailboxes_failed} mailbox(es) could not be read and"
                f" {report.uncovered_waiting} could not be emptied yet: the next run tries again"
            )
    # 1 when some mailbox could not be read or emptied: cron mails it, the timer's unit fails.
    sys.exit(0 if report.outcome == OK else 1)


@retention.command("days")
@click.argument("name")
@click.argument("days", required=False)
@pass_state
def retention_days(state: State, name: str, days: str | None) -> None:
    """Show or set how many days the standby store keeps DOMAIN's mail (a number, or
    "default" for the deployment's [standby] retention_days)."""
    from roster.domains import get_domain
    from roster.retention import (
        DEFAULT_RETENTION_DAYS,
        RetentionRefused,
        set_retention_days,
    )

    deployment = state.config.standby.get("retention_days", DEFAULT_RETENTION_DAYS)
    wanted: int | None = None
    if days is not None and days.strip().lower() != "default":
        if not days.strip().isdigit():
            fail(f"DAYS: expected a number of days or 'default', got {days!r}", EXIT_USAGE)
        wanted = int(days)
    state.require_schema()
    with state.session(writing=days is not None) as session:
        found = get_domain(session, name)
        if days is not None:
            try:
                set_retention_days(session, found, wanted, actor())
            except RetentionRefused as refused:
                fail(f"DAYS: {refused}", EXIT_USAGE)
        own = found.retention_days
        domain_name = found.name
    if own is None:
        click.echo(f"{domain_name}: standby mail kept {deployment} days (the deployment's)")
    else:
        click.echo(f"{domain_name}: standby mail kept {own} days (its own)")
