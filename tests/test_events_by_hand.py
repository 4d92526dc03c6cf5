"""Continuity events by hand (issue #10): "Start continuity event" / "End continuity
event" in the Control Panel and `continuity event start|end|list`, over the real portal,
roster and command line. Ending by hand starts the hand-back; the monitor's own step
(roster.continuity.finish_recovery) ends the event when nothing is left."""

from __future__ import annotations

import getpass
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from roster.continuity import finish_recovery
from roster.db import session_factory, transaction
from roster.models import AuditEvent, ContinuityEvent, Domain
from roster.service import end_event_by_hand, start_event_by_hand
from tests.portal_support import DOMAIN, OTHER_DOMAIN, Portal, text
from tests.standby_fixtures import standby_store
from tests.test_controlpanel import PAGE, SPANISH, admin_of, flashes, panel, post
from tests.test_outage_drill import Drill, drill

__all__ = ["drill", "panel", "standby_store"]  # the fixtures, used by name

USER = f"cli:{getpass.getuser()}"


def events_of(portal: Portal, name: str = DOMAIN) -> list[ContinuityEvent]:
    """The domain's continuity events, oldest first."""
    with Session(portal.engine) as session:
        return list(
            session.scalars(
                select(ContinuityEvent)
                .join(Domain, Domain.id == ContinuityEvent.domain_id)
                .where(Domain.name == name)
                .order_by(ContinuityEvent.id)
            )
        )


def points(page: str) -> list[str]:
    """The points of a confirmation page."""
    found = re.search(r'<ul class="points">(.*?)</ul>', page, re.DOTALL)
    assert found, page
    return re.findall(r"<li>(.*?)</li>", found.group(1))


def continuity_state(page: str) -> str:
    """The overview's continuity state."""
    found = re.search(r'<dd id="continuity-state">(.*?)</dd>', page, re.DOTALL)
    assert found
    return found.group(1).strip()


def monitor_turn(portal: Portal) -> None:
    """What the gateway's monitor does on its turn for events in recovery."""
    with portal.engine.begin() as connection:
        for event in events_of(portal):
            if event.ended_at is None:
                finish_recovery(connection, event.id)


def test_start_and_end_an_event_by_hand_in_both_languages(panel: Portal) -> None:
    panel.set_domain(active=True, mode="all")
    admin = admin_of(panel)
    page = text(admin.get(PAGE))
    assert f'id="start-event" href="{PAGE}/events/start"' in page
    assert 'id="end-event"' not in page

    confirm = text(admin.get(f"{PAGE}/events/start"))
    spanish = text(admin.get(f"{PAGE}/events/start", headers=SPANISH))
    assert "Start a continuity event for acme.test?" in confirm
    assert points(confirm)[:2] == [
        "From now on, mail for acme.test is held: nothing is delivered to the primary mail"
        " server until the event ends.",
        "Covered users' incoming mail is still kept in the standby store.",
    ]
    assert any("3 checks in a row" in point for point in points(confirm))
    assert 'name="reason"' in confirm and ">Confirm</button>" in confirm
    assert "¿Iniciar un evento de Continuity para acme.test?" in spanish
    assert "se retiene" in spanish
    assert events_of(panel) == []  # the confirmation page changes nothing

    started = post(admin, f"{PAGE}/events/start", {"reason": "Disco lleno en el servidor"})
    assert started.status_code == 302
    page = text(admin.get(PAGE))
    assert (
        "A continuity event has started for acme.test: its mail is held until you end the"
        " event." in flashes(page)
    )
    assert continuity_state(page).startswith("In a continuity event since ")
    assert continuity_state(page).endswith(": mail for this domain is held.")
    assert f'id="end-event" href="{PAGE}/events/end"' in page
    assert 'id="start-event"' not in page
    [event] = events_of(panel)
    assert (event.reason, event.started_by, event.ended_at) == (
        "Disco lleno en el servidor",
        "admin@acme.test",
        None,
    )

    confirm = text(admin.get(f"{PAGE}/events/end"))
    spanish = text(admin.get(f"{PAGE}/events/end", headers=SPANISH))
    assert "End the continuity event of acme.test?" in confirm
    assert points(confirm)[0] == (
        "The held mail is handed back to the primary mail server, oldest first, each message once."
    )
    assert "¿Terminar el evento de Continuity de acme.test?" in spanish
    assert "se devuelve" in spanish

    ended = post(admin, f"{PAGE}/events/end", headers=SPANISH)
    assert ended.status_code == 302
    page = text(admin.get(PAGE, headers=SPANISH))
    assert any("se está devolviendo" in line for line in flashes(page)), flashes(page)
    assert ", en recuperación" in continuity_state(page)
    english = continuity_state(text(admin.get(PAGE)))
    assert ", recovering: the held mail is being handed back" in english
    [event] = events_of(panel)
    assert event.recovery_started_at is not None and event.ended_at is None
    assert 'id="end-event"' not in page and 'id="start-event"' not in page

    monitor_turn(panel)  # nothing is left to hand back: the event ends
    [event] = events_of(panel)
    assert event.ended_at is not None
    assert "Normal" in continuity_state(text(admin.get(PAGE))) or "Not checked" in (
        continuity_state(text(admin.get(PAGE)))
    )
    with Session(panel.engine) as session:
        audited = session.execute(
            select(AuditEvent.action, AuditEvent.actor, AuditEvent.after)
            .where(AuditEvent.action.startswith("continuity_event."))
            .order_by(AuditEvent.id)
        ).all()
    assert [(a, who) for a, who, _after in audited] == [
        ("continuity_event.started", "admin@acme.test"),
        ("continuity_event.ended", "admin@acme.test"),
    ]
    assert audited[0].after["reason"] == "Disco lleno en el servidor"
    trail = text(admin.get(f"{PAGE}/audit"))
    assert "Continuity event started by hand: mail held" in trail
    assert "Reason: Disco lleno en el servidor." in trail
    assert "Continuity event ended by hand: held mail handed back" in trail


