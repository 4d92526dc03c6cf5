"""Every main page of the portal passes axe-core with no serious or critical violation,
in English and in Spanish.

axe-core comes from the npm registry (package.json, package-lock.json; scripts/bootstrap
installs it into node_modules) and is injected by Playwright into each page as Debian's
Chromium shows it: sign-in, the emergency password reset, health, /me, the helpdesk's
search and person pages, the Control Panel's domain list, a domain's page (with its
list of selected users and a hand-back in progress), adding users (with a bulk report),
a confirmation step, the audit trail, the continuity events, Email Live Tracking's list
and one message, and the webmail's folder, message and compose pages. In English, the
Control Panel's domain pages are also opened on a phone's screen: nothing wider than it,
the domain's navigation above the content, table rows as cards.

Everything is real: the portal behind a WSGI server on loopback, the roster, a slapd
subtree, the session's Dovecot standby store. One browser serves the whole test session.
Chromium and axe-core are required components: when either is missing the test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.portal_support import DOMAIN, PASSWORD, STAFF_PASSWORD, in_hand_back
from tests.test_browser import chromium, chromium_path, serve
from tests.webmail_support import Webmail, mail, standby_store, webmail  # noqa: F401

AXE = Path(__file__).resolve().parent.parent / "node_modules" / "axe-core" / "axe.min.js"
TIMEOUT_MS = 20_000
ADMIN = f"admin@{DOMAIN}"
PAGE = f"/admin/domains/{DOMAIN}"
QUEUE_ID = "Q0000000000000000042"
FAILING = ("serious", "critical")
LOCALES = {"en": "en-GB", "es": "es-ES"}


def axe_source() -> str:
    """axe.min.js as scripts/bootstrap installed it."""
    if not AXE.is_file():
        pytest.fail(f"axe-core is missing ({AXE}): run scripts/bootstrap (it runs npm ci)")
    return AXE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium for this module. Not for the session: Playwright's sync API runs
    one instance at a time in a process, and the other browser tests start their own."""
    with chromium(chromium_path()) as launched:
        yield launched


@dataclass
class Found:
    """One serious or critical violation on one page."""

    page: str
    rule: str
    impact: str
    help: str
    targets: list[str]
    summary: str

    def __str__(self) -> str:
        where = "; ".join(self.targets[:5]) + (" …" if len(self.targets) > 5 else "")
        return (
            f"{self.page}: [{self.impact}] {self.rule}: {self.help}\n"
            f"    at {where}\n    {self.summary.replace(chr(10), chr(10) + '    ')}"
        )


class Checker:
    """Runs axe-core on pages and keeps what it found."""

    def __init__(self, source: str, lang: str, shots: Path) -> None:
        self.source, self.lang, self.shots = source, lang, shots
        self.found: list[Found] = []
        self.checked: list[str] = []

    def context(self, browser: Browser) -> BrowserContext:
        """A browser profile of its own, asking for the checker's language."""
        context = browser.new_context(
            locale=LOCALES[self.lang], viewport={"width": 1280, "height": 900}
        )
        context.set_default_timeout(TIMEOUT_MS)
        return context

    def check(self, page: Page, name: str) -> None:
        """axe-core on the page as it is now: violations at serious or critical kept."""
        lang = page.locator("html").get_attribute("lang")
        assert lang == self.lang, (name, lang, page.url)
        # Evaluated through the DevTools protocol: the portal's Content-Security-Policy
        # (script-src 'self') does not apply, and nothing is added to the page's markup.
        page.evaluate(self.source)
        # The webmail's message frame holds the sender's HTML, sandboxed without
        # scripts: axe cannot run in it, and what a sender wrote is not the portal's.
        results: dict[str, Any] = page.evaluate(
            """async () => await axe.run(document, {
                   iframes: false,
                   resultTypes: ["violations"],
                   runOnly: {type: "tag", values: [
                     "wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]},
               })"""
        )
        for violation in results["violations"]:
            if violation["impact"] in FAILING:
                nodes = violation["nodes"]
                self.found.append(
                    Found(
                        f"{self.lang} {name} ({urlsplit(page.url).path})",
                        violation["id"],
                        violation["impact"],
                        violation["help"],
                        [" ".join(map(str, node["target"])) for node in nodes],
                        nodes[0].get("failureSummary", "") if nodes else "",
                    )
                )
        self.checked.append(name)
        self.shots.mkdir(parents=True, exist_ok=True)
        number = len(self.checked)
        page.screenshot(
            path=str(self.shots / f"{self.lang}-{number:02d}-{name}.png"), full_page=True
        )


def open_page(page: Page, url: str) -> None:
    """Go to ``url`` and wait for its scripts and styles."""
    answer = page.goto(url)
    assert answer is not None and answer.status < 400, (url, answer and answer.status)
    page.wait_for_load_state("load")


def sign_in(page: Page, base: str, address: str, password: str) -> None:
    """Sign in through the form."""
    open_page(page, f"{base}/sign-in")
    page.fill("#address", address)
    page.fill("#password", password)
    with page.expect_navigation():
        page.locator("main form button[type=submit]").click()
    assert urlsplit(page.url).path == "/me", page.url


