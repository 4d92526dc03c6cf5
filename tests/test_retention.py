"""Retention against a real Dovecot (deploy/dovecot/dovecot.conf) on SQLite and PostgreSQL:
standby mail older than its domain's age leaves every folder, newer mail and mail still
waiting for the primary stay; the queue loses final messages past their age and keeps
pending ones; a person no longer covered keeps their mail during the grace and nothing
after it; a dry run changes nothing; two runs never run at once."""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from imapclient import IMAPClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from gateway.headers import received_header
from gateway.retention import DailyRetention, run_retention
from gateway.service import Gateway
from gateway.standby_users import refresh_users_file
from roster.config import Config
from roster.domains import add_domain
from roster.locks import Lease
from roster.models import (
    BOUNCED,
    COPY_DONE,
    COPY_PENDING,
    DEFERRED,
    DELIVERED,
    AuditEvent,
    Domain,
    MailMessage,
    MailRecipient,
    Person,
    RetentionRun,
    StandbyCopy,
    StandbyMailbox,
    utcnow,
)
from roster.queue import new_queue_id
from roster.retention import LEASE_NAME, RetentionSettings, prune_queue
from tests.directory import Continuity
from tests.servers.dovecot import DovecotServer
from tests.standby_fixtures import next_second, standby_store  # noqa: F401 - the fixture, by name

DAY = timedelta(days=1)


