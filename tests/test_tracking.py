"""Email Live Tracking: the status a person sees (one rule, in Python and in SQL), and the
Control Panel's pages over mail put through a real gateway to a real aiosmtpd primary,
with copies in a real Dovecot; a message held in a continuity event and handed back
stays "Deferred" ("Aplazado") and shows when it was handed back. SQLite and PostgreSQL."""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from continuity.localslapd import free_port
from gateway.service import Gateway
from roster.config import Config
from roster.continuity import begin_recovery, start_event
from roster.models import (
    BOUNCED,
    COPY_DONE,
    DEFERRED,
    DELIVERED,
    QUEUED,
    ContinuityEvent,
    Domain,
    MailMessage,
    MailRecipient,
    StandbyCopy,
    utcnow,
)
from roster.queue import new_queue_id, writing
from roster.tracking import (
    SHOWN_BOUNCED,
    SHOWN_DEFERRED,
    SHOWN_DELIVERED,
    SHOWN_QUEUED,
    SHOWN_STATUSES,
    Key,
    parse_key,
    parse_time,
    shown_status,
    shown_status_clause,
)
from tests.portal_support import (
    DOMAIN,
    OTHER_DOMAIN,
    STAFF_PASSWORD,
    Portal,
    signed_in_client,
    text,
)
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import Primary
from tests.standby_fixtures import standby_store  # noqa: F401 - the fixture, by name

SPANISH = {"Accept-Language": "es"}
LIST = f"/admin/domains/{DOMAIN}/tracking"

# The display rule: (queue status, via Continuity Service) -> what a person sees.
RULE = [
    (QUEUED, False, SHOWN_QUEUED),
    (QUEUED, True, SHOWN_DEFERRED),  # held by an event right now
    (DEFERRED, False, SHOWN_DEFERRED),
    (DEFERRED, True, SHOWN_DEFERRED),
    (DELIVERED, False, SHOWN_DELIVERED),
    (DELIVERED, True, SHOWN_DEFERRED),  # handed back: "Aplazado", as the manual says
    (BOUNCED, False, SHOWN_BOUNCED),
    (BOUNCED, True, SHOWN_BOUNCED),
]


@pytest.mark.parametrize(("status", "via", "shown"), RULE)
def test_the_status_a_person_sees(status: str, via: bool, shown: str) -> None:
    assert shown_status(status, via) == shown


def test_the_status_filter_in_sql_is_the_same_rule(engine: Engine) -> None:
    """Every (status, via) row in the database is found by the SQL filter of exactly the
    status shown_status gives it, and by no other."""
    now = utcnow()
    with Session(engine) as session, session.begin():
        domain = Domain(name="rule.test")
        session.add(domain)
        session.flush()
        queue_id = new_queue_id()
        session.execute(
            insert(MailMessage).values(
                queue_id=queue_id, received_at=now, sender="", size=1, body=b""
            )
        )
        for n, (status, via, _shown) in enumerate(RULE):
            session.add(
                MailRecipient(
                    queue_id=queue_id,
                    domain_id=domain.id,
                    address=f"r{n}@rule.test",
                    status=status,
                    via_continuity=via,
                    next_attempt_at=now,
                )
            )
    with Session(engine) as session:
        found = {
            shown: sorted(
                session.scalars(
                    select(MailRecipient.address).where(shown_status_clause(shown))
                ).all()
            )
            for shown in SHOWN_STATUSES
        }
    expected = {
        shown: sorted(f"r{n}@rule.test" for n, row in enumerate(RULE) if row[2] == shown)
        for shown in SHOWN_STATUSES
    }
    assert found == expected
    assert found["refused"] == []  # refused at RCPT: nothing is stored for it yet


