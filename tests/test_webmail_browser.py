"""The webmail in a real browser (Debian's Chromium driven by Playwright) on the real
Dovecot store and a real relay.

- The XSS corpus (tests/webmail_corpus/*.eml, hostile messages built from the webmail
  CVEs of recent years) is delivered into a mailbox and every message is opened: no
  script runs (no dialog, no console message from a script), no request leaves for
  another host, the top page never navigates away.
- A full round: sign in, open a message, reply with an attachment, find the reply in
  Sent, delete it, find it in Trash.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Request, expect

from tests.portal_support import PASSWORD
from tests.test_browser import chromium, chromium_path, serve
from tests.webmail_support import Webmail, mail, standby_store, webmail  # noqa: F401

CORPUS = Path(__file__).parent / "webmail_corpus"
TIMEOUT_MS = 20_000


def sign_in(page: Page, base_url: str, address: str) -> None:
    """Sign in through the form with the directory password."""
    page.goto(f"{base_url}/sign-in")
    page.fill("#address", address)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    assert urlsplit(page.url).path == "/me", page.url


def watched(page: Page, base_url: str) -> Iterator[list[str]]:
    """What the page did that it must not: requests to other hosts, dialogs, top-level
    navigations away from the portal, console messages (a running script's trace)."""
    found: list[str] = []
    origin = urlsplit(base_url).netloc

    def request(req: Request) -> None:
        target = urlsplit(req.url)
        if target.scheme in ("http", "https", "ws", "wss", "ftp") and target.netloc != origin:
            found.append(f"request to {req.url}")

    page.on("request", request)
    page.on("dialog", lambda dialog: (found.append(f"dialog {dialog.message}"), dialog.dismiss()))
    page.on(
        "framenavigated",
        lambda frame: (
            found.append(f"top navigated to {frame.url}")
            if frame == page.main_frame and urlsplit(frame.url).netloc not in (origin, "")
            else None
        ),
    )
    page.on(
        "console",
        lambda message: (
            found.append(f"console {message.type}: {message.text}")
            if message.type in ("log", "info", "warning")
            and "Content Security Policy" not in message.text
            else None
        ),
    )
    yield found


# What the browser shows of a message does not depend on the roster's database: these
# run on SQLite only (the full round, which sends and audits, runs on both).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_message_of_the_xss_corpus_runs_a_script_or_reaches_another_host(
    webmail: Webmail,  # noqa: F811
) -> None:
    ana = webmail.person("ana")
    corpus = sorted(CORPUS.glob("*.eml"))
    assert len(corpus) >= 60, "the corpus holds at least 60 hostile messages"
    webmail.deliver(ana, *(path.read_bytes() for path in corpus))

    with serve(webmail.portal.app) as base_url, chromium(chromium_path()) as browser:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        sign_in(page, base_url, ana)
        for found in watched(page, base_url):
            hrefs: list[str] = []
            listing = f"{base_url}/webmail"
            while listing:
                page.goto(listing)
                links = page.locator("table.messages a.open")
                hrefs += [str(links.nth(i).get_attribute("href")) for i in range(links.count())]
                older = page.locator("a[rel=next]")
                listing = f"{base_url}{older.get_attribute('href')}" if older.count() else ""
            assert len(hrefs) == len(corpus)
            for href in hrefs:
                page.goto(f"{base_url}{href}")
                # The frame has loaded (or there is none): its scripts had their chance.
                page.wait_for_load_state("load")
            assert found == []


