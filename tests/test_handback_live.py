"""The hand-back's progress, counted again while the page is open: the page's script asks
a small endpoint for the figures alone (GET /admin/domains/<name>/handback), a background
request under the domain page's own access rules.

Regression: the script fetched the whole domain page every 5 s. That request refreshed the
session's last activity (a forgotten admin tab stayed signed in as long as a hand-back
ran), rendered base.html, which took the notices waiting in the session (a notice set by
the admin's action in another tab could be eaten), and re-rendered the whole overview."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from playwright.sync_api import Page, Request, expect
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from roster.models import ContinuityEvent, MailRecipient, utcnow
from tests.portal_support import (
    OTHER_DOMAIN,
    STAFF_PASSWORD,
    Portal,
    in_hand_back,
    signed_in_client,
    text,
)
from tests.test_browser import chromium, chromium_path, serve
from tests.test_controlpanel import PAGE, admin_of, flashes, panel, post

__all__ = ["panel"]  # the fixture, used by name

LIVE = f"{PAGE}/handback"
COOKIE = "continuity_session"
QUEUE_ID = "Q00000000000000000HB"


def start_hand_back(portal: Portal, held: int = 3, handed_back: int = 1) -> None:
    """acme.test in a continuity event's hand-back: ``held`` recipients held by it, of
    which the primary has taken ``handed_back`` back so far."""
    portal.set_domain(active=True, mode="all")
    in_hand_back(
        portal.engine,
        "acme.test",
        QUEUE_ID,
        [(f"user{number}@acme.test", number < handed_back, 1, "") for number in range(held)],
    )


def hand_back_more(portal: Portal, count: int) -> None:
    """The primary takes ``count`` more of the held recipients back."""
    now = utcnow()
    with Session(portal.engine) as session, session.begin():
        waiting = session.scalars(
            select(MailRecipient.id)
            .where(MailRecipient.queue_id == QUEUE_ID, MailRecipient.delivered_at.is_(None))
            .order_by(MailRecipient.id)
            .limit(count)
        ).all()
        session.execute(
            update(MailRecipient)
            .where(MailRecipient.id.in_(waiting))
            .values(status="delivered", delivered_at=now)
        )


def end_the_event(portal: Portal) -> None:
    """The monitor ends the event: nothing is left to hand back."""
    with Session(portal.engine) as session, session.begin():
        session.execute(
            update(ContinuityEvent)
            .where(ContinuityEvent.ended_at.is_(None))
            .values(ended_at=utcnow(), ended_by="monitor", held=3, handed_back=3)
        )


def seen(client: FlaskClient) -> int:
    """The session's last activity, as the server will read it."""
    with client.session_transaction() as session:
        return int(session["seen"])


def test_pages_point_their_script_at_the_figures_alone(panel: Portal) -> None:
    start_hand_back(panel)
    admin = admin_of(panel)

    for page in (PAGE, f"{PAGE}/events"):
        shown = text(admin.get(page))
        assert f'data-live="{LIVE}"' in shown, page
        assert "Handed back 1 of 3, 2 left." in shown, page  # as of the page's load

    answer = admin.get(LIVE)
    assert answer.status_code == 200 and answer.is_json
    assert answer.get_json() == {
        "running": True,
        "held": 3,
        "handed_back": 1,
        "left": 2,
        "text": "Handed back 1 of 3, 2 left.",
    }
    spanish = admin.get(LIVE, headers={"Accept-Language": "es"}).get_json()
    assert spanish["text"] != "Handed back 1 of 3, 2 left."  # in the page's language
    hand_back_more(panel, 1)
    assert admin.get(LIVE).get_json()["text"] == "Handed back 2 of 3, 1 left."
    end_the_event(panel)
    assert admin.get(LIVE).get_json() == {"running": False}


