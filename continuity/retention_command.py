"""``continuity retention``: one run of the three-month archive's retention (daily from
cron or its systemd timer; the gateway also runs it once a day on its own)."""

from __future__ import annotations

import json
import sys

import click
from sqlalchemy.exc import OperationalError

from continuity.cli import State, fail, pass_state
from roster.locks import LockHeld

EXIT_LOCKED = 75
"""Another run holds the lease: this one did nothing (cron and systemd treat it as fine)."""


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_state
def retention(state: State, dry_run: bool, as_json: bool) -> None:
    """Expunge standby mail past its age, empty the mailboxes of people no longer covered
    after their grace, prune the queue's old tracking data; print what went."""
    from gateway.retention import run_retention
    from roster.retention import OK

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
        if not report.standby:
            click.echo("the standby store is not configured ([standby] imap, master_password)")
        if report.mailboxes_failed or report.uncovered_waiting:
            click.echo(
                f"{report.mailboxes_failed} mailbox(es) could not be read and"
                f" {report.uncovered_waiting} could not be emptied yet: the next run tries again"
            )
    # 1 when some mailbox could not be read or emptied: cron mails it, the timer's unit fails.
    sys.exit(0 if report.outcome == OK else 1)
