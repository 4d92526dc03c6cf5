"""The domain overview's mail-flow chart (issue 12): mail put through a real gateway to a
real aiosmtpd primary, a continuity event started and ended in the Control Panel, then the
overview as a signed-in admin reads it (the hidden table's figures, the event band's
label); days of history written with the roster's own queue functions; the SVG builder
on hostile names, no mail and one huge day. SQLite and PostgreSQL."""

from __future__ import annotations

import html
import random
import re
import shutil
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_babel import Babel
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session

from continuity.localslapd import free_port
from gateway.service import Gateway
from portal.controlpanel import flowchart
from portal.controlpanel.flowchart import ChartWords, chart_svg, chart_words, ticks
from roster.config import Config
from roster.continuity import begin_recovery, end_event, start_event
from roster.db import make_engine
from roster.flow import (
    FLOW_BOUNCED,
    FLOW_CONTINUITY,
    FLOW_DEFERRED,
    FLOW_DELIVERED,
    FLOWS,
    FlowDay,
    FlowEvent,
    MailFlow,
    flow_of,
    mail_flow,
    window,
)
from roster.models import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    QUEUED,
    ContinuityEvent,
    Domain,
    MailMessage,
    MailRecipient,
)
from roster.queue import (
    Incoming,
    Outcome,
    Recipient,
    claim_deliveries,
    new_queue_id,
    queue_id_floor,
    record_outcomes,
    store,
    writing,
)
from tests.portal_support import (
    DOMAIN,
    OTHER_DOMAIN,
    STAFF_PASSWORD,
    Portal,
    signed_in_client,
    submit,
    text,
)
from tests.servers.smtp import Primary
from tests.test_tracking import send_messages

SPANISH = {"Accept-Language": "es"}
PAGE = f"/admin/domains/{DOMAIN}"
ADMIN = "ops@operator.test"  # a global admin outside the roster: event notices skip the domain
HOSTILE = '<script>alert("x")</script> & "disco" \u202elleno'
SVG_NS = "{http://www.w3.org/2000/svg}"


# ---------------------------------------------------------------------------
# Reading the page as a person does
# ---------------------------------------------------------------------------
def figures(page: str) -> dict[str, list[int]]:
    """The hidden table: each day (ISO date) with delivered, via Continuity, deferred,
    bounced and total, as the page prints them."""
    table = re.search(r'<table class="visually-hidden mail-flow-table".*?</table>', page, re.S)
    assert table is not None, "no table of figures"
    rows = re.findall(r'<tr>\s*<th scope="row">([0-9-]+)</th>(.*?)</tr>', table.group(0), re.S)
    return {day: [int(n) for n in re.findall(r"<td>(\d+)</td>", cells)] for day, cells in rows}


def parse(svg: object) -> ElementTree.Element:
    """An SVG the portal drew, parsed as XML (it must be well formed)."""
    return ElementTree.fromstring(str(svg))  # noqa: S314 - our own output, under test


def chart(page: str) -> ElementTree.Element:
    """The inline SVG of a page as the server sent it (not unescaped)."""
    found = re.search(r"<svg .*?</svg>", page, re.S)
    assert found is not None, "no chart"
    return parse(found.group(0))


def title(node: ElementTree.Element) -> str:
    """The text of an element's own <title>."""
    found = node.find(f"{SVG_NS}title")
    assert found is not None, "no title"
    return "".join(found.itertext())


def texts(svg: ElementTree.Element) -> list[str]:
    """Every <text> of the chart, in order."""
    return ["".join(node.itertext()) for node in svg.iter(f"{SVG_NS}text")]


def events_listed(page: str) -> list[str]:
    """The events under the chart, in words."""
    found = re.search(r'<ul class="mail-flow-events" id="mail-flow-events">(.*?)</ul>', page, re.S)
    return (
        [item.strip() for item in re.findall(r"<li>(.*?)</li>", found.group(1), re.S)]
        if found
        else []
    )


