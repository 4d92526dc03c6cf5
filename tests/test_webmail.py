"""The standby webmail against the real Dovecot store and a real relay: folders, the
message list, reading, actions, search, composing, and who may open it."""

from __future__ import annotations

import re

from tests.portal_support import text
from tests.webmail_support import Webmail, mail, standby_store, webmail  # noqa: F401


def test_a_covered_person_reads_their_standby_mail(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, mail("Quarterly figures", "The numbers are in.\n"))
    client = webmail.client(ana)

    inbox = client.get("/webmail", follow_redirects=True)
    page = text(inbox)

    assert inbox.status_code == 200, page
    assert "Quarterly figures" in page
    assert "Carla Pérez" in page
    link = re.search(r'href="(/webmail/m/[^"]+)" class="open"', inbox.get_data(as_text=True))
    assert link
    opened = client.get(link.group(1))
    assert opened.status_code == 200
    assert "The numbers are in." in text(opened)