def test_a_page_is_the_same_whichever_index_reads_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter that singles out few messages is read through its own index, others along
    the time index (mail via Continuity Service no later than the last event's end):
    every filter and page gives the same messages both ways, newest first."""
    import random

    import roster.tracking as tracking

    rng = random.Random(7)  # noqa: S311 - test data, not a secret
    start = utcnow() - timedelta(days=10)
    with Session(engine) as session, session.begin():
        domains = [Domain(name="one.test"), Domain(name="two.test")]
        session.add_all(domains)
        session.flush()
        session.add(
            ContinuityEvent(
                domain_id=domains[0].id,
                started_at=start + timedelta(days=3),
                ended_at=start + timedelta(days=4),
                reason="test",
            )
        )
        for n in range(120):
            hour = n - n % 2  # pairs share a time: the key's queue id decides
            received = start + timedelta(hours=hour)
            queue_id = new_queue_id(received.timestamp())
            session.execute(
                insert(MailMessage).values(
                    queue_id=queue_id,
                    received_at=received,
                    sender=rng.choice(["a@x.test", "B@x.test", "b@x.test"]),
                    size=1,
                    body=b"",
                )
            )
            for extra in range(1 + n % 2):
                status, via, _shown = rng.choice(RULE)
                session.add(
                    MailRecipient(
                        queue_id=queue_id,
                        domain_id=domains[(n + extra) % 2].id,
                        address=rng.choice(["p@one.test", "q@one.test", "r@two.test"]),
                        status=status,
                        via_continuity=via and hour < 96,  # before the event ended
                        next_attempt_at=received,
                    )
                )
        ids = [d.id for d in domains]
    cases = [
        tracking.Filters(),
        tracking.Filters(recipient="P@one.test"),
        tracking.Filters(sender="b@x.test"),
        tracking.Filters(sender="B@x.test"),
        tracking.Filters(status=SHOWN_DEFERRED),
        tracking.Filters(status=SHOWN_BOUNCED, recipient="q@one.test"),
        tracking.Filters(continuity=True),
        tracking.Filters(continuity=True, since=start + timedelta(days=1)),
    ]

    def pages(domain_id: int, filters: tracking.Filters) -> list[list[str]]:
        """Every page, following "older" to the end, as lists of queue ids."""
        found, key = [], None
        with Session(engine) as session:
            while True:
                page = tracking.list_messages(session, domain_id, filters, older_than=key, limit=7)
                found.append([m.queue_id for m in page.messages])
                if page.older is None:
                    return found
                key = page.older

    for domain_id in ids:
        for filters in cases:
            monkeypatch.setattr(tracking, "FEW", 10_000)
            through_own_index = pages(domain_id, filters)
            monkeypatch.setattr(tracking, "FEW", 0)
            along_time = pages(domain_id, filters)
            assert through_own_index == along_time, filters
            flat = [q for page in along_time for q in page]
            assert len(flat) == len(set(flat))


def test_times_and_keys_as_people_and_links_give_them() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert parse_time("2026-11-30") == datetime(2026, 11, 30, tzinfo=UTC)
    assert parse_time("2026-11-30 14:05") == datetime(2026, 11, 30, 14, 5, tzinfo=UTC)
    assert parse_time("2026-11-30T14:05") == datetime(2026, 11, 30, 14, 5, tzinfo=UTC)
    assert parse_time("2026-11-30T15:05+01:00") == datetime(2026, 11, 30, 14, 5, tzinfo=UTC)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("3d", now=now) == now - timedelta(days=3)
    for wrong in ("yesterday", "30/11/2026", "0001-01-01", "", "2h ago"):
        assert parse_time(wrong) is None, wrong
    key = Key(datetime(2026, 11, 30, 14, 5, 9, 123456, tzinfo=UTC), "01ABCDEF")
    assert parse_key(key.text()) == key
    for wrong in ("", "x-01AB", "123", "123-abc", "1-" + "A" * 33, "9" * 18 + "-A"):
        assert parse_key(wrong) is None, wrong


# ---------------------------------------------------------------------------
# The Control Panel, over a real gateway
# ---------------------------------------------------------------------------
def send_messages(port: int, recipients: list[str], subject: str, count: int = 1) -> list[str]:
    """Send ``count`` messages to the gateway on ``port`` over one SMTP session; their
    queue ids, in order."""
    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        for n in range(count):
            client.mail("someone@sender.test")
            for address in recipients:
                assert client.rcpt(address)[0] == 250, address
            code, reply = client.data(
                f"From: someone@sender.test\r\nSubject: {subject} {n}\r\n"
                f"Message-ID: <{time.time_ns()}.{n}@sender.test>\r\n\r\nHi.\r\n".encode()
            )
            assert code == 250, reply
            ids.append(reply.decode().rsplit(" ", 1)[-1])
    return ids


@dataclass
class Tracked:
    """The portal, and a gateway in front of acme.test's live primary."""

    portal: Portal
    gateway: Gateway
    primary: Primary

    @property
    def engine(self) -> Engine:
        """The roster both share."""
        return self.portal.engine

    def send(self, recipients: list[str], subject: str = "Hello", count: int = 1) -> list[str]:
        """Send ``count`` messages over one SMTP session; their queue ids, in order."""
        return send_messages(self.gateway.settings.port, recipients, subject, count)

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Wait until ``condition`` holds (the gateway works in its own threads)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not in time: {what}")
            self.gateway.wake()
            time.sleep(0.05)

    def settled(self, queue_id: str) -> bool:
        """Every recipient of the message delivered and every standby copy made."""
        with Session(self.engine) as session:
            states = session.scalars(
                select(MailRecipient.status).where(MailRecipient.queue_id == queue_id)
            ).all()
            copies = session.scalars(
                select(StandbyCopy.status).where(StandbyCopy.queue_id == queue_id)
            ).all()
        return bool(states) and set(states) == {DELIVERED} and set(copies) <= {COPY_DONE}

    def copied(self, queue_id: str) -> bool:
        """Every standby copy of the message made."""
        with Session(self.engine) as session:
            copies = session.scalars(
                select(StandbyCopy.status).where(StandbyCopy.queue_id == queue_id)
            ).all()
        return bool(copies) and set(copies) == {COPY_DONE}

    def from_sender(self) -> int:
        """How many messages of the test's sender reached the primary (not notices)."""
        return sum(m.sender == "someone@sender.test" for m in self.primary.messages)

    def acme_id(self) -> int:
        """acme.test's roster id."""
        with Session(self.engine) as session:
            found = session.scalar(select(Domain.id).where(Domain.name == DOMAIN))
        assert found is not None
        return found

    def events(self) -> list[ContinuityEvent]:
        """acme.test's continuity events."""
        with Session(self.engine) as session:
            return list(session.scalars(select(ContinuityEvent).order_by(ContinuityEvent.id)))


@pytest.fixture
def tracked(
    portal: Portal,
    database_url: str,
    standby_store: DovecotServer,  # noqa: F811
) -> Iterator[Tracked]:
    """Ana and Bo at acme.test (covered), Carl at other.test; an admin of each domain;
    a gateway delivering acme.test's and other.test's mail to a live primary."""
    portal.add_person("ana")
    portal.add_person("bo")
    portal.add_person("carl", f"carl@{OTHER_DOMAIN}")
    portal.sync()
    portal.add_staff(f"admin@{DOMAIN}", "admin")
    portal.add_staff(f"admin@{OTHER_DOMAIN}", "admin", OTHER_DOMAIN)
    primary, relay = Primary().start(), Primary().start()
    with Session(portal.engine) as session, session.begin():
        session.execute(
            update(Domain).values(
                primary_host="127.0.0.1",
                primary_port=primary.port,
                primary_tls="none",
                continuity_active=True,
                coverage_mode="all",
            )
        )
    config = Config(
        database_url=database_url,
        gateway={
            "listen": f"127.0.0.1:{free_port()}",
            "hostname": "gateway.test",
            "allow_local_primary": True,
        },
        outbound={"relay": f"127.0.0.1:{relay.port}"},
        standby={
            "lmtp": f"{standby_store.lmtp[0]}:{standby_store.lmtp[1]}",
            "users_file": str(standby_store.users_file),
        },
    )
    running = Gateway(config, engine=portal.engine, idle=0.05)
    running.start()
    try:
        yield Tracked(portal, running, primary)
    finally:
        running.stop()
        primary.stop()
        relay.stop()


def admin(tracked: Tracked, domain: str = DOMAIN) -> FlaskClient:
    """A browser signed in as the local admin of ``domain``."""
    return signed_in_client(tracked.portal, f"admin@{domain}", STAFF_PASSWORD)


def rows(page: str) -> list[tuple[str, str]]:
    """(queue id, recipients and status) of each row of the tracking list."""
    table = re.search(r'<table class="audit" id="tracking">.*?</table>', page, re.DOTALL)
    if not table:
        return []
    found = []
    for row in re.findall(r"<tr>(.*?)</tr>", table.group(0), re.DOTALL)[1:]:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)
        queue_id = re.sub(r"<[^>]+>", "", cells[4]).strip()
        found.append((queue_id, re.sub(r"<[^>]+>", "", cells[2].replace("<br>", "; ")).strip()))
    return found