# ---------------------------------------------------------------------------
# Through a real gateway
# ---------------------------------------------------------------------------
@dataclass
class Flowing:
    """The portal, and a gateway in front of a live primary for both domains."""

    portal: Portal
    gateway: Gateway
    primary: Primary

    @property
    def engine(self) -> Engine:
        """The roster both share."""
        return self.portal.engine

    def send(self, recipients: list[str], count: int = 1) -> list[str]:
        """Send ``count`` messages over one SMTP session; their queue ids."""
        return send_messages(self.gateway.settings.port, recipients, "flow", count)

    def statuses(self, queue_ids: list[str]) -> list[str]:
        """The queue status of every recipient of these messages."""
        with Session(self.engine) as session:
            return list(
                session.scalars(
                    select(MailRecipient.status).where(MailRecipient.queue_id.in_(queue_ids))
                )
            )

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Wait until ``condition`` holds (the gateway works in its own threads)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not in time: {what}")
            self.gateway.wake()
            time.sleep(0.05)

    def events(self) -> list[ContinuityEvent]:
        """acme.test's continuity events."""
        with Session(self.engine) as session:
            return list(session.scalars(select(ContinuityEvent).order_by(ContinuityEvent.id)))


@pytest.fixture
def flowing(portal: Portal, database_url: str) -> Iterator[Flowing]:
    """Ana, Bo, Cy and Dan at acme.test, Carl at other.test, all covered; a global admin;
    a gateway delivering both domains' mail to one live primary (automatic failover off,
    so that the refusals the test asks for start no event of their own)."""
    for uid in ("ana", "bo", "cy", "dan"):
        portal.add_person(uid)
    portal.add_person("carl", f"carl@{OTHER_DOMAIN}")
    portal.sync()
    portal.add_staff(ADMIN, "global-admin", None)
    primary, relay = Primary().start(), Primary().start()
    with Session(portal.engine) as session, session.begin():
        session.execute(
            update(Domain).values(
                primary_host="127.0.0.1",
                primary_port=primary.port,
                primary_tls="none",
                continuity_active=True,
                coverage_mode="all",
                failover_automatic=False,
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
    )
    running = Gateway(config, engine=portal.engine, idle=0.05, copy=False)
    running.start()
    try:
        yield Flowing(portal, running, primary)
    finally:
        running.stop()
        primary.stop()
        relay.stop()


def post(client: FlaskClient, action: str, data: dict[str, str] | None = None) -> int:
    """A Control Panel form sent with the browser's CSRF token; the status code."""
    return submit(client, PAGE, data or {}, action=action).status_code


def test_mail_through_the_gateway_and_an_event_are_on_the_overview(flowing: Flowing) -> None:
    """Four recipients delivered, two refused by the primary (550), three received during
    a continuity event an admin started and ended in the Control Panel (handed back
    since), one deferred by the primary (451), and other.test's mail: the overview's
    table has today's 4, 3, 1, 2 and 10, the chart a shaded band labelled "Continuity
    event 1" and the axis in the reader's language, the cause escaped."""
    flowing.primary.handler.replies["dan@acme.test"] = "550 5.1.1 No such user here"
    flowing.primary.handler.replies["cy@acme.test"] = "451 4.2.0 Mailbox busy, try later"
    admin = signed_in_client(flowing.portal, ADMIN, STAFF_PASSWORD)

    before = flowing.send(["ana@acme.test"], 2) + flowing.send(["ana@acme.test", "bo@acme.test"])
    bounced = flowing.send(["dan@acme.test"], 2)
    flowing.send([f"carl@{OTHER_DOMAIN}"], 3)
    flowing.wait(lambda: set(flowing.statuses(before)) == {DELIVERED}, "delivered")
    flowing.wait(lambda: set(flowing.statuses(bounced)) == {BOUNCED}, "bounced")

    assert post(admin, f"{PAGE}/events/start", {"reason": HOSTILE}) == 302
    held = flowing.send(["ana@acme.test"], 3)
    assert post(admin, f"{PAGE}/events/end") == 302
    flowing.wait(lambda: set(flowing.statuses(held)) == {DELIVERED}, "the hand-back")
    flowing.wait(lambda: flowing.events()[0].ended_at is not None, "the event ends")
    deferred = flowing.send(["cy@acme.test"])
    flowing.wait(lambda: flowing.statuses(deferred) == [DEFERRED], "deferred")

    with Session(flowing.engine) as session:
        arrived = session.scalars(
            select(MailMessage.received_at).where(MailMessage.queue_id.in_(held))
        ).all()
    day = arrived[0].date().isoformat()
    sent = admin.get(PAGE).get_data(as_text=True)
    sent_spanish = admin.get(PAGE, headers=SPANISH).get_data(as_text=True)
    page, spanish = html.unescape(sent), html.unescape(sent_spanish)

    table = figures(page)
    assert len(table) == 14
    assert table[day] == [4, 3, 1, 2, 10]
    assert all(row == [0, 0, 0, 0, 0] for when, row in table.items() if when != day)
    assert figures(spanish) == table
    svg = chart(sent)
    assert "Continuity event 1" in texts(svg)
    assert svg.get("role") == "img"
    assert title(svg) == "Mail flow of acme.test, last 14 days (UTC)"
    assert "Day (UTC)" in texts(svg)
    today = date.fromisoformat(day)
    assert f"{today.day} {today.strftime('%b')}" in texts(svg)
    months = ["ene", "feb", "mar", "abr", "may", "jun", "jul", "ago", "sept", "oct", "nov", "dic"]
    assert f"{today.day} {months[today.month - 1]}" in texts(chart(sent_spanish))
    [listed] = events_listed(page)
    assert listed.startswith(f"Continuity event 1: {day} ")
    assert " UTC to " in listed
    # The cause as typed, escaped (no element made of it), its direction override dropped;
    # the chart inline, with nothing to run or fetch, under a CSP without inline script.
    response = admin.get(PAGE)
    raw = response.get_data(as_text=True)
    section = raw.split('<section class="mail-flow"', 1)[1].split("</section>", 1)[0]
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;disco&#34; lleno" in section
    assert "<script" not in section and "\u202e" not in section
    policy = response.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in policy and "script-src 'self'" in policy
    drawn = section.split("<svg ", 1)[1].split("</svg>", 1)[0]
    assert (
        "href" not in drawn
        and " style=" not in drawn
        and "://" not in drawn.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )


def test_a_domain_without_mail_says_so(flowing: Flowing) -> None:
    """No mail in the window: the overview says so in one sentence, draws no chart and
    prints no table."""
    admin = signed_in_client(flowing.portal, ADMIN, STAFF_PASSWORD)
    page = text(admin.get(PAGE))
    assert 'id="mail-flow-empty">No mail for this domain in the last 14 days.</p>' in page
    assert "<svg" not in page
    assert 'id="mail-flow-table"' not in page


# ---------------------------------------------------------------------------
# Days of history, written with the roster's own queue functions
# ---------------------------------------------------------------------------
def receive(engine: Engine, domain_id: int, at: datetime, count: int = 1) -> None:
    """``count`` recipients received at ``at`` for ``domain_id`` (as the gateway stores
    them: the queue id made at that moment)."""
    with writing(engine) as connection:
        store(
            connection,
            [
                Incoming(
                    queue_id=new_queue_id(at.timestamp()),
                    sender="someone@sender.test",
                    body=b"Subject: history\r\n\r\nx\r\n",
                    recipients=[
                        Recipient(f"r{n}@{DOMAIN}", domain_id, known=True) for n in range(count)
                    ],
                    received_at=at,
                )
            ],
        )


def attempt(engine: Engine, at: datetime, status: str) -> None:
    """Every recipient due at ``at`` tried then, with this outcome."""
    with writing(engine) as connection:
        claimed = claim_deliveries(
            connection, "history", limit=1000, lease=timedelta(minutes=5), now=at
        )
        outcomes = [
            Outcome(
                row, status, "250 ok" if status == DELIVERED else "4xx/5xx", at + timedelta(hours=1)
            )
            for delivery in claimed
            for row, _address in delivery.recipients
        ]
        record_outcomes(connection, "history", outcomes, now=at)


@dataclass
class History:
    """Fourteen days of acme.test's mail and events, relative to ``now``."""

    now: datetime
    start: datetime  # 00:00 UTC of the window's first day
    acme: int
    other: int

    def day(self, n: int) -> str:
        """The ISO date of the window's day ``n`` (0: the first, 13: today)."""
        return (self.start + timedelta(days=n)).date().isoformat()


def domain_id(session: Session, name: str) -> int:
    """The roster's domain of this name (made, active, when there is none yet)."""
    found = session.scalar(select(Domain).where(Domain.name == name))
    if found is None:
        found = Domain(name=name, continuity_active=True, primary_host="127.0.0.1")
        session.add(found)
        session.flush()
    return found.id


def history(engine: Engine, now: datetime) -> History:
    """acme.test's mail and events as EXPECTED says, written in time order with the
    roster's own functions (received, claimed and recorded; events started, handed back
    and ended at their moments), and some of other.test's."""
    start, _end = window(14, now)
    with Session(engine) as session, session.begin():
        acme, other = domain_id(session, DOMAIN), domain_id(session, OTHER_DOMAIN)

    def at(day: int, hours: float = 12) -> datetime:
        return start + timedelta(days=day, hours=hours)

    def starts(moment: datetime, reason: str = "451 the primary did not answer") -> int:
        with writing(engine) as connection:
            return start_event(
                connection, acme, reason=reason, actor="monitor", now=moment
            ).event_id

    def recovers(event_id: int, moment: datetime) -> None:
        with writing(engine) as connection:
            begin_recovery(connection, event_id, now=moment)
        attempt(engine, moment, DELIVERED)

    def ends(event_id: int, moment: datetime) -> None:
        with writing(engine) as connection:
            end_event(connection, event_id, actor="monitor", now=moment)

    over = starts(at(-30))  # over before the window
    recovers(over, at(-15, 1))
    ends(over, at(-15, 2))
    first = starts(at(-3))  # overlaps the window's start, holds its first mail
    receive(engine, acme, start - timedelta(milliseconds=1))  # the day before the window
    receive(engine, acme, start, 2)  # the window's first millisecond
    recovers(first, at(0, 1))
    ends(first, at(0, 2))
    receive(engine, acme, at(3), 5)
    attempt(engine, at(3), DELIVERED)
    receive(engine, acme, at(3, 13))
    attempt(engine, at(3, 13), BOUNCED)
    # Deferred at 09:00 and still waiting when the event starts at 10:00: held by it too.
    receive(engine, acme, at(6, 9))
    attempt(engine, at(6, 9), DEFERRED)
    second = starts(at(6, 10), HOSTILE)
    receive(engine, acme, at(6, 12), 3)
    receive(engine, acme, at(7, 1))  # held past midnight
    recovers(second, at(7, 8))
    ends(second, at(7, 9))
    receive(engine, acme, at(8, 0) - timedelta(milliseconds=1))  # 23:59:59.999
    receive(engine, acme, at(8, 0))  # 00:00:00.000 of the next day
    attempt(engine, at(8, 0), DELIVERED)
    # Deferred, then delivered: delivered, on the day it arrived.
    receive(engine, acme, at(10), 2)
    attempt(engine, at(10), DEFERRED)
    attempt(engine, at(11), DELIVERED)
    third = starts(at(12, 20))  # still open, handing back since 00:30 today
    receive(engine, acme, at(12, 22))
    recovers(third, at(13, 0.5))
    receive(engine, acme, at(13, 1), 2)  # during the hand-back: to the primary, deferred
    attempt(engine, at(13, 1), DEFERRED)
    receive(engine, acme, at(13, 2))  # not tried yet
    receive(engine, other, at(13, 1), 7)  # another domain's
    return History(now=now, start=start, acme=acme, other=other)


EXPECTED = {  # day of the window -> delivered, via Continuity, deferred, bounced
    0: [0, 2, 0, 0],
    3: [5, 0, 0, 1],
    6: [0, 4, 0, 0],
    7: [1, 1, 0, 0],
    8: [1, 0, 0, 0],
    10: [2, 0, 0, 0],
    12: [0, 1, 0, 0],
    13: [0, 0, 3, 0],
}


def test_fourteen_days_of_history_by_the_day_they_arrived(engine: Engine) -> None:
    """Each recipient on the UTC day it arrived (the window's first millisecond in, the
    one before out, 23:59:59.999 and 00:00 on their own days) under what became of it;
    the events that overlap the window, the open one last; another domain's mail apart."""
    now = datetime.now(UTC).replace(hour=15, minute=0, second=0, microsecond=0)
    made = history(engine, now)
    with Session(engine) as session:
        flow = mail_flow(session, made.acme, now=now)
        today = mail_flow(session, made.acme, days=1, now=now)
        other = mail_flow(session, made.other, now=now)
    assert [d.day.isoformat() for d in flow.days] == [made.day(n) for n in range(14)]
    found = {n: [day.count(f) for f in FLOWS] for n, day in enumerate(flow.days) if day.total}
    assert found == EXPECTED
    assert flow.total == 21
    start = made.start
    assert [(e.number, e.started_at, e.ended_at) for e in flow.events] == [
        (1, start - timedelta(days=3, hours=-12), start + timedelta(hours=2)),
        (2, start + timedelta(days=6, hours=10), start + timedelta(days=7, hours=9)),
        (3, start + timedelta(days=12, hours=20), None),
    ]
    assert flow.events[1].reason == HOSTILE
    assert (today.total, [e.number for e in today.events]) == (3, [1])
    assert (other.total, other.events) == (7, [])
    with pytest.raises(ValueError, match="days must be between 1 and 92"):
        mail_flow(Session(engine), made.acme, days=0)


def test_the_overview_shows_the_history(portal: Portal) -> None:
    """The same history through the Control Panel (dated by the real clock): the table's
    rows, one band label per event, the events listed with their times, the open one
    "still open"."""
    made = history(portal.engine, datetime.now(UTC))
    portal.add_staff(ADMIN, "global-admin", None)
    admin = signed_in_client(portal, ADMIN, STAFF_PASSWORD)
    page = text(admin.get(PAGE))
    table = figures(page)
    for n, row in EXPECTED.items():
        if n:  # the first day leaves the window if the test runs across midnight
            assert table[made.day(n)] == [*row, sum(row)], made.day(n)
    labels = [
        t
        for t in texts(chart(admin.get(PAGE).get_data(as_text=True)))
        if t.startswith("Continuity event")
    ]
    assert labels == [
        "Continuity event",  # the legend
        "Continuity event 1",
        "Continuity event 2",
        "Continuity event 3",
    ]
    listed = events_listed(page)
    assert len(listed) == 3
    assert listed[2].startswith("Continuity event 3: since ")
    assert listed[2].endswith(" UTC (still open) (451 the primary did not answer)")


# ---------------------------------------------------------------------------
# The rules, and the SVG builder on its own
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "via", "flow"),
    [
        (DELIVERED, False, FLOW_DELIVERED),
        (DELIVERED, True, FLOW_CONTINUITY),
        (QUEUED, True, FLOW_CONTINUITY),
        (DEFERRED, True, FLOW_CONTINUITY),
        (QUEUED, False, FLOW_DEFERRED),
        (DEFERRED, False, FLOW_DEFERRED),
        (BOUNCED, False, FLOW_BOUNCED),
        (BOUNCED, True, FLOW_BOUNCED),
    ],
)
def test_what_the_chart_counts_a_recipient_as(status: str, via: bool, flow: str) -> None:
    assert flow_of(status, via) == flow


