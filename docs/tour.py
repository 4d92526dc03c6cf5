"""The README's tour: screenshots of every main page, made from the running demo.

Run by `scripts/tour`. It starts `continuity demo` in a temporary work directory on free
ports, drives the outage story in Debian's Chromium with Playwright, as the end user, the
helpdesk and the admin, and saves one picture per page in docs/tour/ (stable names,
overwritten on each run: the pictures follow the pages). Before each picture it checks
that the page shows what the tour says it shows; when one does not, it names the page and
what was missing and exits 1. The demo is stopped with SIGINT at the end, whatever
happened.

    scripts/tour              all the pictures into docs/tour/
    scripts/tour --out DIR    somewhere else (to compare with the committed ones)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import smtplib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from playwright.sync_api import (
    Browser,
    BrowserContext,
    FloatRect,
    Locator,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

from continuity.demo_process import DemoNotReady, DemoProcess, start_demo

HERE = Path(__file__).resolve().parent
SHOTS = HERE / "tour"
CHROMIUM = Path("/usr/bin/chromium")
# What Debian's Chromium needs to run headless here (as root, without a GPU or a network).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
MARGIN = 16  # pixels of page around a picture of one part of it
READY_SECONDS = 120
STOP_SECONDS = 60
TIMEOUT_MS = 20_000
# Two failed checks start the event, one good check the hand-back; with the demo's
# checks every 2 s that is a few seconds, but the machine may be busy.
EVENT_SECONDS = 90
# Faster than the Control Panel's floor of 10 s, so that the tour takes a minute, not
# several; the audit trail and the domain page still show the demo's 10 s.
PROBE_INTERVAL = "2"
DOMAIN = "acme.test"
SPANISH_USER = "carmen.diaz@sierra.test"
HELD_SUBJECT = "Signed contract needed today"
# Five added (one of them disabled in the directory: added, and marked so), two refused.
BULK_ADDRESSES = [
    "john.smith@acme.test",
    "emma.brown@acme.test",
    "maria.lopez@acme.test",
    "oliver.jones@acme.test",
    "jorge.ruiz@acme.test",
    "olivia.tailor@acme.test",
    "carla.perez@partner.example",
]
EMERGENCY_PASSWORD = "copper lantern on a rainy quay"  # noqa: S105 (a demo person's)


class TourFailed(Exception):
    """A page did not show what the tour expected: the tour stops, naming it."""


@contextmanager
def running_demo() -> Iterator[DemoProcess]:
    """`continuity demo` in a temporary work directory on free ports, until the end."""
    # Dovecot's mail user must reach the work directory: not a private temp dir.
    folder = Path(tempfile.mkdtemp(prefix="continuity-tour-"))
    folder.chmod(0o755)
    try:
        demo = start_demo(
            folder / "demo", ["--probe-interval", PROBE_INTERVAL], ready_seconds=READY_SECONDS
        )
    except DemoNotReady as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise TourFailed(str(error)) from None
    failed = True
    try:
        missing = [
            label
            for label in ("portal", "end user", "helpdesk", "admin", "password", "gateway")
            if not demo.printed.get(label)
        ]
        if missing:
            raise TourFailed(f"the demo did not print {', '.join(missing)}")
        yield demo
        failed = False
    finally:
        status = demo.stop(STOP_SECONDS)
        shutil.rmtree(folder, ignore_errors=True)
        if status == -signal.SIGKILL:
            print(f"tour: the demo did not stop in {STOP_SECONDS} s: killed", file=sys.stderr)
        print(f"tour: the demo stopped (exit status {status})")
        if failed:
            said = demo.said_since()
            if said:
                print("tour: the demo said, at the end:", file=sys.stderr)
                for line in said[-20:]:
                    print(f"    {line}", file=sys.stderr)


class Tour:
    """The browser, the demo, and the pictures taken so far."""

    def __init__(self, browser: Browser, demo: DemoProcess, out: Path) -> None:
        self.browser, self.demo, self.out = browser, demo, out
        self.base = demo.base
        self.password = demo.printed["password"]
        self.taken: list[Path] = []

    def context(self, phone: bool = False, locale: str = "en-GB") -> BrowserContext:
        """A browser profile of its own, at a desktop's or a phone's size."""
        if phone:
            context = self.browser.new_context(
                viewport=PHONE, is_mobile=True, has_touch=True, locale=locale
            )
        else:
            context = self.browser.new_context(viewport=DESKTOP, locale=locale)
        context.set_default_timeout(TIMEOUT_MS)
        return context

    def open(self, page: Page, path: str) -> None:
        """Go to a page of the portal and wait until it has loaded."""
        answer = page.goto(f"{self.base}{path}")
        if answer is None or answer.status >= 400:
            status = answer.status if answer else "no answer"
            raise TourFailed(f"{path}: the portal answered {status}")
        page.wait_for_load_state("load")

    def sign_in(self, page: Page, address: str, password: str | None = None) -> None:
        """Through the sign-in form, as a person does."""
        self.open(page, "/sign-in")
        page.fill("#address", address)
        page.fill("#password", password or self.password)
        with page.expect_navigation():
            page.locator("main form button[type=submit]").click()
        self.expect(page, "signing in as " + address, "main h1", "My Continuity")

    def expect(self, page: Page, what: str, selector: str, text: str) -> None:
        """Fail the tour, naming the page, unless ``selector`` shows ``text``."""
        try:
            expect(page.locator(selector).first).to_contain_text(text)
        except AssertionError:
            shown = _shown(page.locator(selector).first)
            raise TourFailed(
                f"{what} ({page.url}): expected {text!r} in {selector}, it shows {shown!r}"
            ) from None

    def until(self, page: Page, path: str, check: Callable[[], bool], what: str) -> None:
        """Reload a page until ``check`` holds, as a visitor pressing F5 would."""
        deadline = time.monotonic() + EVENT_SECONDS
        while True:
            self.open(page, path)
            if check():
                return
            if time.monotonic() > deadline:
                raise TourFailed(f"not within {EVENT_SECONDS} s: {what} ({page.url})")
            time.sleep(0.5)

    def shoot(
        self,
        page: Page,
        name: str,
        selector: str,
        text: str,
        element: str | None = None,
        full_page: bool = False,
    ) -> None:
        """Check that the page shows ``text`` in ``selector``, then take its picture
        (the window, the whole page, or only ``element``) into docs/tour/, named ``name``."""
        self.expect(page, name, selector, text)
        page.evaluate("document.fonts.ready")
        # No blinking caret or focus ring from the last click in the picture.
        page.evaluate("document.activeElement && document.activeElement.blur()")
        path = self.out / f"{name}.png"
        if element is None:
            page.screenshot(
                path=str(path), full_page=full_page, animations="disabled", caret="hide"
            )
        else:
            # The element with a margin of the page around it, as the eye sees it.
            part = page.locator(element).first
            part.scroll_into_view_if_needed()
            box = part.bounding_box()
            if box is None:
                raise TourFailed(f"{name} ({page.url}): {element} is not shown")
            left, top = max(0.0, box["x"] - MARGIN), max(0.0, box["y"] - MARGIN)
            clip: FloatRect = {
                "x": left,
                "y": top,
                "width": min(box["x"] + box["width"] + MARGIN, DESKTOP["width"]) - left,
                "height": box["y"] + box["height"] + MARGIN - top,
            }
            page.screenshot(path=str(path), clip=clip, animations="disabled", caret="hide")
        self.taken.append(path)
        print(f"tour: {path.name:36} {path.stat().st_size // 1024:5d} KB  {page.url}")


def _shown(locator: Locator) -> str:
    try:
        return " ".join(locator.inner_text(timeout=1000).split())[:300]
    except PlaywrightError:
        return "(nothing: the element is not on the page)"


def scroll_to(page: Page, selector: str) -> None:
    """Scroll the window so that ``selector`` starts near its top."""
    page.locator(selector).first.evaluate(
        "(e) => window.scrollBy(0, e.getBoundingClientRect().top - 16)"
    )


def outside_mail(gateway: str, to: str) -> None:
    """A message from a partner on the Internet to the gateway (the domains' MX)."""
    message = EmailMessage()
    message["From"] = "Carla Pérez <carla.perez@partner.example>"
    message["To"] = to
    message["Subject"] = HELD_SUBJECT
    message["Message-ID"] = make_msgid(domain="partner.example")
    message.set_content(
        "Hi John,\n\nCould you send me the signed contract before 5 pm? Our lawyers need"
        " it for tomorrow's filing.\n\nThanks,\nCarla\n"
    )
    host, _, port = gateway.partition(" ")[0].rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.send_message(message)


# ---------------------------------------------------------------------------------------
# The story, one person at a time
# ---------------------------------------------------------------------------------------


def visitor(tour: Tour) -> None:
    """Anyone: the sign-in page."""
    context = tour.context()
    page = context.new_page()
    tour.open(page, "/sign-in")
    tour.shoot(page, "sign-in", "main h1", "Sign in")
    context.close()


def end_user_before(tour: Tour, user: str) -> None:
    """The end user on an ordinary day: /me, the emergency password, the webmail."""
    context = tour.context()
    page = context.new_page()
    tour.sign_in(page, user)
    tour.shoot(page, "me", "#emergency", "Not set yet.")
    page.fill("#directory_password", tour.password)
    page.fill("#new_password", EMERGENCY_PASSWORD)
    page.fill("#confirmation", EMERGENCY_PASSWORD)
    with page.expect_navigation():
        page.locator("form[action$='/me/emergency-password'] button[type=submit]").click()
    tour.shoot(page, "emergency-password-set", ".flash", "Your emergency password is set.")

    page.click("#open-webmail")
    page.wait_for_load_state("load")
    tour.expect(page, "the webmail", "#state", "Your mail server is working")
    tour.shoot(page, "webmail-inbox", "table.messages", "Your order #48213 has shipped")
    page.locator("table.messages a", has_text="Quarterly figures for review").first.click()
    page.wait_for_load_state("load")
    tour.shoot(page, "webmail-message", "main", "figures")

    tour.open(page, "/webmail/compose")
    page.fill("#to", "emma.brown@acme.test")
    page.fill("#subject", "Figures for Thursday's call")
    page.fill(
        "#body",
        "Hi Emma,\n\nKaren sent the third-quarter figures; the regional totals look right"
        " to me. Shall we go through them before the call?\n\nJohn\n",
    )
    tour.shoot(page, "webmail-compose", "main", "Send")
    context.close()


def primary_goes_down(tour: Tour, admin: str) -> BrowserContext:
    """The demo page: the primary of acme.test taken down. Returns the signed-in
    context, to bring it back later."""
    context = tour.context()
    page = context.new_page()
    tour.sign_in(page, admin)
    tour.open(page, "/demo")
    page.click(f'[id="outage-{DOMAIN}"]')
    page.wait_for_load_state("load")
    tour.expect(page, "the demo page", f'[id="primary-{DOMAIN}"] .primary-state', "down")
    tour.shoot(page, "demo-outage", ".flash", "is down")
    return context


def admin_during(tour: Tour, context: BrowserContext) -> None:
    """The Control Panel while the event runs: the domains' badges, the domain's state."""
    page = context.new_page()
    tour.open(page, "/admin")
    tour.shoot(page, "control-panel-domains", "#domain-list", "In a continuity event")
    tour.open(page, f"/admin/domains/{DOMAIN}")
    tour.expect(page, "the domain overview", "#continuity-state", "In a continuity event since")
    tour.shoot(page, "domain-overview-outage", ".domain-state", "In a continuity event")
    page.close()


def end_user_during(tour: Tour, user: str) -> None:
    """The end user while the primary is down: the banner, the mail that arrives."""
    context = tour.context()
    page = context.new_page()
    tour.sign_in(page, user)
    tour.until(
        page,
        "/webmail",
        lambda: "Your mail server is down" in page.locator("#state").inner_text(),
        "the continuity event starts by itself",
    )
    outside_mail(tour.demo.printed["gateway"], user)
    tour.until(
        page,
        "/webmail",
        lambda: HELD_SUBJECT in page.locator("table.messages").inner_text(),
        "the message sent during the outage is in the standby mailbox",
    )
    tour.shoot(page, "webmail-outage", "#state", "Your mail server is down")

    # A reply from the standby webmail: handed to the primary's Sent folder later.
    tour.open(page, "/webmail/compose")
    page.fill("#to", "carla.perez@partner.example")
    page.fill("#subject", f"Re: {HELD_SUBJECT}")
    page.fill("#body", "Hi Carla,\n\nSigned and attached by 4 pm, promised.\n\nJohn\n")
    page.click("#send")
    page.wait_for_load_state("load")
    tour.expect(page, "sending from the webmail", ".flash", "Your message was sent.")
    context.close()

    # The same on a phone: one pane at a time.
    context = tour.context(phone=True)
    page = context.new_page()
    tour.sign_in(page, user, EMERGENCY_PASSWORD)
    tour.shoot(page, "phone-me", "#emergency", "Set on")
    tour.open(page, "/webmail")
    tour.shoot(page, "phone-webmail-outage", "table.messages", HELD_SUBJECT)
    page.locator("table.messages a", has_text=HELD_SUBJECT).first.click()
    page.wait_for_load_state("load")
    tour.shoot(page, "phone-webmail-message", "main", "signed contract")
    context.close()


def helpdesk(tour: Tour, staff: str, user: str) -> None:
    """The helpdesk finds the end user and issues a reset code for the emergency
    password."""
    context = tour.context()
    page = context.new_page()
    tour.sign_in(page, staff)
    tour.open(page, "/helpdesk?q=john")
    page.locator("main table a", has_text=user).first.click()
    page.wait_for_load_state("load")
    tour.shoot(page, "helpdesk-person", "#reset-code", "none that works")
    with page.expect_navigation():
        page.get_by_role("button", name="Issue a reset code").click()
    tour.shoot(page, "helpdesk-reset-code", "main", "Read it to the person")
    context.close()


def primary_comes_back(tour: Tour, context: BrowserContext) -> None:
    """Bring it back from the demo page; wait until the hand-back has ended the event."""
    page = context.new_page()
    tour.open(page, "/demo")
    page.click(f'[id="recover-{DOMAIN}"]')
    page.wait_for_load_state("load")
    tour.expect(page, "the demo page", f'[id="primary-{DOMAIN}"] .primary-state', "up")
    tour.until(
        page,
        "/demo",
        lambda: "Normal" in page.locator(f'[id="primary-{DOMAIN}"] .continuity-state').inner_text(),
        "the hand-back ends the continuity event",
    )
    context.close()


def admin(tour: Tour, staff: str, user: str) -> None:
    """The domain admin: the Control Panel, Email Live Tracking, the events, the users,
    the audit trail."""
    context = tour.context()
    page = context.new_page()
    tour.sign_in(page, staff)
    domain = f"/admin/domains/{DOMAIN}"
    tour.open(page, domain)
    tour.expect(page, "the domain overview", "#continuity-state", "Normal")
    tour.shoot(page, "mail-flow", "#mail-flow", "Mail flow", element="#mail-flow")

    tour.open(page, f"{domain}/events")
    tour.expect(page, "the continuity events", "#events tbody tr", "Continuity (automatic)")
    tour.shoot(page, "continuity-events", "#event-count", "1 continuity event")

    tour.open(page, f"{domain}/tracking")
    tour.expect(page, "Email Live Tracking", "#tracking", user)
    page.check("#filter-continuity")
    with page.expect_navigation():
        page.locator("#filters button[type=submit]").click()
    scroll_to(page, "#messages")
    tour.shoot(page, "email-live-tracking", "#tracking", "via Continuity Service")
    page.locator("#tracking tr", has_text="carla.perez@partner.example").locator("a").first.click()
    page.wait_for_load_state("load")
    tour.shoot(page, "email-live-tracking-message", "#recipients", "via Continuity Service")

    # Only selected users: a warning to confirm first, then the list, filled in bulk.
    tour.open(page, domain)
    page.check("input[name=mode][value=selected]")
    with page.expect_navigation():
        page.locator("form[action$='/coverage'] button[type=submit]").click()
    tour.shoot(page, "coverage-confirm", "main h1", "Cover only selected users")
    with page.expect_navigation():
        page.locator("main form button[type=submit].primary").click()
    tour.expect(page, "the coverage change", ".flash", "covers only selected users")
    tour.open(page, f"{domain}/add")
    page.fill("#addresses", "\n".join(BULK_ADDRESSES))
    with page.expect_navigation():
        page.locator("#bulk-form button[value=add]").click()
    scroll_to(page, "#report")
    tour.shoot(page, "add-users-report", "#report-summary", "5 done, 2 refused.")
    tour.open(page, f"{domain}?sort=address")
    scroll_to(page, "#coverage")
    tour.shoot(page, "users", "#listed", "john.smith@acme.test")

    tour.open(page, f"{domain}/audit")
    tour.shoot(page, "audit", "#audit", "Continuity Service")
    context.close()

    # The Control Panel on a phone: the domain's navigation above, rows as cards.
    context = tour.context(phone=True)
    page = context.new_page()
    tour.sign_in(page, staff)
    tour.open(page, f"{domain}/events")
    tour.shoot(page, "phone-continuity-events", "#events", "Handed back", full_page=True)
    context.close()


def health(tour: Tour) -> None:
    """The health page, for people (monitors ask for JSON)."""
    context = tour.context()
    page = context.new_page()
    tour.open(page, "/health")
    tour.shoot(page, "health", "#health-status", "Continuity is working")
    context.close()


def in_spanish(tour: Tour, staff: str) -> None:
    """The language switch: a person of sierra.test reads their mail in Spanish, and the
    admin sees sierra.test's Control Panel in Spanish."""
    context = tour.context()
    page = context.new_page()
    tour.open(page, "/sign-in")
    with page.expect_navigation():
        page.locator("form.language button[value=es]").click()
    tour.expect(page, "the language switch", "main h1", "Iniciar sesión")
    page.fill("#address", SPANISH_USER)
    page.fill("#password", tour.password)
    with page.expect_navigation():
        page.locator("main form button[type=submit]").click()
    tour.open(page, "/webmail")
    tour.expect(page, "the webmail in Spanish", "html", "Bandeja de entrada")
    tour.shoot(page, "es-webmail-inbox", "#state", "Su servidor de correo funciona")
    context.close()

    context = tour.context(locale="es-ES")
    page = context.new_page()
    tour.open(page, "/sign-in")
    tour.expect(page, "Spanish from the browser's language", "main h1", "Iniciar sesión")
    page.fill("#address", staff)
    page.fill("#password", tour.password)
    with page.expect_navigation():
        page.locator("main form button[type=submit]").click()
    tour.open(page, "/admin/domains/sierra.test")
    tour.shoot(page, "es-domain-overview", "#domain-name", "sierra.test")
    context.close()


def take_the_tour(out: Path) -> list[Path]:
    """Start the demo, walk through it, take the pictures; stop the demo."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        raise TourFailed(f"{CHROMIUM} is missing: run scripts/bootstrap as root")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with running_demo() as demo, sync_playwright() as playwright:
        print(f"tour: the demo is ready at {demo.base} ({time.monotonic() - started:.0f} s)")
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tour = Tour(browser, demo, out)
            printed = demo.printed
            user, staff, admin_address = printed["end user"], printed["helpdesk"], printed["admin"]
            visitor(tour)
            end_user_before(tour, user)
            admin_context = primary_goes_down(tour, admin_address)
            end_user_during(tour, user)
            admin_during(tour, admin_context)
            helpdesk(tour, staff, user)
            primary_comes_back(tour, admin_context)
            admin(tour, admin_address, user)
            health(tour)
            in_spanish(tour, admin_address)
        finally:
            browser.close()
    print(f"tour: took {time.monotonic() - started:.0f} s")
    return tour.taken


def _stopped(number: int, _frame: object) -> None:
    """SIGTERM: stop as Ctrl-C does, so that the demo is stopped too."""
    raise KeyboardInterrupt(signal.Signals(number).name)


def main(argv: list[str] | None = None) -> int:
    """Take the tour; 0 with every picture taken, 1 naming what went wrong."""
    parser = argparse.ArgumentParser(prog="scripts/tour", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=SHOTS, help=f"where the pictures go (default {SHOTS})"
    )
    options = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stopped)
    try:
        taken = take_the_tour(options.out)
    except KeyboardInterrupt:
        print("tour: stopped before the end", file=sys.stderr)
        return 130
    except TourFailed as failure:
        print(f"tour: failed: {failure}", file=sys.stderr)
        return 1
    except PlaywrightError as error:
        print(f"tour: failed in the browser: {error}", file=sys.stderr)
        return 1
    if options.out.resolve() == SHOTS:
        # Stable names: a picture the tour no longer takes goes, rather than lingering.
        for stale in sorted(set(SHOTS.glob("*.png")) - set(taken)):
            print(f"tour: removed {stale.name}: the tour no longer takes it")
            stale.unlink()
    total = sum(path.stat().st_size for path in taken)
    print(f"tour: {len(taken)} pictures, {total / 1_000_000:.1f} MB, in {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