def timeline(page: str) -> list[str]:
    """The steps of a message's timeline, without their times."""
    items = re.findall(r'<li class="[a-z_]+"><span class="nowrap">[^<]*</span> (.*?)</li>', page)
    return [re.sub(r"<[^>]+>", "", item).strip() for item in items]


def test_delivered_mail_is_listed_with_its_timeline_and_only_the_domains_recipients(
    tracked: Tracked,
) -> None:
    """A message to Ana, Bo and Carl (other.test): acme.test's admin sees it Delivered for
    Ana and Bo, with when it reached the primary and the standby mailboxes, and never
    Carl; other.test's admin sees only Carl, and nothing of acme.test."""
    [queue_id] = tracked.send(["ana@acme.test", "bo@acme.test", f"carl@{OTHER_DOMAIN}"])
    tracked.wait(lambda: tracked.settled(queue_id), "delivered and copied")
    client = admin(tracked)

    listed = rows(text(client.get(LIST)))
    spanish = rows(text(client.get(LIST, headers=SPANISH)))
    detail = text(client.get(f"{LIST}/{queue_id}"))
    detail_es = text(client.get(f"{LIST}/{queue_id.lower()}", headers=SPANISH))
    other = admin(tracked, OTHER_DOMAIN)
    other_detail = text(other.get(f"/admin/domains/{OTHER_DOMAIN}/tracking/{queue_id}"))

    assert listed == [(queue_id, "ana@acme.test: Delivered; bo@acme.test: Delivered")]
    assert spanish == [(queue_id, "ana@acme.test: Entregado; bo@acme.test: Entregado")]
    assert "carl@" not in detail and "ana@acme.test" in detail
    steps = timeline(detail)
    assert steps[0] == "Received by Continuity"
    assert sorted(steps[1:]) == [
        "Copied to the standby mailbox: ana@acme.test",
        "Copied to the standby mailbox: bo@acme.test",
        "Delivered to the primary mail server: ana@acme.test (250 accepted)",
        "Delivered to the primary mail server: bo@acme.test (250 accepted)",
    ]
    assert "Entregado al servidor de correo principal" in detail_es
    assert "copied 20" in detail  # the standby copy and when it was made
    assert f"carl@{OTHER_DOMAIN}" in other_detail and "ana@acme.test" not in other_detail
    assert other.get(LIST).status_code == 404
    assert other.get(f"{LIST}/{queue_id}").status_code == 404
    assert client.get(f"/admin/domains/{OTHER_DOMAIN}/tracking/{queue_id}").status_code == 404
    assert client.get(f"{LIST}/NOSUCHQUEUEID").status_code == 404
    assert client.get(f"{LIST}/bad%20id!").status_code == 404