def test_a_time_is_a_range_of_queue_ids() -> None:
    """Every id new_queue_id makes in a millisecond sorts at or above that millisecond's
    floor and below the next one's: a day is a range of ids."""
    rng = random.Random(12)  # noqa: S311 - test data
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(20_000):
        seconds = rng.uniform(1.5e9, 4e9)
        moment = epoch + timedelta(milliseconds=int(seconds * 1000))
        made = new_queue_id(seconds)
        assert queue_id_floor(moment) <= made < queue_id_floor(moment + timedelta(milliseconds=1))


def test_the_query_reads_one_index_range_a_day(sqlite_template: Path, tmp_path: Path) -> None:
    """On SQLite (whose plans do not depend on table statistics) the chart's query reads
    one range of the (domain_id, queue_id, status, via_continuity) index a day: no table
    row, no other index."""
    path = tmp_path / "roster.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    seen: list[tuple[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def keep(_c: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        if "mail_recipient" in statement:
            seen.append((statement, parameters))

    try:
        with Session(engine) as session:
            mail_flow(session, 1)
            [(statement, parameters)] = seen
            plan = (
                session.connection()
                .exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
                .all()
            )
    finally:
        engine.dispose()
    steps = [row[-1] for row in plan if row[-1].startswith(("SEARCH", "SCAN"))]
    assert len(steps) == 14
    assert set(steps) == {
        "SEARCH mail_recipient USING COVERING INDEX ix_mail_recipient_domain_queue_id"
        " (domain_id=? AND queue_id>? AND queue_id<?)"
    }