def test_a_full_round_read_reply_with_an_attachment_sent_delete_trash(
    webmail: Webmail,  # noqa: F811
    tmp_path: Path,
) -> None:
    ana = webmail.person("ana")
    webmail.deliver(ana, mail("Lunch on Friday?", "Shall we meet at noon?\n"))
    attachment = tmp_path / "agenda.txt"
    attachment.write_text("12:00 lunch\n", encoding="utf-8")

    with serve(webmail.portal.app) as base_url, chromium(chromium_path()) as browser:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        sign_in(page, base_url, ana)
        page.click("#open-webmail")
        page.click("text=Lunch on Friday?")
        expect(page.locator("pre.body")).to_contain_text("Shall we meet at noon?")
        page.click("#reply")
        expect(page.locator("#to")).to_have_value('"Carla Pérez" <carla@sender.test>')
        page.fill("#body", "Yes, noon is fine.\n")
        page.set_input_files("#attachments", str(attachment))
        page.click("#send")
        expect(page.locator(".flash")).to_contain_text("Your message was sent.")

        (received,) = webmail.relay.envelopes
        assert received.rcpt_tos == ["carla@sender.test"]
        assert b"agenda.txt" in received.original_content
        page.click("nav.folders >> text=Sent")
        page.click("text=Re: Lunch on Friday?")
        expect(page.locator("pre.body")).to_contain_text("Yes, noon is fine.")
        expect(page.locator("section.attachments")).to_contain_text("agenda.txt")
        page.click("#delete")
        expect(page.locator(".flash")).to_contain_text("moved to Trash")
        page.click("nav.folders >> text=Trash")
        expect(page.locator("table.messages")).to_contain_text("Re: Lunch on Friday?")


def _with_picture(subject: str) -> bytes:
    """An HTML message showing an inline (cid:) picture of 8x8 pixels."""
    import io
    import struct
    import zlib
    from email import message_from_bytes, policy

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xcc\x33\x33" * 8 for _ in range(8))
    png = io.BytesIO()
    png.write(b"\x89PNG\r\n\x1a\n")
    png.write(chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)))
    png.write(chunk(b"IDAT", zlib.compress(rows)))
    png.write(chunk(b"IEND", b""))
    message = message_from_bytes(
        mail(subject, "Plain.\n", html='<p>Our logo:</p><img id="logo" src="cid:logo@x">'),
        policy=policy.default,
    )
    part = next(p for p in message.walk() if p.get_content_type() == "text/html")
    part.add_related(png.getvalue(), maintype="image", subtype="png", cid="<logo@x>")
    return message.as_bytes()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_inline_pictures_show_in_the_sandboxed_frame(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, _with_picture("Our new logo"))

    with serve(webmail.portal.app) as base_url, chromium(chromium_path()) as browser:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        sign_in(page, base_url, ana)
        page.goto(f"{base_url}/webmail")
        page.click("text=Our new logo")
        frame = page.frame_locator("iframe.body")
        expect(frame.locator("p")).to_have_text("Our logo:")
        logo = frame.locator("img")
        expect(logo).to_be_visible()
        assert logo.evaluate("img => img.complete && img.naturalWidth") == 8


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_webmail_works_on_a_phone_and_by_keyboard(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(
        ana, *(mail(f"Notice number {n} with a fairly long subject line") for n in (1, 2))
    )

    with serve(webmail.portal.app) as base_url, chromium(chromium_path()) as browser:
        phone = browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True)
        phone.set_default_timeout(TIMEOUT_MS)
        sign_in(phone, base_url, ana)
        phone.goto(f"{base_url}/webmail")
        wide = phone.evaluate("document.documentElement.scrollWidth")
        assert wide <= 375, f"the list is {wide} px wide on a 375 px screen"
        expect(
            phone.locator("text=Notice number 2 with a fairly long subject line")
        ).to_be_in_viewport()
        phone.click("text=Notice number 2 with a fairly long subject line")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 375
        phone.close()

        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        sign_in(page, base_url, ana)
        page.goto(f"{base_url}/webmail")
        page.keyboard.press("j")  # the newest message
        page.keyboard.press("j")  # the one before it
        with page.expect_navigation():
            page.keyboard.press("Enter")
        expect(page.locator("h1.subject")).to_have_text(
            "Notice number 1 with a fairly long subject line"
        )
        with page.expect_navigation():
            page.keyboard.press("k")  # the newer one
        expect(page.locator("h1.subject")).to_have_text(
            "Notice number 2 with a fairly long subject line"
        )
        with page.expect_navigation():
            page.keyboard.press("r")
        expect(page.locator("#subject")).to_have_value(
            "Re: Notice number 2 with a fairly long subject line"
        )