def test_asking_for_the_figures_keeps_no_session_alive(panel: Portal) -> None:
    """A tab left open on a hand-back does not keep its admin signed in."""
    start_hand_back(panel)
    admin = admin_of(panel)
    admin.get(PAGE)  # the page puts its form token in the session
    idle_since = int(time.time()) - 10 * 60
    with admin.session_transaction() as session:
        session["seen"] = idle_since

    for _ in range(3):
        answer = admin.get(LIVE)
        assert answer.status_code == 200
        assert "Set-Cookie" not in answer.headers

    assert seen(admin) == idle_since
    with admin.session_transaction() as session:
        session["seen"] = int(time.time()) - 31 * 60  # idle longer than 30 minutes
    assert admin.get(LIVE).status_code == 302  # over: the script stops asking
    assert admin.get(PAGE).headers["Location"].startswith("/sign-in")


def test_asking_for_the_figures_takes_no_notice(panel: Portal) -> None:
    """A notice set by the admin's action in another tab waits for that tab's next page,
    whether the figures are asked for with the cookie of after the notice or (a request
    already on its way) of before it."""
    start_hand_back(panel)
    admin = admin_of(panel)
    admin.get(PAGE)
    cookie = admin.get_cookie(COOKIE)
    assert cookie is not None
    before_notice = cookie.value

    changed = post(admin, f"{PAGE}/coverage", {"mode": "all"})
    assert changed.status_code == 302

    assert admin.get(LIVE).status_code == 200  # the open tab asks, with today's cookie
    in_flight = panel.app.test_client()
    in_flight.set_cookie(COOKIE, before_notice)
    late = in_flight.get(LIVE)
    assert late.status_code == 200 and "Set-Cookie" not in late.headers

    assert "Nothing changed." in flashes(text(admin.get(PAGE)))


def test_the_figures_follow_the_domain_pages_access_rules(panel: Portal) -> None:
    start_hand_back(panel)
    panel.add_staff(f"admin@{OTHER_DOMAIN}", "admin", OTHER_DOMAIN)
    other_admin = signed_in_client(panel, f"admin@{OTHER_DOMAIN}", STAFF_PASSWORD)
    person = signed_in_client(panel, "ana@acme.test")

    assert other_admin.get(PAGE).status_code == 404
    assert other_admin.get(LIVE).status_code == 404
    assert other_admin.get("/admin/domains/nowhere.test/handback").status_code == 404
    assert person.get(PAGE).status_code == 403
    assert person.get(LIVE).status_code == 403
    anonymous = panel.client().get(LIVE)
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"].startswith("/sign-in")


@pytest.fixture
def admin_page(panel: Portal) -> Iterator[tuple[Page, str]]:
    """Chromium signed in as acme.test's admin, its timers under the test's hand."""
    with serve(panel.app) as base, chromium(chromium_path()) as browser:
        context = browser.new_context()
        context.set_default_timeout(20_000)
        opened = context.new_page()
        opened.clock.install()
        opened.goto(f"{base}/sign-in")
        opened.fill("#address", "admin@acme.test")
        opened.fill("#password", STAFF_PASSWORD)
        with opened.expect_navigation():
            opened.locator("main form button[type=submit]").click()
        yield opened, base
        context.close()


@pytest.mark.parametrize("where", ["", "/events"])
def test_the_open_page_counts_again_without_reloading(
    panel: Portal, admin_page: tuple[Page, str], where: str
) -> None:
    browser, base = admin_page
    start_hand_back(panel)
    asked: list[str] = []
    browser.on("request", lambda request: asked.append(request_path(request, base)))
    browser.goto(f"{base}{PAGE}{where}")
    progress = browser.locator("#hand-back")
    expect(progress.locator(".numbers")).to_have_text("Handed back 1 of 3, 2 left.")
    asked.clear()

    hand_back_more(panel, 1)
    browser.clock.run_for(5_000)
    expect(progress.locator(".numbers")).to_have_text("Handed back 2 of 3, 1 left.")
    expect(progress.locator("progress")).to_have_js_property("value", 2)

    hand_back_more(panel, 1)
    end_the_event(panel)
    browser.clock.run_for(5_000)
    expect(progress).to_have_text(
        "The hand-back has finished: reload the page to see the event’s final counts."
    )
    browser.clock.run_for(20_000)  # finished: it asks no more
    assert asked == [LIVE, LIVE]


def request_path(request: Request, base: str) -> str:
    """The path a page asked for on the portal."""
    return request.url.removeprefix(base)