@pytest.fixture
def english() -> Iterator[None]:
    """A request context of a bare Flask app with Flask-Babel (English words)."""
    app = Flask(__name__)
    Babel(app)
    with app.test_request_context():
        yield


def flow_of_days(totals: list[dict[str, int]], events: list[FlowEvent] | None = None) -> MailFlow:
    """A MailFlow over the last ``len(totals)`` days with these figures."""
    now = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    start, end = window(len(totals), now)
    days = [
        FlowDay((start + timedelta(days=n)).date(), **figures) for n, figures in enumerate(totals)
    ]
    return MailFlow(start, end, now, days, events or [])


def bars(svg: ElementTree.Element) -> list[ElementTree.Element]:
    """The bars' segments (the rectangles with a tooltip)."""
    return [rect for rect in svg.iter(f"{SVG_NS}rect") if rect.find(f"{SVG_NS}title") is not None]


def test_hostile_names_and_causes_are_text(english: None) -> None:
    """A domain name and an event cause full of markup, quotes and direction overrides
    stay text: the SVG is well-formed XML with no element or attribute made of them."""
    flow = flow_of_days(
        [{"delivered": 3}] * 14,
        [
            FlowEvent(
                1, datetime(2026, 11, 20, 3, tzinfo=UTC), None, HOSTILE + '"/><script>x</script>'
            )
        ],
    )
    svg_text = str(chart_svg(flow, chart_words('e"vil<script>.test</script>&', flow, "en")))
    svg = parse(svg_text)
    tags = {node.tag.removeprefix(SVG_NS) for node in svg.iter()}
    assert tags <= {
        "svg",
        "title",
        "desc",
        "defs",
        "pattern",
        "rect",
        "circle",
        "path",
        "line",
        "text",
        "g",
    }
    assert title(svg) == 'Mail flow of e"vil<script>.test</script>&, last 14 days (UTC)'
    tip = title(next(svg.iter(f"{SVG_NS}g")))
    assert tip.endswith('(<script>alert("x")</script> & "disco" lleno"/><script>x</script>)')
    assert "\u202e" not in svg_text


