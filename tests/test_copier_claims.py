"""Standby copies at their edges, into a real Dovecot: a batch into a slow store that
outlasts its claim while another gateway copies too (each copy lands once), and a
gateway that does not write the users file meeting a store down for a moment, then a
file that lags the roster (the copy still gets its one more try)."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from gateway.copier import Copier, UsersFile
from gateway.standby import CopyResult, StandbyStore
from gateway.standby_users import write_users_file
from roster.models import (
    COPY_DONE,
    COPY_FAILED,
    COPY_PENDING,
    Domain,
    Person,
    StandbyCopy,
    utcnow,
)
from roster.queue import Incoming, Recipient, new_queue_id, store, writing
from tests.servers.dovecot import DovecotServer
from tests.standby_fixtures import next_second, standby_store  # noqa: F401 - the fixture
from tests.test_gateway import people, standby_subjects

ANA = "ana@acme.test"


def copies_for_ana(engine: Engine, subjects: list[str]) -> None:
    """Messages stored with a standby copy for Ana each, as the receiver stores them."""
    with Session(engine) as session:
        domain_id = session.scalars(select(Domain.id).where(Domain.name == "acme.test")).one()
        person_id = session.scalars(select(Person.id).where(Person.mail == ANA)).one()
    with writing(engine) as connection:
        for subject in subjects:
            body = f"Subject: {subject}\r\n\r\nhello\r\n".encode()
            recipient = Recipient(ANA, domain_id, True, person_id, ANA)
            store(connection, [Incoming(new_queue_id(), "x@sender.test", body, [recipient])])


def copy_rows(engine: Engine) -> list[StandbyCopy]:
    with Session(engine) as session:
        return list(session.scalars(select(StandbyCopy).order_by(StandbyCopy.id)))


class Slow(StandbyStore):
    """The real store, each copy taking ``seconds`` longer (a stalled disk)."""

    seconds = 0.0

    def deliver(self, *args: object, **kwargs: object) -> dict[str, CopyResult]:
        time.sleep(self.seconds)
        return super().deliver(*args, **kwargs)  # type: ignore[arg-type]


def test_a_batch_that_outlasts_its_claim_is_copied_once_beside_another_gateway(
    engine: Engine,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    people(engine, 2525)
    write_users_file(standby_store.users_file, [ANA])
    next_second()
    run = secrets.token_hex(4)
    subjects = [f"slow {run} {n}" for n in range(4)]
    copies_for_ana(engine, subjects)
    slow = Slow(*standby_store.lmtp, connections=2)
    slow.seconds = 0.6  # four copies: 2.4 s, against claims of 1 s
    lease = timedelta(seconds=1)
    first = Copier(engine, slow, UsersFile(engine, None), "gw-a/c0", lease=lease)
    second = Copier(engine, slow, UsersFile(engine, None), "gw-b/c0", lease=lease)
    first.recorder.start()
    second.recorder.start()
    try:
        working = threading.Thread(target=first.run_once)
        working.start()
        time.sleep(1.3)  # the first claim would have lapsed by now
        second.run_once()
        working.join()
    finally:
        first.recorder.stop()
        second.recorder.stop()
        slow.close()
    landed = [s for s in standby_subjects(standby_store, ANA) if run in s]
    assert sorted(landed) == subjects  # each once
    assert {row.status for row in copy_rows(engine)} == {COPY_DONE}


def test_a_gateway_that_does_not_write_the_users_file_keeps_its_one_more_try(
    engine: Engine,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    """The store is down at the first try; at the second the users file does not list
    Ana yet (the writing gateway has not looked at the roster): she was covered a moment
    ago, so the copy is tried once more, and lands once the file lists her."""
    people(engine, 2525)
    write_users_file(standby_store.users_file, [])
    next_second()
    run = secrets.token_hex(4)
    copies_for_ana(engine, [f"lagging {run}"])
    down = StandbyStore("127.0.0.1", 9, connections=1, timeout=2)  # nothing listens on 9
    copier = Copier(engine, down, UsersFile(engine, None), "gw-b/c0", lease=timedelta(minutes=5))

    def due_now() -> None:
        with writing(engine) as connection:
            connection.execute(update(StandbyCopy).values(next_attempt_at=utcnow()))

    try:
        copier.run_once()
        [row] = copy_rows(engine)
        assert row.status == COPY_PENDING and row.attempts == 1  # store down: later
        copier.store = StandbyStore(*standby_store.lmtp, connections=1)
        due_now()
        copier.run_once()
        [row] = copy_rows(engine)
        assert row.status == COPY_PENDING and row.last_reply.startswith("5")  # one more try
        write_users_file(standby_store.users_file, [ANA])  # the writing gateway's look
        next_second()
        due_now()
        copier.run_once()
        [row] = copy_rows(engine)
        assert row.status == COPY_DONE
        assert [s for s in standby_subjects(standby_store, ANA) if run in s] == [f"lagging {run}"]
    finally:
        down.close()
        copier.store.close()
        write_users_file(standby_store.users_file, [])


def test_a_copy_no_mailbox_can_take_fails_at_once_on_a_gateway_without_the_users_file(
    engine: Engine,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    """An address the store cannot name a mailbox after (the directory allows more than
    Dovecot does) is refused before the store is asked: no one more try, no retrying
    for ever (its message could never leave the queue)."""
    people(engine, 2525)
    odd = "ana/odd@acme.test"
    with Session(engine) as session:
        domain_id = session.scalars(select(Domain.id).where(Domain.name == "acme.test")).one()
        person_id = session.scalars(select(Person.id).where(Person.mail == ANA)).one()
    with writing(engine) as connection:
        recipient = Recipient(odd, domain_id, True, person_id, odd)
        body = b"Subject: odd\r\n\r\nhello\r\n"
        store(connection, [Incoming(new_queue_id(), "x@sender.test", body, [recipient])])
    lmtp = StandbyStore(*standby_store.lmtp, connections=1)
    copier = Copier(engine, lmtp, UsersFile(engine, None), "gw-b/c0", lease=timedelta(minutes=5))
    try:
        copier.run_once()
    finally:
        lmtp.close()
    [row] = copy_rows(engine)
    assert row.status == COPY_FAILED and "not a standby mailbox address" in row.last_reply