@dataclass
class Store:
    """The test's roster, its two domains and the session's Dovecot."""

    engine: Engine
    server: DovecotServer
    database_url: str
    acme: str
    beta: str

    def config(self, **standby: object) -> Config:
        """A configuration reaching the store as the master user."""
        return Config(
            database_url=self.database_url,
            standby={
                "imap": f"{self.server.imap[0]}:{self.server.imap[1]}",
                "master_user": self.server.master_user,
                "master_password": self.server.master_password,
                "users_file": str(self.server.users_file),
                **standby,
            },
        )

    def toml(self, tmp_path: Path) -> Continuity:
        """The real command on a config file with the same settings."""
        command = Continuity(tmp_path, self.database_url)
        path = command.configure()
        path.write_text(
            path.read_text()
            + f'\n[standby]\nimap = "{self.server.imap[0]}:{self.server.imap[1]}"\n'
            f'master_user = "{self.server.master_user}"\n'
            f'master_password_file = "{self.server.master_password_file}"\n'
            f'users_file = "{self.server.users_file}"\n',
            encoding="utf-8",
        )
        return command

    def users_file(self) -> None:
        """Write the users file from the roster, as the gateway does, and let Dovecot see it."""
        with Session(self.engine) as session:
            refresh_users_file(session, self.server.users_file)
        next_second()

    def imap(self, address: str) -> IMAPClient:
        """Signed in to ``address``'s mailbox as the portal signs in."""
        client = IMAPClient(self.server.imap[0], port=self.server.imap[1], ssl=False, timeout=20)
        client.plain_login(
            self.server.master_user, self.server.master_password, authorization_identity=address
        )
        return client

    def append(
        self, address: str, subject: str, age: timedelta, folder: str = "INBOX", head: str = ""
    ) -> None:
        """A message that arrived in the store ``age`` ago (its INTERNALDATE)."""
        message = (
            f"{head}From: someone@sender.test\r\nTo: {address}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{secrets.token_hex(8)}@sender.test>\r\n\r\nHello.\r\n"
        ).encode()
        with self.imap(address) as client:
            client.append(folder, message, msg_time=utcnow() - age)

    def subjects(self, address: str, folder: str = "INBOX") -> list[str]:
        """The subjects in one folder of the mailbox, sorted."""
        with self.imap(address) as client:
            if client.select_folder(folder, readonly=True)[b"EXISTS"] == 0:
                return []
            fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        return sorted(
            data[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().strip().removeprefix("Subject: ")
            for data in fetched.values()
        )

    def files(self, address: str) -> int:
        """Message files in every folder of the mailbox, read from the disk (the master user
        cannot sign in as someone not in the users file)."""
        maildir = self.server.maildir(address)
        return sum(
            1
            for path in maildir.rglob("*")
            if path.is_file() and path.parent.name in ("cur", "new")
        )


def person(session: Session, domain: Domain, local: str) -> Person:
    """A live person of ``domain``."""
    found = Person(
        domain_id=domain.id,
        source="corp",
        external_id=f"{local}-{secrets.token_hex(3)}",
        dn=f"uid={local}",
        mail=f"{local}@{domain.name}",
    )
    session.add(found)
    session.flush()
    return found


@pytest.fixture
def store(engine: Engine, database_url: str, standby_store: DovecotServer) -> Store:  # noqa: F811
    """acme (the deployment's age) and beta (10 days of its own), both covering all users:
    Ana and Eve in acme, Dan in beta. Domain names of their own: the Dovecot is shared."""
    tag = secrets.token_hex(4)
    acme_name, beta_name = f"acme-{tag}.test", f"beta-{tag}.test"
    with Session(engine) as session, session.begin():
        acme = add_domain(session, acme_name, "setup")
        beta = add_domain(session, beta_name, "setup")
        acme.continuity_active = beta.continuity_active = True
        beta.retention_days = 10
        person(session, acme, "ana")
        person(session, acme, "eve")
        person(session, beta, "dan")
    built = Store(engine, standby_store, database_url, acme_name, beta_name)
    built.users_file()
    return built


def queue_message(
    engine: Engine,
    mailbox: str,
    *,
    age: timedelta,
    statuses: tuple[str, ...] = (DELIVERED,),
    copy: str = COPY_DONE,
    body: bytes = b"Subject: x\r\n\r\nbody\r\n",
) -> tuple[str, str]:
    """A message of the queue received ``age`` ago, with a recipient per status and a
    standby copy for ``mailbox``: (queue id, Message-ID)."""
    received = utcnow() - age
    queue_id = new_queue_id(received.timestamp())
    message_id = f"<{secrets.token_hex(8)}@sender.test>"
    domain = mailbox.rpartition("@")[2]
    with Session(engine) as session, session.begin():
        domain_id = session.scalar(select(Domain.id).where(Domain.name == domain))
        session.add(
            MailMessage(
                queue_id=queue_id,
                received_at=received,
                sender="someone@sender.test",
                size=len(body),
                message_id=message_id,
                body=body,
            )
        )
        session.flush()
        for status in statuses:
            final = status in (DELIVERED, BOUNCED)
            session.add(
                MailRecipient(
                    queue_id=queue_id,
                    domain_id=domain_id,
                    address=mailbox,
                    status=status,
                    attempts=1,
                    next_attempt_at=received,
                    last_attempt_at=received if final else utcnow(),
                    delivered_at=received if status == DELIVERED else None,
                )
            )
        session.add(
            StandbyCopy(
                queue_id=queue_id,
                domain_id=domain_id,
                mailbox=mailbox,
                status=copy,
                attempts=1,
                next_attempt_at=received,
                copied_at=received if copy == COPY_DONE else None,
            )
        )
    return queue_id, message_id


def test_old_standby_mail_goes_new_and_held_mail_stays_and_a_dry_run_changes_nothing(
    store: Store, tmp_path: Path
) -> None:
    """Ana (92 days): old mail leaves INBOX and Sent, last week's stays, and so does a
    100-day-old copy whose message the primary has not taken yet (deferred: its queue id is
    in the gateway's Received line). Dan's domain keeps 10 days: 20 days is too old."""
    ana, dan = f"ana@{store.acme}", f"dan@{store.beta}"
    queue_id, _ = queue_message(store.engine, ana, age=100 * DAY, statuses=(DEFERRED,))
    received = received_header(
        helo="client.test",
        client_ip="192.0.2.1",
        our_name="gateway.test",
        with_protocol="ESMTP",
        queue_id=queue_id,
        recipient=ana,
    ).decode()
    store.append(ana, "old", 100 * DAY)
    store.append(ana, "last week", 7 * DAY)
    store.append(ana, "held for the primary", 100 * DAY, head=received)
    store.append(ana, "old sent", 120 * DAY, folder="Sent")
    store.append(dan, "twenty days", 20 * DAY)
    store.append(dan, "five days", 5 * DAY)
    command = store.toml(tmp_path)

    dry = command.run("retention", "--dry-run", "--json")

    assert dry.exit_code == 0, dry.output
    summary = json.loads(dry.stdout)
    assert summary["dry_run"] is True
    assert summary["messages_expunged"] == 3
    assert summary["messages_kept_held"] == 1
    assert store.subjects(ana) == ["held for the primary", "last week", "old"]
    assert store.subjects(ana, "Sent") == ["old sent"]
    assert store.subjects(dan) == ["five days", "twenty days"]
    with Session(store.engine) as session:
        assert session.scalars(select(RetentionRun)).all() == []
        assert session.scalars(select(StandbyMailbox)).all() == []

    done = command.run("retention", "--json")

    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["outcome"], summary["mailboxes"]) == ("ok", 3)
    assert summary["messages_expunged"] == 3
    assert summary["messages_kept_held"] == 1
    assert summary["by_domain"] == {store.acme: 2, store.beta: 1}
    assert store.subjects(ana) == ["held for the primary", "last week"]
    assert store.subjects(ana, "Sent") == []
    assert store.subjects(dan) == ["five days"]
    with Session(store.engine) as session:
        (run,) = session.scalars(select(RetentionRun)).all()
        assert (run.outcome, run.dry_run, run.counts["messages_expunged"]) == ("ok", False, 3)

    # Once the primary has it, the old copy goes too.
    with Session(store.engine) as session, session.begin():
        session.execute(update(MailRecipient).values(status=DELIVERED, delivered_at=utcnow()))
    text = command.run("retention")
    assert text.exit_code == 0, text.output
    assert "removed 1 standby message(s) from 3 mailbox(es)" in text.stdout
    assert store.subjects(ana) == ["last week"]