def test_event_refusals_are_clear_and_change_nothing(panel: Portal) -> None:
    admin = admin_of(panel)
    panel.set_domain(active=False)
    for path in ("start", "end"):
        refused = admin.get(f"{PAGE}/events/{path}")
        assert refused.status_code == 302
    page = text(admin.get(PAGE))
    assert 'id="start-event"' not in page  # an inactive domain holds nothing
    assert post(admin, f"{PAGE}/events/start").status_code == 302
    assert "Continuity Service is not active for this domain: activate it first." in flashes(
        text(admin.get(PAGE))
    )
    post(admin, f"{PAGE}/events/end")
    assert "This domain is in no continuity event: there is nothing to end." in flashes(
        text(admin.get(PAGE))
    )
    post(admin, f"{PAGE}/events/end", headers=SPANISH)
    assert (
        "Este dominio no está en ningún evento de Continuity: no hay nada que terminar."
        in flashes(text(admin.get(PAGE, headers=SPANISH)))
    )
    assert events_of(panel) == []

    panel.set_domain(active=True)
    post(admin, f"{PAGE}/events/start")
    post(admin, f"{PAGE}/events/start")  # a second start, from an old page
    assert any(
        line.startswith("A continuity event of this domain is open already (since ")
        for line in flashes(text(admin.get(PAGE)))
    )
    assert admin.get(f"{PAGE}/events/start").status_code == 302
    post(admin, f"{PAGE}/events/end")
    post(admin, f"{PAGE}/events/end")
    assert any(
        line.startswith("The continuity event of this domain is handing its mail back already")
        for line in flashes(text(admin.get(PAGE)))
    )
    assert len(events_of(panel)) == 1
    actions = [a for a, _who in panel.audit_actions() if a.startswith("continuity_event.")]
    assert actions == ["continuity_event.started", "continuity_event.ended"]

    # Another domain's admin finds nothing here, and cannot start or end ours.
    panel.add_staff("admin@other.test", "admin", OTHER_DOMAIN)
    other = admin_of(panel, OTHER_DOMAIN)
    for method, path in [("GET", "events"), ("GET", "events/start"), ("POST", "events/end")]:
        answer = other.get(f"{PAGE}/{path}") if method == "GET" else post(other, f"{PAGE}/{path}")
        assert answer.status_code == 404, path


def test_the_events_page_lists_counts_and_durations_newest_first_paged(panel: Portal) -> None:
    panel.set_domain(active=True)
    start = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)
    with Session(panel.engine) as session, session.begin():
        domain_id = session.scalar(select(Domain.id).where(Domain.name == DOMAIN))
        for number in range(55):
            began = start + timedelta(days=number)
            session.add(
                ContinuityEvent(
                    domain_id=domain_id,
                    started_at=began,
                    ended_at=began + timedelta(hours=2, minutes=number),
                    recovery_started_at=began + timedelta(hours=1),
                    reason=f"cause {number}",
                    started_by="monitor",
                    ended_by="monitor",
                    held=number * 10,
                    handed_back=number * 10,
                )
            )
    admin = admin_of(panel)
    first = text(admin.get(f"{PAGE}/events"))
    second = text(admin.get(f"{PAGE}/events?page=2"))
    spanish = text(admin.get(f"{PAGE}/events", headers=SPANISH))

    def rows(page: str) -> list[list[str]]:
        body = re.search(r"<tbody>(.*?)</tbody>", page, re.DOTALL)
        assert body
        return [
            [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", r)]
            for r in re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.DOTALL)
        ]

    assert "55 continuity events." in first
    assert len(rows(first)) == 50 and len(rows(second)) == 5
    assert rows(first)[0] == [
        "2026-11-24 08:00 UTC by Continuity (automatic)",
        "2026-11-24 10:54 UTC by Continuity (automatic)",
        "2 h 54 min",
        "cause 54",
        "2026-11-24 09:00 UTC",
        "540",
        "540",
    ]
    assert rows(second)[-1][0] == "2026-10-01 08:00 UTC by Continuity (automatic)"
    assert "Page 1 of 2" in first and f'href="{PAGE}/events?page=2"' in first
    assert "Continuity (automático)" in spanish and "Eventos de Continuity" in spanish
    assert f'id="events-link" href="{PAGE}/events"' in text(admin.get(PAGE))


