"""Reading a message links to the newer and the older one beside it (the keyboard's j
and k follow those links)."""

from __future__ import annotations

import re
from typing import Any

from portal.webmail.imap import Mailbox
from tests.portal_support import text
from tests.webmail_support import Webmail, mail, standby_store, webmail  # noqa: F401


def test_a_message_links_to_the_newer_and_the_older_one(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, *(mail(f"Note {n}") for n in (1, 2, 3)))
    client = webmail.client(ana)
    listing = client.get("/webmail", follow_redirects=True).get_data(as_text=True)
    links = re.findall(r'href="(/webmail/m/[^"]+)" class="open">([^<]+)<', listing)
    assert [subject for _href, subject in links] == ["Note 3", "Note 2", "Note 1"]
    by_subject = {subject: href for href, subject in links}

    middle = client.get(by_subject["Note 2"]).get_data(as_text=True)
    newer = re.search(r'rel="prev" href="([^"]+)"', middle)
    older = re.search(r'rel="next" href="([^"]+)"', middle)

    assert newer and older
    assert "Note 3" in text(client.get(newer.group(1)))
    assert "Note 1" in text(client.get(older.group(1)))
    first = client.get(by_subject["Note 3"]).get_data(as_text=True)
    assert 'rel="prev"' not in first
    assert 'rel="next"' in first


def test_messages_gone_between_counting_and_reading_show_as_none(webmail: Webmail) -> None:  # noqa: F811
    """The list page is made around the messages while the store reads them: when the
    ones counted are gone by then (moved elsewhere meanwhile), the page says the folder
    holds none, not an empty table under a count of them."""
    ana = webmail.person("ana")
    webmail.deliver(ana, mail("Going"))
    client = webmail.client(ana)
    assert "Going" in text(client.get("/webmail", follow_redirects=True))
    original = Mailbox._fetch_rows

    def moved_meanwhile(self: Mailbox, *args: Any, **kwargs: Any) -> list[dict[bytes, Any]]:
        original(self, *args, **kwargs)  # the page around them is made as always
        return []

    Mailbox._fetch_rows = moved_meanwhile  # type: ignore[method-assign]
    try:
        page = client.get("/webmail", follow_redirects=True)
    finally:
        Mailbox._fetch_rows = original  # type: ignore[method-assign]
    shown = text(page)
    assert page.status_code == 200
    assert "No messages in this folder." in shown and "No message to read." in shown
    assert "<table" not in page.get_data(as_text=True)
    assert "Inbox" in shown  # the folders are there as always