def test_the_queue_keeps_what_is_pending_and_loses_old_final_messages(
    store: Store,
) -> None:
    """Tracking and queue data: final messages older than tracking_days go with their
    recipients and copies, in chunks; bodies of final messages older than
    keep_bodies_days are dropped; nothing with a recipient or a copy pending is touched."""
    ana = f"ana@{store.acme}"
    old_final, _ = queue_message(store.engine, ana, age=100 * DAY, statuses=(DELIVERED, BOUNCED))
    old_final_2, _ = queue_message(store.engine, ana, age=95 * DAY)
    old_deferred, _ = queue_message(store.engine, ana, age=100 * DAY, statuses=(DEFERRED,))
    old_copy_pending, _ = queue_message(store.engine, ana, age=100 * DAY, copy=COPY_PENDING)
    last_week, _ = queue_message(store.engine, ana, age=10 * DAY)
    recent, _ = queue_message(store.engine, ana, age=3 * DAY)
    recent_deferred, _ = queue_message(store.engine, ana, age=10 * DAY, statuses=(DEFERRED,))
    settings = RetentionSettings()

    counted = prune_queue(store.engine, settings, utcnow(), dry_run=True)
    assert counted == {"messages": 2, "recipients": 3, "copies": 2, "bodies": 1}
    with Session(store.engine) as session:
        assert len(session.scalars(select(MailMessage.queue_id)).all()) == 7

    pruned = prune_queue(store.engine, settings, utcnow(), dry_run=False, chunk=1)

    assert pruned == counted
    with Session(store.engine) as session:
        bodies = {
            r.queue_id: r.body
            for r in session.execute(select(MailMessage.queue_id, MailMessage.body))
        }
        left = {r.queue_id for r in session.scalars(select(MailRecipient))}
        copies = {c.queue_id for c in session.scalars(select(StandbyCopy))}
    assert set(bodies) == left == copies
    assert set(bodies) == {old_deferred, old_copy_pending, last_week, recent, recent_deferred}
    assert old_final not in bodies and old_final_2 not in bodies
    assert bodies[last_week] == b""
    assert all(bodies[q] for q in (old_deferred, old_copy_pending, recent, recent_deferred))


