"""`continuity tracking list|show`: Email Live Tracking from the command line, over mail
put through a real gateway to a live aiosmtpd primary, one message held in a continuity
event and handed back. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from roster.continuity import begin_recovery, start_event
from roster.models import DELIVERED, ContinuityEvent, Domain, MailRecipient
from roster.queue import writing
from tests.directory import Continuity
from tests.test_gateway import Mail, mail  # noqa: F401 - the fixture, by name


def status_of(running: Mail, queue_id: str) -> set[str]:
    """The queue statuses of a message's recipients."""
    with Session(running.engine) as session:
        return set(
            session.scalars(select(MailRecipient.status).where(MailRecipient.queue_id == queue_id))
        )


def test_list_and_show_a_domains_mail_with_the_held_message_deferred(
    mail: Mail,  # noqa: F811
    tmp_path: Path,
    database_url: str,
) -> None:
    """One message delivered, one held in an event and handed back: the list shows the
    held one Deferred via Continuity Service, the filters find each, pages go by key, and
    `show` tells when it was handed back."""
    first = mail.send(["ana@acme.test"], sender="writer@sender.test").rsplit(" ", 1)[-1]
    mail.wait(lambda: status_of(mail, first) == {DELIVERED})
    with Session(mail.engine) as session:
        acme = session.scalars(select(Domain.id).where(Domain.name == "acme.test")).one()
    with writing(mail.engine) as connection:
        event_id = start_event(connection, acme, reason="a test outage", actor="admin").event_id
    held = mail.send(["ana@acme.test"], sender="writer@sender.test").rsplit(" ", 1)[-1]
    with writing(mail.engine) as connection:
        begin_recovery(connection, event_id)
    mail.wait(lambda: status_of(mail, held) == {DELIVERED})
    command = Continuity(tmp_path, database_url)
    command.configure()

    def listed(*options: str) -> list[str]:
        result = command.run("tracking", "list", "acme.test", "--json", *options)
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        return [m["queue_id"] for m in shown["messages"] if m["sender"] == "writer@sender.test"]

    whole = json.loads(command.run("tracking", "list", "acme.test", "--json").stdout)
    mine = {m["queue_id"]: m for m in whole["messages"] if m["queue_id"] in (first, held)}
    assert listed() == [held, first]
    assert mine[held]["recipients"] == [
        {"address": "ana@acme.test", "status": "deferred", "via_continuity": True}
    ]
    assert mine[first]["recipients"][0]["status"] == "delivered"
    assert listed("--status", "deferred") == [held]
    assert listed("--status", "delivered") == [first]
    assert listed("--continuity") == [held]
    assert listed("--since", "1h") == [held, first]
    assert listed("--since", "2000-01-01", "--until", "2000-01-02") == []
    assert listed("--recipient", "ana@acme.test", "--sender", "WRITER@sender.test") == [
        held,
        first,
    ]

    text = command.run("tracking", "list", "acme.test", "--sender", "writer@sender.test")
    assert f"{held}  <writer@sender.test>  ana@acme.test Deferred (via Continuity Service)" in (
        text.stdout
    )
    paged = command.run(
        "tracking", "list", "acme.test", "--sender", "writer@sender.test", "--limit", "1"
    )
    key = re.search(r"older messages: add --older (\S+)", paged.stdout)
    assert key is not None and held in paged.stdout and first not in paged.stdout
    assert listed("--sender", "writer@sender.test", "--older", key.group(1)) == [first]

    shown = command.run("tracking", "show", held.lower(), "--json")
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    [ana] = detail["recipients"]
    with Session(mail.engine) as session:
        event = session.get(ContinuityEvent, event_id)
        handed_back_at = session.scalar(
            select(MailRecipient.delivered_at).where(MailRecipient.queue_id == held)
        )
    assert event is not None and handed_back_at is not None
    assert (ana["status"], ana["queue_status"], ana["via_continuity"]) == (
        "deferred",
        "delivered",
        True,
    )
    assert ana["handed_back_at"] == handed_back_at.isoformat(timespec="seconds")
    assert [step["step"] for step in detail["timeline"]][:2] == ["received", "held"]
    assert detail["timeline"][-1]["step"] == "handed_back"
    assert detail["continuity_events"][0]["cause"] == "a test outage"
    text_show = command.run("tracking", "show", held).stdout
    assert (
        "recipient ana@acme.test: Deferred via Continuity Service, 1 attempt(s), handed back"
        in (text_show)
    )


def test_wrong_input_is_named(mail: Mail, tmp_path: Path, database_url: str) -> None:  # noqa: F811
    """A time nobody could mean, a made-up page key, an unknown status, a domain or a
    message that is not there: a clear line and a non-zero exit."""
    command = Continuity(tmp_path, database_url)
    command.configure()

    since = command.run("tracking", "list", "acme.test", "--since", "yesterday")
    older = command.run("tracking", "list", "acme.test", "--older", "page-two")
    status = command.run("tracking", "list", "acme.test", "--status", "lost")
    nowhere = command.run("tracking", "list", "nowhere.test")
    missing = command.run("tracking", "show", "NOSUCHID")
    garbage = command.run("tracking", "show", "not an id!")
    empty = command.run("tracking", "list", "beta.test")

    assert since.exit_code == 2 and "--since: give a time as 2026-11-30T14:05" in since.stderr
    assert older.exit_code == 2 and "--older: give the key a page printed" in older.stderr
    assert status.exit_code == 2
    assert nowhere.exit_code == 1 and "nowhere.test is not in the roster" in nowhere.stderr
    assert missing.exit_code == 1 and "no message with queue id NOSUCHID" in missing.stderr
    assert garbage.exit_code == 1
    assert empty.exit_code == 0 and empty.stdout.strip() == "no message matches"
