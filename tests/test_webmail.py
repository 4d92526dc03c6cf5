"""The standby webmail against the real Dovecot store and a real relay: folders, the
message list, reading, actions, search, composing, and the pool of IMAP connections."""

from __future__ import annotations

import html
import re
import secrets
from email import message_from_bytes, policy
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from portal.webmail.imap import folder_token
from tests.portal_support import csrf_token, text
from tests.webmail_support import Webmail, mail, standby_store, webmail  # noqa: F401

INBOX = folder_token("INBOX")
TRASH = folder_token("Trash")
SENT = folder_token("Sent")
DRAFTS = folder_token("Drafts")

# A PNG of one pixel.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a1c0f46d0000000049454e44ae426082"
)


def raw(
    subject: str,
    *,
    sender: str = "carla@sender.test",
    to: str = "someone@acme.test",
    date: str = "Mon, 30 Nov 2026 08:00:00 +0000",
    body: str = "Hello.\n",
    headers: str = "",
) -> bytes:
    """A plain-text message written out byte for byte (for what EmailMessage would fix)."""
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@sender.test>\r\nMIME-Version: 1.0\r\n"
        f"{headers or 'Content-Type: text/plain; charset=utf-8'}\r\n\r\n{body}"
    ).encode("utf-8", "surrogateescape")


def page_of(response: TestResponse) -> str:
    assert response.status_code == 200, (response.status_code, text(response)[:2000])
    return response.get_data(as_text=True)


def subjects(page: str) -> list[str]:
    """The subjects of a message list, top to bottom."""
    return [html.unescape(s) for s in re.findall(r'class="open">([^<]*)</a>', page)]


def message_links(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'<a href="([^"]+)" class="open">', page)]


def uid_of(page: str, subject: str) -> int:
    """The UID of the list line showing ``subject``."""
    for uid, shown in re.findall(
        r'data-uid="(\d+)">.*?class="open">([^<]*)</a>', page, flags=re.DOTALL
    ):
        if html.unescape(shown) == subject:
            return int(uid)
    raise AssertionError(f"{subject!r} not listed")


def act(client: FlaskClient, token: str, action: str, uids: list[int], **more: str) -> Any:
    listing = page_of(client.get(f"/webmail/f/{token}"))
    data: dict[str, Any] = {"csrf_token": csrf_token(listing), "action": action, "uid": uids}
    data.update(more)
    return client.post(f"/webmail/f/{token}/act", data=data)


def compose_form(client: FlaskClient, query: str = "") -> tuple[str, str]:
    shown = page_of(client.get(f"/webmail/compose{query}"))
    return shown, csrf_token(shown)


def send(client: FlaskClient, query: str = "", **fields: Any) -> TestResponse:
    """Fill the compose form (opened with ``query``) and press Send (or ``action``)."""
    shown, token = compose_form(client, query)
    data: dict[str, Any] = {"csrf_token": token, "action": "send"}
    for name in ("mode", "source"):
        found = re.search(rf'name="{name}" value="([^"]*)"', shown)
        if found:
            data[name] = html.unescape(found.group(1))
    data.update(fields)
    return client.post("/webmail/compose", data=data, content_type="multipart/form-data")


# -- folders and the message list ---------------------------------------------------


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