def test_someone_no_longer_covered_keeps_their_mail_for_the_grace_and_nothing_after(
    store: Store,
) -> None:
    """Eve stops being covered (disabled): the users file drops her at once, her mail stays
    on disk through the grace (30 days), and the first run after it empties every folder,
    removes the folders she made and forgets her; Ana is untouched."""
    eve, ana = f"eve@{store.acme}", f"ana@{store.acme}"
    store.append(eve, "inbox mail", 2 * DAY)
    store.append(eve, "filed mail", 3 * DAY, folder="Sent")
    with store.imap(eve) as client:
        client.create_folder("Projects")
    store.append(eve, "project mail", 1 * DAY, folder="Projects")
    store.append(ana, "ana's mail", 2 * DAY)
    config = store.config()
    assert run_retention(config, store.engine).outcome == "ok"  # type: ignore[union-attr]

    with Session(store.engine) as session, session.begin():
        session.execute(update(Person).where(Person.mail == eve).values(disabled=True))
    store.users_file()
    assert eve not in store.server.users_file.read_text()

    report = run_retention(config, store.engine)
    assert (report.newly_uncovered, report.uncovered_mailboxes_emptied) == (1, 0)
    assert store.files(eve) == 3

    def uncovered_for(days: int) -> None:
        with Session(store.engine) as session, session.begin():
            session.execute(
                update(StandbyMailbox)
                .where(StandbyMailbox.address == eve)
                .values(uncovered_since=utcnow() - days * DAY)
            )

    uncovered_for(29)
    report = run_retention(config, store.engine)
    assert report.uncovered_mailboxes_emptied == 0
    assert store.files(eve) == 3

    uncovered_for(31)
    dry = run_retention(config, store.engine, dry_run=True)
    assert dry.uncovered_mailboxes_emptied == 1
    assert store.files(eve) == 3
    with Session(store.engine) as session:
        assert session.get(StandbyMailbox, eve).emptying_since is None  # type: ignore[union-attr]

    report = run_retention(config, store.engine)

    assert (report.uncovered_mailboxes_emptied, report.uncovered_messages_expunged) == (1, 3)
    assert report.outcome == "ok"
    assert store.files(eve) == 0
    assert not (store.server.maildir(eve) / ".Projects").exists()
    assert eve not in store.server.users_file.read_text()
    with Session(store.engine) as session:
        assert session.get(StandbyMailbox, eve) is None
        assert session.get(StandbyMailbox, ana) is not None
    assert store.subjects(ana) == ["ana's mail"]


def test_covered_again_within_the_grace_keeps_everything(store: Store) -> None:
    """Eve is uncovered, then covered again before her grace ends: her mail stays and the
    grace starts over if she leaves again."""
    eve = f"eve@{store.acme}"
    store.append(eve, "kept", 2 * DAY)
    config = store.config()
    run_retention(config, store.engine)
    with Session(store.engine) as session, session.begin():
        session.execute(update(Person).where(Person.mail == eve).values(disabled=True))
    run_retention(config, store.engine)
    with Session(store.engine) as session, session.begin():
        session.execute(update(Person).where(Person.mail == eve).values(disabled=False))
        session.execute(
            update(StandbyMailbox)
            .where(StandbyMailbox.address == eve)
            .values(uncovered_since=utcnow() - 40 * DAY)
        )

    report = run_retention(config, store.engine)

    assert (report.covered_again, report.uncovered_mailboxes_emptied) == (1, 0)
    with Session(store.engine) as session:
        assert session.get(StandbyMailbox, eve).uncovered_since is None  # type: ignore[union-attr]
    assert store.subjects(eve) == ["kept"]