def prepare(world: Webmail) -> tuple[str, str]:
    """Ana (covered, listed, with mail), Bo; a domain admin; a tracked message; a
    continuity event in its hand-back. Returns Ana's and Bo's addresses."""
    portal = world.portal
    ana = world.person("ana", display_name="Ana García")
    bo = world.person("bo", display_name="Bo Berg")
    portal.set_domain(active=True, mode="selected", emergency=True)
    portal.list_person(ana)
    portal.list_person(bo)
    portal.add_staff(ADMIN, "admin")
    world.deliver(
        ana,
        mail("Lunch on Friday?", "Shall we meet at noon?\n"),
        mail(
            "Quarterly figures",
            "See the attachment.\n",
            html="<p>See the <b>attachment</b>.</p>",
            attachments=(("figures.csv", "text/csv", b"a,b\n1,2\n"),),
        ),
    )
    in_hand_back(
        portal.engine,
        DOMAIN,
        QUEUE_ID,
        [(ana, True, 1, "250 2.0.0 Ok"), (bo, False, 2, "451 4.3.0 Try again later")],
        started_ago=timedelta(hours=3),
        size=2048,
        message_id="<figures@sender.test>",
    )
    return ana, bo


def walk(browser: Browser, base: str, checker: Checker, ana: str) -> None:
    """Every main page, as the people who use it reach it."""
    # Anyone: sign-in, the reset with a helpdesk's code, health.
    context = checker.context(browser)
    page = context.new_page()
    open_page(page, f"{base}/sign-in")
    checker.check(page, "sign-in")
    open_page(page, f"{base}/reset")
    checker.check(page, "emergency-password-reset")
    open_page(page, f"{base}/health")
    checker.check(page, "health")
    context.close()

    # A covered person: /me (with the emergency password form) and the webmail.
    context = checker.context(browser)
    page = context.new_page()
    sign_in(page, base, ana, PASSWORD)
    checker.check(page, "me")
    open_page(page, f"{base}/webmail")
    checker.check(page, "webmail-folder")
    page.locator("table.messages a.open", has_text="Quarterly figures").click()
    page.wait_for_load_state("load")
    checker.check(page, "webmail-message")
    open_page(page, f"{base}/webmail/compose")
    checker.check(page, "webmail-compose")
    context.close()

    # The domain admin: the helpdesk and the Control Panel.
    context = checker.context(browser)
    page = context.new_page()
    sign_in(page, base, ADMIN, STAFF_PASSWORD)
    open_page(page, f"{base}/helpdesk?q=ana")
    checker.check(page, "helpdesk-search")
    page.locator("main table a").first.click()
    page.wait_for_load_state("load")
    checker.check(page, "helpdesk-person")
    open_page(page, f"{base}/admin")
    checker.check(page, "control-panel-domains")
    open_page(page, f"{base}{PAGE}")
    checker.check(page, "domain-overview-and-users")
    open_page(page, f"{base}{PAGE}/add")
    checker.check(page, "add-users")
    page.fill("#addresses", f"{ana}\nnobody@elsewhere.test")
    with page.expect_navigation():
        page.locator("#bulk-form button[value=add]").click()
    checker.check(page, "bulk-report")
    open_page(page, f"{base}{PAGE}/deactivate")
    checker.check(page, "confirm")
    open_page(page, f"{base}{PAGE}/audit")
    checker.check(page, "audit")
    open_page(page, f"{base}{PAGE}/events")
    checker.check(page, "events")
    open_page(page, f"{base}{PAGE}/tracking")
    checker.check(page, "email-live-tracking")
    open_page(page, f"{base}{PAGE}/tracking/{QUEUE_ID}")
    checker.check(page, "email-live-tracking-message")
    open_page(page, f"{base}{PAGE}/dns")
    checker.check(page, "dns-records")
    context.close()


TOO_WIDE = """() => [...document.querySelectorAll("body *")]
  .filter((e) => e.getBoundingClientRect().right > 376)
  .filter((e) => e.parentElement.getBoundingClientRect().right <= 376)
  .map((e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + "." + e.className)"""
"""The outermost elements that reach past the right edge of the window."""


def on_a_phone(browser: Browser, base: str, shots: Path) -> None:
    """At 375 px: nothing wider than the screen; the domain's navigation above the
    content; a table's rows as cards of label: value."""
    context = browser.new_context(
        locale="en-GB", viewport={"width": 375, "height": 740}, is_mobile=True
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    sign_in(page, base, ADMIN, STAFF_PASSWORD)
    for path in (PAGE, f"{PAGE}/events", f"{PAGE}/audit", f"{PAGE}/tracking"):
        open_page(page, f"{base}{path}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, (path, width, page.evaluate(TOO_WIDE))
        side, main = page.locator("nav.side").bounding_box(), page.locator("main").bounding_box()
        assert side and main and side["y"] + side["height"] <= main["y"], (path, side, main)
        page.screenshot(path=str(shots / f"phone-{path.rsplit('/', 1)[-1]}.png"), full_page=True)
    # The users table: each row a card, each cell under its column's heading.
    open_page(page, f"{base}{PAGE}")
    cell = page.locator("#listed tbody tr").first.locator("td").first
    assert cell.get_attribute("data-label") == "Address"
    head = page.locator("#listed thead").bounding_box()
    assert head is None or head["height"] <= 1, head  # the headings move into the cards
    context.close()


# What axe checks does not depend on the roster's database: SQLite only.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("lang", ["en", "es"])
def test_every_main_page_has_no_serious_or_critical_axe_violation(
    lang: str,
    webmail: Webmail,  # noqa: F811
    browser: Browser,
    tmp_path: Path,
) -> None:
    checker = Checker(axe_source(), lang, tmp_path / "screenshots")
    ana, _bo = prepare(webmail)
    with serve(webmail.portal.app) as base:
        walk(browser, base, checker, ana)
        if lang == "en":
            on_a_phone(browser, base, checker.shots)
    print(f"screenshots: {checker.shots}")
    assert len(checker.checked) == 19, checker.checked
    report = "\n".join(str(found) for found in checker.found)
    assert not checker.found, (
        f"{len(checker.found)} serious or critical accessibility violations:\n{report}"
    )