def test_mail_held_in_a_continuity_event_stays_deferred_after_the_hand_back(
    tracked: Tracked,
) -> None:
    """A message that arrives during a continuity event is held (not sent to the live
    primary), copied to the standby mailbox, and handed back when recovery starts; after
    that it is still "Deferred" ("Aplazado"), found by "via Continuity Service", and
    shows when it was handed back; the event is listed with its cause and counts."""
    [before] = tracked.send(["ana@acme.test"], "before")
    tracked.wait(lambda: tracked.settled(before), "mail before the event")
    with writing(tracked.engine) as connection:
        start_event(connection, tracked.acme_id(), reason="the disk is full", actor="admin")
    [held] = tracked.send(["ana@acme.test"], "during")
    tracked.wait(lambda: tracked.copied(held), "the standby copy of held mail")
    time.sleep(0.5)
    client = admin(tracked)

    # (The admins' notice that the event started is mail of the domain too.)
    while_held = [row for row in rows(text(client.get(LIST))) if row[0] in (held, before)]
    held_only = rows(text(client.get(f"{LIST}?continuity=1&recipient=ana@acme.test")))
    assert tracked.from_sender() == 1  # only the message before the event
    assert while_held == [
        (held, "ana@acme.test: Deferred (via Continuity Service)"),
        (before, "ana@acme.test: Delivered"),
    ]
    assert [queue_id for queue_id, _ in held_only] == [held]

    with writing(tracked.engine) as connection:
        begin_recovery(connection, tracked.events()[0].id)
    tracked.wait(lambda: tracked.settled(held), "the hand-back")
    tracked.wait(lambda: tracked.events()[0].ended_at is not None, "the event ends")
    with Session(tracked.engine) as session:
        handed_back_at = session.scalar(
            select(MailRecipient.delivered_at).where(MailRecipient.queue_id == held)
        )
    assert handed_back_at is not None
    when = handed_back_at.strftime("%Y-%m-%d %H:%M:%S")

    ana = "recipient=ana@acme.test"
    after = rows(text(client.get(f"{LIST}?{ana}")))
    after_es = rows(text(client.get(f"{LIST}?{ana}", headers=SPANISH)))
    deferred = rows(text(client.get(f"{LIST}?status=deferred&{ana}")))
    delivered = rows(text(client.get(f"{LIST}?status=delivered&{ana}")))
    detail = text(client.get(f"{LIST}/{held}"))
    detail_es = text(client.get(f"{LIST}/{held}", headers=SPANISH))
    page = text(client.get(LIST))

    assert tracked.from_sender() == 2
    assert after[0] == (held, "ana@acme.test: Deferred (via Continuity Service)")
    assert after_es[0] == (held, "ana@acme.test: Aplazado (vía Continuity Service)")
    assert [q for q, _ in deferred] == [held]
    assert [q for q, _ in delivered] == [before]
    assert f"Handed back {when}" in detail
    assert f"Devuelto {when}" in detail_es
    steps = timeline(detail)
    assert steps[0] == "Received by Continuity"
    assert "Held by a continuity event (the disk is full)" in steps
    assert steps[-1].startswith("Handed back to the primary mail server: ana@acme.test")
    events = re.search(r'<table class="audit" id="continuity-events">.*?</table>', page, re.S)
    assert events is not None
    cells = [
        re.sub(r"<[^>]+>", " ", cell).split()
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", events.group(0), re.S)
    ]
    assert cells[2] == ["the", "disk", "is", "full"]
    # Held and handed back: Ana's message and the notices the event sent its admins.
    event = tracked.events()[0]
    assert event.held == event.handed_back >= 1
    assert (cells[3], cells[4]) == ([str(event.held)], [str(event.handed_back)])
    assert cells[1][-1] == "monitor"  # ended by the monitor once nothing was left