def test_no_mail_draws_an_empty_chart(english: None) -> None:
    """All zeros: an axis from 0 to 1, no bar, no figure above a bar."""
    flow = flow_of_days([{}] * 14)
    svg = parse(chart_svg(flow, chart_words("acme.test", flow, "en")))
    assert bars(svg) == []
    assert texts(svg)[5:7] == ["0", "1"]


def test_one_huge_day_keeps_the_others_visible(english: None) -> None:
    """A million on one day and a handful on the others: the huge bar reaches the top of
    the axis (1M), every other day's segments stay at least a pixel high and their
    figures are written above them; everything stays inside the picture."""
    totals = [{"delivered": 3, "bounced": 1}] * 14
    totals[4] = {"delivered": 1_000_000, "continuity": 2_500}
    flow = flow_of_days(totals)
    svg = parse(chart_svg(flow, chart_words("acme.test", flow, "en")))
    width, height = (float(v) for v in svg.get("viewBox", "").split()[2:])
    segments = bars(svg)
    assert len(segments) == 13 * 2 + 2
    assert all(float(r.get("height", 0)) >= 1 for r in segments)
    for node in svg.iter():
        for key in ("x", "y", "x1", "x2", "y1", "y2"):
            if node.get(key) is not None and node.tag != f"{SVG_NS}pattern":
                assert 0 <= float(node.get(key, 0)) <= max(width, height), (node.tag, key)
    written = texts(svg)
    assert "1M" in written and "1.0M" not in written
    assert written.count("4") >= 13  # each small day's total
    assert ticks(1_002_500)[-1] >= 1_002_500
    spanish = parse(chart_svg(flow, chart_words("acme.test", flow, "es")))
    assert "1\u00a0M" in texts(spanish)  # a no-break space, as Spanish writes it


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, other: str) -> float:
    """The WCAG contrast ratio of two colours."""
    light, dark = sorted((_luminance(one), _luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_colours_meet_wcag_aa() -> None:
    """Bars at least 3:1 against the chart's white and the event band (WCAG 1.4.11),
    text at least 4.5:1 on both (1.4.3)."""
    for colour in flowchart.COLOURS.values():
        assert contrast(colour, flowchart.WHITE) >= 3, colour
        assert contrast(colour, flowchart.BAND) >= 3, colour
    for colour in (flowchart.INK, flowchart.MUTED, flowchart.BAND_INK):
        assert contrast(colour, flowchart.WHITE) >= 4.5, colour
        assert contrast(colour, flowchart.BAND) >= 4.5, colour


def test_every_series_has_its_own_pattern_and_legend(english: None) -> None:
    """Colour is not the only cue: each series' fill is a different pattern (or plain),
    and the legend names each next to its swatch."""
    assert len(set(flowchart.FILLS.values())) == len(FLOWS)
    flow = flow_of_days([{"delivered": 1, "continuity": 1, "deferred": 1, "bounced": 1}] * 3)
    words: ChartWords = chart_words("acme.test", flow, "en")
    svg = parse(chart_svg(flow, words))
    written = texts(svg)
    for label in ("Delivered", "Via Continuity", "Deferred", "Bounced", "Continuity event"):
        assert label in written
    assert {r.get("fill") for r in bars(svg)} == set(flowchart.FILLS.values())


def _box(node: ElementTree.Element) -> tuple[float, float, float, float]:
    """Where a <text> of the chart is drawn: left, top, right, bottom, from its position,
    anchor and size (the builder's own generous width estimate: 0.6 em a character)."""
    x, y = float(node.get("x", 0)), float(node.get("y", 0))
    size = float(node.get("font-size", flowchart.FONT))
    width = len("".join(node.itertext())) * size * 0.6
    left = x - width / 2 if node.get("text-anchor") == "middle" else x
    return left, y - size, left + width, y + 0.25 * size


def test_event_labels_and_edges_keep_off_the_totals(english: None) -> None:
    """Regression: a short event on the day of the tallest bar drew its dashed edges
    through that bar's total (the README tour's mail-flow picture), a bar as tall as the
    axis put its total among the event labels, and a label pushed left to stay inside
    the picture was written over the one before it. The labels now have a band of their
    own above every total, an edge stops short of a total's digits, and labels never
    overlap: the third event, crowded at the right edge, gets none (the list under the
    chart names it)."""
    now = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    totals = [{"delivered": 10}] * 14
    totals[13] = {"delivered": 52, "continuity": 8}  # 60: the top of the axis exactly
    totals[11] = {"delivered": 40}
    events = [
        # across two days, edges in the middle of day 11's and day 12's bars
        FlowEvent(1, datetime(2026, 11, 28, 11, 50, tzinfo=UTC), now.replace(day=29), "x"),
        FlowEvent(2, now.replace(hour=11, minute=55), now.replace(hour=12, minute=5), "y"),
        FlowEvent(3, now.replace(hour=12), None, "z"),  # open, on today's bar
    ]
    flow = flow_of_days(totals, events)
    svg = parse(chart_svg(flow, chart_words("acme.test", flow, "en")))
    labels = [_box(t) for t in svg.iter(f"{SVG_NS}text") if t.get("class") == "mf-label"]
    figures_drawn = [t for t in svg.iter(f"{SVG_NS}text") if t.get("class") == "mf-total"]
    width = float(svg.get("viewBox", "").split()[2])
    assert len(labels) == 2
    assert all(box[0] >= 0 and box[2] <= width for box in labels)
    first, second = sorted(labels)
    assert first[2] <= second[0] or first[3] <= second[1] or second[3] <= first[1]
    assert sorted("".join(t.itertext()) for t in figures_drawn) == ["10"] * 12 + ["40", "60"]
    boxes = [_box(t) for t in figures_drawn]
    assert max(label[3] for label in labels) < min(box[1] for box in boxes)
    edges = [line for line in svg.iter(f"{SVG_NS}line") if line.get("stroke") == flowchart.BAND_INK]
    crossing = [
        (line.get("x1"), line.get("y1"), line.get("y2"))
        for line in edges
        for left, upper, right, lower in boxes
        if left <= float(line.get("x1", 0)) <= right
        and float(line.get("y1", 0)) < lower
        and float(line.get("y2", 0)) > upper
    ]
    assert crossing == []
    # The edges are still drawn, above and below each figure they pass.
    assert len({line.get("x1") for line in edges}) == 5
    assert len(edges) > 4