def test_folders_paging_sorting_and_markers(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    # 55 messages in arrival order m00..m54; dates run backwards so that arrival and
    # date orders differ; senders and sizes in yet other orders.
    messages = []
    for n in range(55):
        messages.append(
            raw(
                f"m{n:02d}",
                sender=f"{chr(ord('a') + (n * 7) % 26)}x{n:02d}@sender.test",
                date=f"Mon, 30 Nov 2026 {(60 - n) // 60:02d}:{(60 - n) % 60:02d}:00 +0000",
                body="x" * ((n * 37) % 55 * 100) + "\n",
            )
        )
    webmail.deliver(ana, *messages)
    webmail.deliver(
        ana,
        mail("with a file", attachments=(("report.pdf", "application/pdf", b"%PDF-1.4 x"),)),
    )
    webmail.deliver(ana, raw("flagged one"))
    with webmail.imap(ana) as imap:
        imap.select_folder("INBOX")
        flagged = imap.search(["SUBJECT", "flagged one"])
        imap.add_flags(flagged, [b"\\Flagged", b"\\Seen"])
        imap.create_folder("Projects")
    client = webmail.client(ana)

    first = page_of(client.get(f"/webmail/f/{INBOX}"))
    # Folders: the four special ones, in that order, and the person's own, with counts.
    nav = first[first.index('class="folders"') : first.index('class="pane"')]
    names = [html.unescape(n) for n in re.findall(r'<span class="name">([^<]*)</span>', nav)]
    assert names == ["Inbox", "Sent", "Drafts", "Trash", "Projects"]
    assert re.search(r'Inbox</span>\s*<span class="unread"[^>]*>56</span>', nav), nav
    # Newest first, 50 a page, every line a real link.
    shown = subjects(first)
    assert shown[:3] == ["flagged one", "with a file", "m54"]
    assert len(shown) == 50 and shown[-1] == "m07"
    links = message_links(first)
    assert len(links) == 50 and all(link.startswith(f"/webmail/m/{INBOX}/") for link in links)
    assert "Page 1 of 2 · 57 messages" in text(client.get(f"/webmail/f/{INBOX}"))
    older = re.search(r'<a rel="next" href="([^"]+)"', first)
    assert older and not re.search(r'rel="prev"', first)
    second = page_of(client.get(html.unescape(older.group(1))))
    assert subjects(second) == [f"m{n:02d}" for n in range(6, -1, -1)]
    assert re.search(r'<a rel="prev" href="', second) and 'rel="next"' not in second
    # Markers: unread, flagged, attachment.
    rows = {
        html.unescape(s): marks
        for marks, s in re.findall(
            r'<td class="marks">(.*?)</td>.*?class="open">([^<]*)</a>', first, flags=re.DOTALL
        )
    }
    assert "Flagged" in rows["flagged one"] and "Unread" not in rows["flagged one"]
    assert "Has attachments" in rows["with a file"] and "Unread" in rows["with a file"]
    assert "Has attachments" not in rows["m54"] and "Flagged" not in rows["m54"]

    def everything(sort: str, order: str) -> list[str]:
        got = []
        for number in (1, 2):
            got += subjects(
                page_of(client.get(f"/webmail/f/{INBOX}?sort={sort}&order={order}&page={number}"))
            )
        return [s for s in got if s.startswith("m")]

    by_number = {f"m{n:02d}": n for n in range(55)}
    # Date: m54 has the earliest Date header, m00 the latest.
    assert everything("date", "desc") == [f"m{n:02d}" for n in range(55)]
    assert everything("date", "asc") == [f"m{n:02d}" for n in range(54, -1, -1)]
    senders = everything("from", "asc")
    assert senders == sorted(by_number, key=lambda s: chr(ord("a") + (by_number[s] * 7) % 26) + s)
    assert everything("subject", "desc") == [f"m{n:02d}" for n in range(54, -1, -1)]
    sizes = everything("size", "asc")
    weights = [(by_number[s] * 37) % 55 for s in sizes]
    assert weights == sorted(weights)
    # The sort links on the page lead to those orders.
    assert f'href="/webmail/f/{INBOX}?sort=subject&amp;order=desc"' in first


def test_search_finds_by_field_and_refuses_command_text(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(
        ana,
        raw("Budget 2027", sender="Boris <boris@sender.test>", body="The harbour crane.\n"),
        raw("Lunch", sender="lucia@sender.test", to="team@acme.test", body="Noon?\n"),
    )
    client = webmail.client(ana)

    def found(query: str, field: str) -> list[str]:
        return subjects(
            page_of(client.get(f"/webmail/f/{INBOX}", query_string={"q": query, "in": field}))
        )

    assert found("boris", "from") == ["Budget 2027"]
    assert found("lunch", "from") == []
    assert found("team@acme.test", "to") == ["Lunch"]
    assert found("team", "subject") == []
    assert found("budget", "subject") == ["Budget 2027"]
    assert found("crane", "text") == ["Budget 2027"]
    assert found("nothing-like-this", "text") == []
    assert found('quo"te\\', "text") == []

    for payload in (
        "x\r\nA1 DELETE INBOX",
        "x\nA1 CREATE Injected",
        "x\rA1 CREATE Injected",
        "x\x00A1 CREATE Injected",
    ):
        answer = client.get(
            f"/webmail/f/{INBOX}",
            query_string={"q": payload, "in": "subject"},
            follow_redirects=True,
        )
        assert "That search cannot be made" in text(answer), payload
    with webmail.imap(ana) as imap:
        names = [name for _flags, _sep, name in imap.list_folders()]
        assert "Injected" not in names
        assert imap.select_folder("INBOX", readonly=True)[b"EXISTS"] == 2


# -- reading ------------------------------------------------------------------------


def test_reading_decodes_charsets_and_marks_read(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    latin = raw(
        "=?ISO-8859-1?Q?Caf=E9_cr=E8me?=",
        sender="=?ISO-8859-1?Q?Jos=E9_M=FCller?= <jose@sender.test>",
        body="Un caf\xe9 cr\xe8me, s'il vous pla\xeet.\r\n".encode("latin-1").decode(
            "utf-8", "surrogateescape"
        ),
        headers="Content-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: 8bit",
    )
    windows = raw(
        "=?UTF-8?B?w5xiZXIgZGVuIFByZWlz?=",
        body="Price: \x8010 \x93quoted\x94 \x96 dash\r\n".encode("latin-1").decode(
            "utf-8", "surrogateescape"
        ),
        headers="Content-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: 8bit",
    )
    webmail.deliver(ana, latin, windows)
    client = webmail.client(ana)
    listing = page_of(client.get(f"/webmail/f/{INBOX}"))
    assert subjects(listing) == ["Über den Preis", "Café crème"]
    assert "José Müller" in html.unescape(listing)

    opened = page_of(client.get(f"/webmail/m/{INBOX}/{uid_of(listing, 'Café crème')}"))
    assert "Un café crème, s'il vous plaît." in html.unescape(opened)
    assert "José Müller &lt;jose@sender.test&gt;" in opened
    opened = page_of(client.get(f"/webmail/m/{INBOX}/{uid_of(listing, 'Über den Preis')}"))
    assert "Price: €10 “quoted” – dash" in html.unescape(opened)

    with webmail.imap(ana) as imap:
        imap.select_folder("INBOX", readonly=True)
        assert len(imap.search(["SEEN"])) == 2
    nav = page_of(client.get(f"/webmail/f/{INBOX}"))
    assert 'class="unread"' not in nav.split('class="pane"')[0]


def test_html_is_framed_with_its_own_policy_and_remote_images_wait(
    webmail: Webmail,  # noqa: F811
) -> None:
    ana = webmail.person("ana")
    message = message_from_bytes(
        mail(
            "Newsletter",
            "Plain version.\n",
            html=(
                "<p>Hello <b>there</b></p>"
                '<img src="https://tracker.example/pixel.gif" alt="tracker">'
                '<img src="cid:logo@x" alt="logo">'
                "<script>alert(1)</script>"
            ),
        ),
        policy=policy.default,
    )
    html_part = next(p for p in message.walk() if p.get_content_type() == "text/html")
    html_part.add_related(PIXEL, maintype="image", subtype="png", cid="<logo@x>")
    webmail.deliver(ana, message.as_bytes())
    client = webmail.client(ana)
    uid = uid_of(page_of(client.get(f"/webmail/f/{INBOX}")), "Newsletter")

    reading = page_of(client.get(f"/webmail/m/{INBOX}/{uid}"))
    frame = re.search(r'<iframe[^>]*sandbox="([^"]*)"[^>]*src="([^"]+)"', reading, re.DOTALL)
    assert frame, reading
    assert "allow-scripts" not in frame.group(1) and "allow-same-origin" not in frame.group(1)
    assert html.unescape(frame.group(2)) == f"/webmail/m/{INBOX}/{uid}/body"
    assert 'id="show-images"' in reading
    assert "tracker.example" not in reading

    body = client.get(f"/webmail/m/{INBOX}/{uid}/body")
    document = page_of(body)
    policy_header = body.headers["Content-Security-Policy"]
    assert "sandbox" in policy_header
    assert "default-src 'none'" in policy_header
    assert "frame-ancestors 'self'" in policy_header
    assert body.headers.get("X-Frame-Options", "") != "DENY"
    assert body.headers["Referrer-Policy"] == "no-referrer"
    assert "Hello <b>there</b>" in document
    assert "<script" not in document and "alert(1)" not in document
    assert "tracker.example" not in document
    assert "https:" not in policy_header.split("img-src")[1].split(";")[0]
    # The cid: image is a same-origin URL that answers with the picture.
    inline = re.search(r'<img[^>]*src="(/webmail/m/[^"]+)"', document)
    assert inline, document
    picture = client.get(html.unescape(inline.group(1)))
    assert picture.status_code == 200
    assert picture.mimetype == "image/png" and picture.data == PIXEL
    assert picture.headers["X-Content-Type-Options"] == "nosniff"

    allowed = client.get(f"/webmail/m/{INBOX}/{uid}/body?images=1")
    assert 'src="https://tracker.example/pixel.gif"' in page_of(allowed)
    assert "https:" in allowed.headers["Content-Security-Policy"].split("img-src")[1]
    assert "default-src 'none'" in allowed.headers["Content-Security-Policy"]


def test_attachments_download_safely(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(
        ana,
        mail(
            "Files",
            attachments=(
                ("../../etc/passwd", "text/plain", b"root:x:0:0\n"),
                ('evil".html', "text/html", b"<script>alert(1)</script>"),
                ("photo.png", "image/png", PIXEL),
                ("drawing.svg", "image/svg+xml", b"<svg onload='alert(1)'/>"),
            ),
        ),
    )
    client = webmail.client(ana)
    uid = uid_of(page_of(client.get(f"/webmail/f/{INBOX}")), "Files")
    reading = page_of(client.get(f"/webmail/m/{INBOX}/{uid}"))
    listed = re.findall(r'<li><a href="([^"]+)" download>([^<]*)</a>', reading)
    assert len(listed) == 4, reading
    for href, name in listed:
        download = client.get(html.unescape(href))
        assert download.status_code == 200
        disposition = download.headers["Content-Disposition"]
        assert disposition.startswith("attachment;"), disposition
        assert download.headers["X-Content-Type-Options"] == "nosniff"
        assert download.mimetype == "application/octet-stream"
        shown = re.search(r'filename="([^"]*)"', disposition)
        assert shown, disposition
        assert "/" not in shown.group(1) and "\\" not in shown.group(1)
        assert not shown.group(1).startswith(".")
        assert disposition.count('"') == 2, disposition
        assert "/" not in html.unescape(name)
    # Even asked inline, only PNG (and the other plain raster types) are shown inline.
    hrefs = [html.unescape(h) for h, _n in listed]
    png = next(h for h, n in zip(hrefs, listed, strict=True) if n[1] == "photo.png")
    svg = next(h for h, n in zip(hrefs, listed, strict=True) if n[1] == "drawing.svg")
    assert client.get(png + "?inline=1").mimetype == "image/png"
    forced = client.get(svg + "?inline=1")
    assert forced.mimetype == "application/octet-stream"
    assert forced.headers["Content-Disposition"].startswith("attachment;")
    # Part paths that are not parts: 404.
    for bad in ("9", "1.9.9", "x", "..%2f..", "1" * 50):
        assert client.get(f"/webmail/m/{INBOX}/{uid}/part/{bad}").status_code == 404, bad