def test_a_second_run_while_one_holds_the_lease_does_nothing(store: Store, tmp_path: Path) -> None:
    """Two runs at once: the second finds the lease taken, says so, exits 75 and removes
    nothing; with two gateways checking every moment, the deployment runs one a day."""
    ana = f"ana@{store.acme}"
    store.append(ana, "old", 100 * DAY)
    command = store.toml(tmp_path)
    holder = Lease(store.engine, LEASE_NAME, 60)
    holder.acquire()
    try:
        second = command.run("retention")
    finally:
        holder.release()
    assert second.exit_code == 75
    assert "another retention run holds the lock" in second.stderr
    assert store.subjects(ana) == ["old"]

    gateways = [DailyRetention(store.config(), store.engine, f"gw{i}", 0.05) for i in range(2)]
    threads = [threading.Thread(target=g.run, daemon=True) for g in gateways]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while store.subjects(ana):
            assert time.monotonic() < deadline, "no gateway ran the retention"
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        for gateway in gateways:
            gateway.stopping.set()
        for thread in threads:
            thread.join(30)
    with Session(store.engine) as session:
        runs = session.scalars(select(RetentionRun)).all()
    assert [(r.outcome, r.started_by.startswith("gateway:gw")) for r in runs] == [("ok", True)]


def test_without_a_standby_store_only_the_queue_is_pruned(
    engine: Engine, database_url: str
) -> None:
    """No [standby] imap: retention says so and still prunes the queue."""
    with Session(engine) as session, session.begin():
        add_domain(session, "acme.test", "setup")
    queue_message(engine, "ana@acme.test", age=100 * DAY)

    report = run_retention(Config(database_url=database_url), engine)

    assert (report.standby, report.outcome, report.queue_messages) == (False, "ok", 1)


def test_a_domain_gets_an_age_of_its_own_from_the_command_line(
    store: Store, tmp_path: Path
) -> None:
    """`continuity retention days D [N|default]` shows and sets the domain's age (audited,
    bad input refused with exit 2), and the next run keeps the domain's mail that long."""
    ana = f"ana@{store.acme}"
    store.append(ana, "forty days", 40 * DAY)
    store.append(ana, "twenty days", 20 * DAY)
    command = store.toml(tmp_path)

    shown = command.run("retention", "days", store.acme)
    assert shown.exit_code == 0
    assert shown.stdout.strip() == f"{store.acme}: standby mail kept 92 days (the deployment's)"
    assert command.run("retention", "days", store.acme, "-3").exit_code == 2
    for bad in ("0", "ten", "3.5", "99999"):
        refused = command.run("retention", "days", store.acme, bad)
        assert refused.exit_code == 2, bad
        assert "DAYS:" in refused.stderr
    set_ = command.run("retention", "days", store.acme, "30")
    assert set_.stdout.strip() == f"{store.acme}: standby mail kept 30 days (its own)"

    assert command.run("retention").exit_code == 0
    assert store.subjects(ana) == ["twenty days"]

    back = command.run("retention", "days", store.acme, "default")
    assert back.stdout.strip() == f"{store.acme}: standby mail kept 92 days (the deployment's)"
    with Session(store.engine) as session:
        changes = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "retention.changed")
            .order_by(AuditEvent.id)
        ).all()
    assert [(e.before, e.after, e.actor.startswith("cli")) for e in changes] == [
        ({"retention_days": "default"}, {"retention_days": 30}, True),
        ({"retention_days": 30}, {"retention_days": "default"}, True),
    ]


def test_the_gateway_runs_retention_on_its_own(store: Store) -> None:
    """`continuity gateway` runs retention by itself once a day: the day's run happens
    without cron, and the gateway stops cleanly."""
    ana = f"ana@{store.acme}"
    store.append(ana, "old", 100 * DAY)
    gateway = Gateway(
        store.config(),
        engine=store.engine,
        receive=False,
        deliver=False,
        copy=False,
        monitor=False,
        retention_check=0.05,
    )
    gateway.start()
    try:
        deadline = time.monotonic() + 30
        while store.subjects(ana):
            assert time.monotonic() < deadline, "the gateway did not run the retention"
            time.sleep(0.1)
    finally:
        gateway.stop()
    with Session(store.engine) as session:
        (run,) = session.scalars(select(RetentionRun)).all()
    assert run.outcome == "ok" and run.started_by.startswith("gateway:")
