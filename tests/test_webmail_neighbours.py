"""Reading a message links to the newer and the older one beside it (the keyboard's j
and k follow those links)."""

from __future__ import annotations

import re

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