def test_cli_event_start_end_and_list(panel: Portal) -> None:
    tool = panel.tool
    refused = tool.run("event", "end", DOMAIN)
    assert refused.exit_code == 1
    assert "acme.test is in no continuity event: there is nothing to end" in refused.output

    panel.set_domain(active=False)
    refused = tool.run("event", "start", DOMAIN)
    assert refused.exit_code == 1 and "not active for acme.test" in refused.output
    panel.set_domain(active=True)

    started = tool.run("event", "start", DOMAIN, "--reason", "planned maintenance")
    assert started.exit_code == 0, started.output
    assert "started for acme.test: its mail is held" in started.output
    again = tool.run("event", "start", DOMAIN)
    assert again.exit_code == 1 and "is open since" in again.output
    ended = tool.run("event", "end", DOMAIN)
    assert ended.exit_code == 0 and "handing its mail back" in ended.output
    again = tool.run("event", "end", DOMAIN)
    assert again.exit_code == 1 and "handing its mail back already" in again.output

    listed = json.loads(tool.run("event", "list", DOMAIN, "--json").output)
    assert [(e["state"], e["cause"], e["started_by"]) for e in listed] == [
        ("recovering", "planned maintenance", USER)
    ]
    assert listed[0]["recovery_started_at"] is not None and listed[0]["ended_at"] is None
    monitor_turn(panel)
    with panel.engine.begin() as connection:  # an older event, ended by the monitor
        connection.execute(
            update(ContinuityEvent).values(held=3, handed_back=3, ended_by="monitor")
        )
    listed = json.loads(tool.run("event", "list", DOMAIN, "--json").output)
    assert set(listed[0]) == {
        "id",
        "state",
        "started_at",
        "ended_at",
        "cause",
        "started_by",
        "ended_by",
        "recovery_started_at",
        "held",
        "handed_back",
        "duration_seconds",
    }
    assert (listed[0]["state"], listed[0]["held"], listed[0]["handed_back"]) == ("ended", 3, 3)
    plain = tool.run("event", "list", DOMAIN).output
    assert "ended" in plain and "held 3, handed back 3" in plain and "planned maintenance" in plain
    assert tool.run("event", "list", OTHER_DOMAIN).output.strip() == (
        "no continuity events for other.test"
    )
    assert [a for a, who in panel.audit_actions() if a.startswith("continuity_event.")] == [
        "continuity_event.started",
        "continuity_event.ended",
    ]
    unknown = tool.run("event", "list", "nowhere.test")
    assert unknown.exit_code != 0 and "not in the roster" in unknown.output


def test_an_event_by_hand_holds_the_mail_and_hands_it_back_once(drill: Drill) -> None:
    """With automatic failover off, an admin starts an event: mail arriving is in the
    standby mailbox and nothing reaches the healthy primary; the admin ends it: every
    held message reaches the primary once, and the monitor ends the event with its
    counts, ended by the admin who ended it. The real gateway, its monitor, Dovecot and
    an aiosmtpd primary."""
    with transaction(session_factory(drill.engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == DOMAIN)).one()
        acme.failover_automatic = False  # the monitor only reports
        start_event_by_hand(session, acme, "admin@acme.test", "planned maintenance")
    sent = drill.send(20, "held", threads=4)
    drill.wait(lambda: len(drill.in_standby()) == 20, "the held mail in the standby mailbox")
    time.sleep(2.5)  # two of the monitor's checks, both successful
    assert drill.at_primary() == Counter()
    [event] = drill.events()
    assert (event.started_by, event.reason, event.recovery_started_at) == (
        "admin@acme.test",
        "planned maintenance",
        None,
    )

    with transaction(session_factory(drill.engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == DOMAIN)).one()
        end_event_by_hand(session, acme, "admin@acme.test")
    drill.wait(lambda: drill.events()[0].ended_at is not None, "the event's end")

    assert drill.at_primary() == Counter(dict.fromkeys(sent, 1))
    [event] = drill.events()
    assert (event.held, event.handed_back, event.ended_by) == (20, 20, "admin@acme.test")
    assert event.recovery_started_at is not None