def test_the_list_is_newest_first_and_paged_by_key(tracked: Tracked) -> None:
    """53 messages: the first page shows the newest 50, "Older" the 3 before them; a
    message arriving meanwhile does not shift the older page; "Newer" comes back."""
    sent = tracked.send(["bo@acme.test"], "page", count=53)
    tracked.wait(lambda: all(tracked.settled(q) for q in sent[-3:]), "delivered")
    client = admin(tracked)

    first = text(client.get(LIST))
    older_link = re.search(r'<a href="([^"]+)" rel="next" id="older">', first)
    assert older_link is not None and "page=" not in older_link.group(1)
    [arrived] = tracked.send(["bo@acme.test"], "meanwhile")
    older = text(client.get(older_link.group(1).replace("&amp;", "&")))
    newer_link = re.search(r'<a href="([^"]+)" rel="prev" id="newer">', older)
    assert newer_link is not None
    newer = text(client.get(newer_link.group(1).replace("&amp;", "&")))

    assert [q for q, _ in rows(first)] == list(reversed(sent))[:50]
    assert [q for q, _ in rows(older)] == list(reversed(sent))[50:]
    assert 'id="older"' not in older
    assert [q for q, _ in rows(newer)] == list(reversed(sent))[:50]
    assert 'id="newer"' in newer  # the message that arrived meanwhile is newer still
    assert [q for q, _ in rows(text(client.get(LIST)))][0] == arrived
    # A link to a page past the oldest message leads back from where it pointed.
    oldest = Key(datetime(2000, 1, 1, tzinfo=UTC), "0").text()
    past = text(client.get(f"{LIST}?older={oldest}"))
    assert 'id="no-messages"' in past and f"newer={oldest}" in past


def test_filters_narrow_the_list_and_wrong_ones_are_worded_in_both_languages(
    tracked: Tracked,
) -> None:
    """Sender, recipient, time range and status narrow the list; a time nobody could
    mean, or an end before the start, is named under its field in English and Spanish."""
    [to_ana] = tracked.send(["ana@acme.test"])
    [to_bo] = tracked.send(["bo@acme.test"])
    tracked.wait(lambda: tracked.settled(to_ana) and tracked.settled(to_bo), "delivered")
    client = admin(tracked)

    def listed(query: str) -> list[str]:
        response = client.get(f"{LIST}?{query}")
        assert response.status_code == 200, query
        return [q for q, _ in rows(text(response))]

    assert listed("recipient=ANA@acme.test") == [to_ana]
    assert listed("sender=Someone@Sender.test") == [to_bo, to_ana]
    assert listed("sender=nobody@sender.test") == []
    assert listed("since=1h") == [to_bo, to_ana]
    assert listed("until=2000-01-02") == []
    assert listed("status=bounced") == []
    assert listed("status=delivered&recipient=bo@acme.test") == [to_bo]
    wrong = client.get(f"{LIST}?since=yesterday")
    wrong_es = client.get(f"{LIST}?since=yesterday", headers=SPANISH)
    backwards = client.get(f"{LIST}?since=2026-11-30&until=2026-11-29")
    status = client.get(f"{LIST}?status=lost")
    bad_key = client.get(f"{LIST}?older=not-a-key")
    assert wrong.status_code == wrong_es.status_code == backwards.status_code == 400
    assert "Type a date and time as 2026-11-30 14:05 (UTC)" in text(wrong)
    assert "Escriba una fecha y hora como 2026-11-30 14:05 (UTC)" in text(wrong_es)
    assert "The end of the time range must come after its start." in text(backwards)
    assert status.status_code == 400 and "Choose a status from the list." in text(status)
    assert bad_key.status_code == 200 and "That page link is not valid" in text(bad_key)
    assert [q for q, _ in rows(text(bad_key))] == [to_bo, to_ana]


def test_only_the_domains_admins_open_email_live_tracking(tracked: Tracked) -> None:
    """Helpdesk and end users are refused; the domain page and the Control Panel's menu
    lead to Email Live Tracking."""
    tracked.portal.add_staff(f"helpdesk@{DOMAIN}", "helpdesk")
    helpdesk = signed_in_client(tracked.portal, f"helpdesk@{DOMAIN}", STAFF_PASSWORD)
    ana = signed_in_client(tracked.portal, "ana@acme.test")
    client = admin(tracked)

    assert helpdesk.get(LIST).status_code == 403
    assert ana.get(LIST).status_code == 403
    assert f'href="{LIST}"' in text(client.get(f"/admin/domains/{DOMAIN}"))
    assert f'href="{LIST}">Email Live Tracking</a>' in text(client.get("/admin"))
    assert "<h1>Email Live Tracking</h1>" in text(client.get(LIST, headers=SPANISH))
