"""The standby webmail against the real Dovecot store and a real relay: folders, the
message list, reading, actions, search, composing, and the pool of IMAP connections."""

from __future__ import annotations

import base64
import html
import io
import re
import secrets
from email import message_from_bytes, policy
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import TestResponse, encode_multipart

from continuity.localslapd import free_port
from portal.webmail import outbox
from portal.webmail.imap import folder_token
from roster.models import AuditEvent
from tests.portal_support import Portal, csrf_token, text
from tests.servers.dovecot import DovecotServer
from tests.webmail_support import (  # noqa: F401
    Webmail,
    mail,
    standby_store,
    webmail,
    webmail_world,
)

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
    # What a browser posts: the form's fields as filled, the kept attachments ticked.
    for name in ("mode", "source", "to", "cc", "bcc", "subject"):
        found = re.search(rf'name="{name}" value="([^"]*)"', shown)
        if found:
            data[name] = html.unescape(found.group(1))
    body = re.search(r'<textarea id="body" name="body"[^>]*>(.*?)</textarea>', shown, re.DOTALL)
    data["body"] = html.unescape(body.group(1)) if body else ""
    data["keep"] = re.findall(r'name="keep" value="([^"]+)" checked', shown)
    data.update(fields)
    # Encoded here, in memory (the test client would spool a large body to a temporary
    # file that a refused request leaves open).
    boundary = f"----form{secrets.token_hex(8)}"
    files = MultiDict()
    for name, value in data.items():
        for one in value if isinstance(value, list) else [value]:
            if isinstance(one, tuple):
                stream, filename = one
                one = FileStorage(stream, filename=filename)
            files.add(name, one)
    _ctype, body = encode_multipart(files, boundary)
    return client.post(
        "/webmail/compose",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )


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
    with webmail.imap(ana) as imap:  # made in the store when missing
        stored = {name for _flags, _sep, name in imap.list_folders()}
    assert {"INBOX", "Sent", "Drafts", "Trash", "Projects"} <= stored
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
    # Arrival order (the default) is not the Date header's: the page claims no column's
    # order then, and the Date column's once sorted by it.
    assert "aria-sort" not in first
    by_date = client.get(f"/webmail/f/{INBOX}?sort=date&order=desc").get_data(as_text=True)
    assert by_date.count('aria-sort="descending"') == 1


def test_search_finds_by_field_and_refuses_command_text(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(
        ana,
        raw("Budget 2027", sender="Boris <boris@sender.test>", body="The harbour crane.\n"),
        raw("Lunch", sender="lucia@sender.test", to="team@acme.test", body="Noon?\n"),
        raw("Minutes", headers="Cc: board@acme.test\r\nContent-Type: text/plain"),
    )
    client = webmail.client(ana)

    def found(query: str, field: str) -> list[str]:
        return subjects(
            page_of(client.get(f"/webmail/f/{INBOX}", query_string={"q": query, "in": field}))
        )

    assert found("boris", "from") == ["Budget 2027"]
    assert found("lunch", "from") == []
    assert found("team@acme.test", "to") == ["Lunch"]
    assert found("board@acme.test", "to") == ["Minutes"]  # a recipient in Cc too
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
        assert imap.select_folder("INBOX", readonly=True)[b"EXISTS"] == 3


def test_search_text_with_imap_syntax_in_it_is_searched_as_text(webmail: Webmail) -> None:  # noqa: F811
    """Braces, parentheses and quotes are text like any other: "{1}" sent as it is would
    announce a literal the store waits for (the page hung, then failed), "(" would
    break the command."""
    ana = webmail.person("ana")
    webmail.deliver(
        ana,
        raw("Invoice {1} of {5+}", body="Amounts.\n"),
        raw("Plan (draft)", body="Steps.\n"),
        raw('Say "when"', body="Quotes.\n"),
        raw("Informe del ñandú", body="Aves.\n"),
    )
    client = webmail.client(ana)
    for query, sort, expected in (
        ("{1}", "arrival", ["Invoice {1} of {5+}"]),
        ("{5+}", "subject", ["Invoice {1} of {5+}"]),
        ("(draft)", "arrival", ["Plan (draft)"]),
        ("(", "subject", ["Plan (draft)"]),
        ('"when"', "arrival", ['Say "when"']),
        ("ñandú", "arrival", ["Informe del ñandú"]),
        ("{0}", "arrival", []),
    ):
        answer = client.get(
            f"/webmail/f/{INBOX}", query_string={"q": query, "in": "subject", "sort": sort}
        )
        assert answer.status_code == 200, query
        assert subjects(page_of(answer)) == expected, query


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
                '<img src="cid:drawing@x" alt="drawing">'
                "<script>alert(1)</script>"
            ),
        ),
        policy=policy.default,
    )
    html_part = next(p for p in message.walk() if p.get_content_type() == "text/html")
    html_part.add_related(PIXEL, maintype="image", subtype="png", cid="<logo@x>")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(2)"/>'
    html_part.add_related(svg, maintype="image", subtype="svg+xml", cid="<drawing@x>")
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
    # The cid: picture is in the document itself (a request from the sandboxed frame
    # would carry no session cookie); a cid: part that is no plain picture is not.
    inline = re.search(r'<img[^>]*src="data:image/png;base64,([^"]+)"[^>]*alt="logo"', document)
    assert inline, document
    assert base64.b64decode(inline.group(1)) == PIXEL
    assert "image/svg" not in document and "onload" not in document
    assert "data:" in policy_header.split("img-src")[1].split(";")[0]

    shown = page_of(client.get(f"/webmail/m/{INBOX}/{uid}?images=1"))
    assert f'src="/webmail/m/{INBOX}/{uid}/body?images=1"' in shown
    assert 'id="show-images"' not in shown
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


# -- actions ------------------------------------------------------------------------


def folder_subjects(webmail: Webmail, address: str, name: str) -> list[str]:  # noqa: F811
    """The subjects in one of a person's folders, as the store has them."""
    return sorted(
        str(message_from_bytes(m, policy=policy.default)["Subject"])
        for m in webmail.folder(address, name)
    )


def test_actions_on_one_message_and_on_a_selection(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, raw("one"), raw("two"), raw("three"), raw("four"))
    with webmail.imap(ana) as imap:
        imap.create_folder("Projects")
    client = webmail.client(ana)
    listing = page_of(client.get(f"/webmail/f/{INBOX}"))
    uid = {s: uid_of(listing, s) for s in ("one", "two", "three", "four")}

    def flags(subject: str) -> set[bytes]:
        with webmail.imap(ana) as imap:
            imap.select_folder("INBOX", readonly=True)
            return set(imap.get_flags([uid[subject]])[uid[subject]])

    # One message, from its reading page (it comes back to that page).
    reading = page_of(client.get(f"/webmail/m/{INBOX}/{uid['one']}"))
    assert b"\\Seen" in flags("one")
    answer = client.post(
        f"/webmail/f/{INBOX}/act",
        data={
            "csrf_token": csrf_token(reading),
            "action": "unread",
            "uid": uid["one"],
            "back": f"/webmail/m/{INBOX}/{uid['one']}",
        },
    )
    assert answer.status_code == 302
    assert answer.headers["Location"].endswith(f"/webmail/m/{INBOX}/{uid['one']}")
    assert b"\\Seen" not in flags("one")
    # An outside "back" address is not followed, nor one that climbs out of the folder.
    for elsewhere in (
        "https://evil.example/",
        "//evil.example/",
        f"/webmail/f/{INBOX}/../../../me",
        f"/webmail/m/{INBOX}/..%2F..%2F/x",
        f"/webmail/m/{INBOX}/%2e%2e/%2E%2E/%2e%2e/me",
        f"/webmail/f/{INBOX}\\evil",
    ):
        answer = act(client, INBOX, "read", [uid["one"]], back=elsewhere)
        assert answer.headers["Location"].endswith(f"/webmail/f/{INBOX}"), elsewhere
    searched = f"/webmail/f/{INBOX}?q=a%2Fb&in=subject"
    answer = act(client, INBOX, "read", [uid["one"]], back=searched)
    assert answer.headers["Location"].endswith(searched)
    # Without the form's CSRF token, nothing changes.
    refused = client.post(f"/webmail/f/{INBOX}/act", data={"action": "read", "uid": uid["one"]})
    assert refused.status_code == 400
    assert b"\\Seen" in flags("one")
    # A selection.
    assert act(client, INBOX, "flag", [uid["two"], uid["three"]]).status_code == 302
    assert b"\\Flagged" in flags("two") and b"\\Flagged" in flags("three")
    assert b"\\Flagged" not in flags("four")
    act(client, INBOX, "unflag", [uid["three"]])
    assert b"\\Flagged" not in flags("three")
    act(client, INBOX, "read", [uid["two"], uid["three"], uid["four"]])
    assert all(b"\\Seen" in flags(s) for s in uid)
    act(client, INBOX, "unread", [uid["two"], uid["four"]])
    assert [b"\\Seen" in flags(s) for s in ("one", "two", "three", "four")] == [
        True,
        False,
        True,
        False,
    ]
    # Move to a folder of the person's own.
    moved = act(client, INBOX, "move", [uid["four"]], target=folder_token("Projects"))
    assert "1 message(s) moved." in text(client.get(moved.headers["Location"]))
    assert folder_subjects(webmail, ana, "Projects") == ["four"]
    # A move to a folder that does not exist is refused, and nothing moves.
    nowhere = folder_token("Nowhere")
    assert act(client, INBOX, "move", [uid["one"]], target=nowhere).status_code == 404
    assert act(client, INBOX, "move", [uid["one"]], target="../x").status_code == 404
    # Delete: to Trash.
    deleted = act(client, INBOX, "delete", [uid["one"], uid["two"]])
    assert "2 message(s) moved to Trash." in text(client.get(deleted.headers["Location"]))
    assert folder_subjects(webmail, ana, "INBOX") == ["three"]
    assert folder_subjects(webmail, ana, "Trash") == ["one", "two"]
    # Delete in Trash: gone for good.
    trash = page_of(client.get(f"/webmail/f/{TRASH}"))
    assert "Delete for good" in trash and "Empty Trash" in trash
    gone = act(client, TRASH, "delete", [uid_of(trash, "one")])
    assert "1 message(s) removed for good." in text(client.get(gone.headers["Location"]))
    assert folder_subjects(webmail, ana, "Trash") == ["two"]
    # What was removed is not shown again (the portal had read it before).
    assert client.get(f"/webmail/m/{TRASH}/{uid_of(trash, 'one')}").status_code == 404
    assert client.get(f"/webmail/m/{INBOX}/{uid['one']}").status_code == 404
    # Empty Trash.
    act(client, INBOX, "delete", [uid["three"]])
    trash = page_of(client.get(f"/webmail/f/{TRASH}"))
    emptied = client.post("/webmail/trash/empty", data={"csrf_token": csrf_token(trash)})
    assert "Trash is empty." in text(client.get(emptied.headers["Location"]))
    assert folder_subjects(webmail, ana, "Trash") == []
    assert folder_subjects(webmail, ana, "INBOX") == []
    assert folder_subjects(webmail, ana, "Projects") == ["four"]
    emptied = client.post("/webmail/trash/empty", data={"csrf_token": csrf_token(trash)})
    assert "Trash is empty." in text(client.get(emptied.headers["Location"]))
    # Nothing selected, an unknown action: told, or refused.
    assert "Select at least one message first." in text(
        client.get(act(client, INBOX, "read", []).headers["Location"])
    )
    assert act(client, INBOX, "explode", [1]).status_code == 400


# -- composing ----------------------------------------------------------------------


def relayed(webmail: Webmail) -> list[tuple[str, list[str], Any]]:  # noqa: F811
    """What the relay received: (envelope sender, recipients, parsed message)."""
    return [
        (e.mail_from, list(e.rcpt_tos), message_from_bytes(e.content, policy=policy.default))
        for e in webmail.relay.envelopes
    ]


def test_sending_goes_once_as_the_person_with_bcc_kept_private(
    webmail: Webmail,  # noqa: F811
) -> None:
    ana = webmail.person("ana", display_name="Ana Pérez")
    client = webmail.client(ana)

    answer = send(
        client,
        to="Bob <bob@far.test>",
        cc="carol@far.test",
        bcc="dan@far.test",
        subject="Meeting moved",
        body="Thursday instead.\n",
        sender="boss@acme.test",
        From="boss@acme.test",
    )
    assert answer.status_code == 302, text(answer)
    assert "Your message was sent." in text(client.get(answer.headers["Location"]))
    (got,) = relayed(webmail)
    envelope_from, recipients, message = got
    assert envelope_from == ana
    assert sorted(recipients) == ["bob@far.test", "carol@far.test", "dan@far.test"]
    assert message["From"].addresses[0].addr_spec == ana
    assert len(message.get_all("From")) == 1
    assert "Bcc" not in message and b"dan@far.test" not in webmail.relay.envelopes[0].content
    assert message["Subject"] == "Meeting moved"
    assert "Thursday instead." in message.get_body(("plain",)).get_content()

    (copy,) = webmail.folder(ana, "Sent")
    filed = message_from_bytes(copy, policy=policy.default)
    assert filed["Subject"] == "Meeting moved"
    assert "dan@far.test" in str(filed["Bcc"])
    sent_list = page_of(client.get(f"/webmail/f/{SENT}"))
    assert subjects(sent_list) == ["Meeting moved"]
    assert re.search(r'class="sender"><a [^>]*>Bob</a>', sent_list), sent_list
    assert ("webmail_sent", ana) in webmail.portal.audit_actions(ana)
    with Session(webmail.portal.engine) as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == "webmail_sent"))
        (row,) = [(r.actor, r.after) for r in rows]
    assert row == (ana, {"recipients": 3})  # how many, never to whom or what
    stored = webmail.portal.dump()
    assert "Meeting moved" not in stored and "dan@far.test" not in stored


def test_reply_reply_all_and_forward_are_prefilled(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    original = message_from_bytes(
        mail(
            "Plans",
            "Shall we go?\n",
            to=f"{ana}, Eve <eve@far.test>",
            attachments=(("map.pdf", "application/pdf", b"%PDF-1.4 the map"),),
        ),
        policy=policy.default,
    )
    original["Cc"] = "Finn <finn@far.test>"
    webmail.deliver(ana, original.as_bytes())
    client = webmail.client(ana)
    uid = uid_of(page_of(client.get(f"/webmail/f/{INBOX}")), "Plans")
    source = f"{INBOX}/{uid}"

    def value(page: str, name: str) -> str:
        found = re.search(rf'<input id="{name}" name="{name}" value="([^"]*)"', page)
        assert found, name
        return html.unescape(found.group(1))

    reply, _token = compose_form(client, f"?mode=reply&source={source}")
    assert "carla@sender.test" in value(reply, "to")
    assert value(reply, "cc") == ""
    assert value(reply, "subject") == "Re: Plans"
    assert "> Shall we go?" in html.unescape(reply)

    everyone, _token = compose_form(client, f"?mode=reply_all&source={source}")
    to_and_cc = value(everyone, "to") + ", " + value(everyone, "cc")
    assert "carla@sender.test" in to_and_cc
    assert "eve@far.test" in to_and_cc and "finn@far.test" in to_and_cc
    assert ana not in to_and_cc

    forward, _token = compose_form(client, f"?mode=forward&source={source}")
    assert value(forward, "subject") == "Fwd: Plans"
    assert value(forward, "to") == ""
    kept = re.findall(r'name="keep" value="([^"]+)" checked> map.pdf', forward)
    assert kept, forward
    answer = send(client, f"?mode=forward&source={source}", to="gus@far.test", keep=kept)
    assert answer.status_code == 302, text(answer)
    (got,) = relayed(webmail)
    attached = [
        (part.get_filename(), part.get_content())
        for part in got[2].iter_attachments()
        if part.get_filename()
    ]
    assert ("map.pdf", b"%PDF-1.4 the map") in attached
    assert "Shall we go?" in got[2].get_body(("plain",)).get_content()


def test_a_reply_to_an_encoded_newline_adds_no_header(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(
        ana,
        raw(
            "=?UTF-8?Q?x=0ABcc:_evil@x.test?=",
            # "Carla\r\nBcc: evil2@x.test" (base64: a Q-encoded word may not hold the
            # ":" and "@" in an address's display name).
            sender="=?UTF-8?B?Q2FybGENCkJjYzogZXZpbDJAeC50ZXN0?= <carla@sender.test>",
            to=ana,
            headers="Cc: =?UTF-8?Q?Dora=0AX-Evil=3D1?= <dora@far.test>\r\n"
            "Content-Type: text/plain; charset=utf-8",
        ),
    )
    client = webmail.client(ana)
    listing = page_of(client.get(f"/webmail/f/{INBOX}"))
    uid = int(re.findall(r'data-uid="(\d+)"', listing)[0])

    answer = send(client, f"?mode=reply_all&source={INBOX}/{uid}", body="No.\n")
    assert answer.status_code == 302, text(answer)
    (envelope,) = webmail.relay.envelopes
    assert sorted(envelope.rcpt_tos) == ["carla@sender.test", "dora@far.test"]
    head = envelope.content.split(b"\r\n\r\n", 1)[0]
    names = [
        line.split(b":", 1)[0].lower()
        for line in head.split(b"\r\n")
        if not line.startswith((b" ", b"\t"))
    ]
    assert b"bcc" not in names and b"x-evil" not in names
    assert sorted(names) == sorted(set(names))  # no header twice
    sent = message_from_bytes(envelope.content, policy=policy.default)
    for name in ("Subject", "To", "Cc"):
        assert "\n" not in str(sent[name]) and "\r" not in str(sent[name]), name
    assert sent["Subject"].startswith("Re: x") and "Bcc: evil@x.test" in sent["Subject"]
    assert [a.addr_spec for a in sent["To"].addresses] == ["carla@sender.test"]
    assert [a.addr_spec for a in sent["Cc"].addresses] == ["dora@far.test"]
    # The message answered is marked so.
    assert "Answered" in page_of(client.get(f"/webmail/f/{INBOX}"))
    with webmail.imap(ana) as imap:
        imap.select_folder("INBOX", readonly=True)
        assert b"\\Answered" in imap.get_flags([uid])[uid]


def test_invalid_address_is_refused_and_nothing_sent(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    client = webmail.client(ana)
    answer = send(client, to="bob@far.test, not an address", subject="Hi", body="x")
    assert answer.status_code == 400
    assert "is not an email address" in text(answer)
    assert 'aria-invalid="true"' in answer.get_data(as_text=True)
    assert 'value="Hi"' in answer.get_data(as_text=True)  # what was typed is kept
    answer = send(client, to="bob@far.test\r\nBcc: evil@x.test", subject="Hi", body="x")
    assert answer.status_code == 400
    answer = send(client, to="", subject="Hi", body="x")
    assert answer.status_code == 400 and "at least one recipient." in text(answer)
    assert webmail.relay.envelopes == []
    assert webmail.folder(ana, "Sent") == []


def test_a_relay_that_is_down_keeps_the_message_in_drafts(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    tables: dict[str, dict[str, Any]] = {
        "standby": {
            "imap": f"{webmail.store.imap[0]}:{webmail.store.imap[1]}",
            "master_user": webmail.store.master_user,
            "master_password_file": str(webmail.store.master_password_file),
        },
    }
    webmail.portal.app = webmail.portal.build(
        tables={**tables, "outbound": {"relay": f"127.0.0.1:{free_port()}"}}
    )
    client = webmail.client(ana)
    answer = send(
        client,
        to="bob@far.test",
        subject="Still here",
        body="Written during the outage.\n",
        attachments=(io.BytesIO(b"notes"), "notes.txt"),
    )
    assert answer.status_code == 400
    page = text(answer)
    assert "the outgoing mail server cannot be reached" in page
    assert "It is kept in Drafts" in page
    (draft,) = webmail.folder(ana, "Drafts")
    saved = message_from_bytes(draft, policy=policy.default)
    assert saved["Subject"] == "Still here"
    assert "Written during the outage." in saved.get_body(("plain",)).get_content()
    assert [p.get_filename() for p in saved.iter_attachments()] == ["notes.txt"]
    assert webmail.folder(ana, "Sent") == []
    assert "webmail_sent" not in [a for a, _who in webmail.portal.audit_actions(ana)]
    # The form shown again is the draft's: once the relay is back, Send sends it with
    # its attachment and the draft leaves Drafts.
    source = re.search(rf'name="source" value="({DRAFTS}/\d+)"', answer.get_data(as_text=True))
    assert source
    webmail.portal.app.extensions["webmail_pool"].close()
    webmail.portal.app = webmail.portal.build(
        tables={**tables, "outbound": {"relay": f"127.0.0.1:{webmail.relay_port}"}}
    )
    client = webmail.client(ana)
    answer = send(client, f"?mode=draft&source={source.group(1)}")
    assert answer.status_code == 302, text(answer)
    (envelope,) = webmail.relay.envelopes
    sent = message_from_bytes(envelope.content, policy=policy.default)
    assert sent["Subject"] == "Still here" and envelope.rcpt_tos == ["bob@far.test"]
    assert [(p.get_filename(), p.get_content()) for p in sent.iter_attachments()] == [
        ("notes.txt", "notes")
    ]
    assert webmail.folder(ana, "Drafts") == []
    assert len(webmail.folder(ana, "Sent")) == 1


def test_a_recipient_the_relay_refuses_is_reported(webmail: Webmail) -> None:  # noqa: F811
    async def handle_rcpt(
        _server: Any, _session: Any, envelope: Any, address: str, _options: Any
    ) -> str:
        if address == "gone@far.test":
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    webmail.relay.handle_RCPT = handle_rcpt  # type: ignore[attr-defined]
    ana = webmail.person("ana")
    client = webmail.client(ana)
    answer = send(client, to="bob@far.test, gone@far.test", cc="carol@far.test", subject="Hi")
    assert answer.status_code == 200
    page = text(answer)
    assert "Your message was sent, but not to everyone" in page
    assert re.search(r"gone@far.test</td><td>550 .*No such user", page), page
    assert "bob@far.test, carol@far.test" in page
    (envelope,) = webmail.relay.envelopes
    assert sorted(envelope.rcpt_tos) == ["bob@far.test", "carol@far.test"]
    assert len(webmail.folder(ana, "Sent")) == 1
    # Everyone refused: nothing sent, kept in Drafts.
    answer = send(client, to="gone@far.test", subject="Again")
    assert answer.status_code == 400
    assert "No recipient was accepted" in text(answer) and "550" in text(answer)
    assert len(webmail.relay.envelopes) == 1
    assert len(webmail.folder(ana, "Drafts")) == 1


def test_a_draft_is_saved_and_resumed_with_its_attachments(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    client = webmail.client(ana)
    answer = send(
        client,
        action="draft",
        to="bob@far.test",
        bcc="quiet@far.test",
        subject="Half written",
        body="First line.\n",
        attachments=(io.BytesIO(b"%PDF-1.4 plan"), "plan.pdf"),
    )
    assert answer.status_code == 302, text(answer)
    resume = answer.headers["Location"]
    assert "The draft is saved in Drafts." in text(client.get(resume))
    drafts = page_of(client.get(f"/webmail/f/{DRAFTS}"))
    assert subjects(drafts) == ["Half written"]
    (link,) = message_links(drafts)
    assert link.startswith("/webmail/compose?mode=draft")
    form, _token = compose_form(client, link.removeprefix("/webmail/compose"))
    assert 'value="bob@far.test"' in form and 'value="quiet@far.test"' in form
    assert "First line." in form
    assert re.search(r'name="keep" value="[^"]+" checked> plan.pdf', form), form
    # Edited and saved again: one draft, the newer.
    query = link.removeprefix("/webmail/compose")
    answer = send(client, query, action="draft", body="Both lines.\n")
    assert answer.status_code == 302
    (saved,) = webmail.folder(ana, "Drafts")
    assert b"Both lines." in saved and b"%PDF-1.4 plan" not in saved  # base64
    # Sent from the draft: the attachment goes, the draft leaves Drafts.
    latest = message_links(page_of(client.get(f"/webmail/f/{DRAFTS}")))[0]
    answer = send(client, latest.removeprefix("/webmail/compose"))
    assert answer.status_code == 302, text(answer)
    (envelope,) = webmail.relay.envelopes
    sent = message_from_bytes(envelope.content, policy=policy.default)
    assert [(p.get_filename(), p.get_content()) for p in sent.iter_attachments()] == [
        ("plan.pdf", b"%PDF-1.4 plan")
    ]
    assert sorted(envelope.rcpt_tos) == ["bob@far.test", "quiet@far.test"]
    assert webmail.folder(ana, "Drafts") == []
    assert len(webmail.folder(ana, "Sent")) == 1
    # A received message "resumed" as a draft (an address typed by hand) is sent as a
    # new message, and stays where it was.
    webmail.deliver(ana, raw("Received"))
    received = uid_of(page_of(client.get(f"/webmail/f/{INBOX}")), "Received")
    answer = send(client, f"?mode=draft&source={INBOX}/{received}", to="bob@far.test")
    assert answer.status_code == 302, text(answer)
    assert len(webmail.relay.envelopes) == 2
    assert folder_subjects(webmail, ana, "INBOX") == ["Received"]


def test_upload_limit_and_sending_limit(portal: Portal, standby_store: DovecotServer) -> None:  # noqa: F811
    world = webmail_world(portal, standby_store, max_upload_mb=1, recipients_per_hour=3)
    limited = next(world)
    try:
        ana = limited.person("ana")
        client = limited.client(ana)
        answer = send(
            client,
            to="bob@far.test",
            subject="Big",
            attachments=(io.BytesIO(b"x" * (1024 * 1024 + 10)), "big.bin"),
        )
        assert answer.status_code in (400, 413)
        assert re.search(r"at most 1 MB", text(answer)), text(answer)
        assert limited.relay.envelopes == []
        # Well over the limit, the request itself is refused before it is read.
        answer = send(
            client,
            to="bob@far.test",
            subject="Bigger",
            attachments=(io.BytesIO(b"x" * (3 * 1024 * 1024)), "bigger.bin"),
        )
        assert answer.status_code == 413
        assert "larger than the 1 MB a message may carry" in text(answer)
        assert limited.relay.envelopes == []

        assert send(client, to="a@far.test, b@far.test", subject="1").status_code == 302
        assert send(client, to="c@far.test", subject="2").status_code == 302
        answer = send(client, to="d@far.test", subject="Fourth", body="Kept.\n")
        assert answer.status_code == 400
        assert "You may send to 3 recipients an hour; 0 are left for now." in text(answer)
        assert "Your message is kept in Drafts." in text(answer)
        assert len(limited.relay.envelopes) == 2
        (draft,) = limited.folder(ana, "Drafts")
        assert b"Fourth" in draft and b"Kept." in draft
        assert len(limited.portal.audit_actions(ana)) >= 2
    finally:
        for _rest in world:  # the fixture's own clean-up: the pool closed, the relay stopped
            pass


def sent_audited(world: Webmail, address: str) -> int:
    """How many sends of ``address`` the audit (and so the hourly limit) counts."""
    return [action for action, _actor in world.portal.audit_actions(address)].count("webmail_sent")


def test_sends_at_the_same_moment_share_the_hourly_limit(
    portal: Portal,
    standby_store: DovecotServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second send that comes while the first is still with the relay finds the
    first one counted: a stolen emergency password cannot pass the limit by sending
    in parallel. A send that the relay did not take counts for nothing."""
    world = webmail_world(portal, standby_store, recipients_per_hour=3)
    limited = next(world)
    try:
        ana = limited.person("ana")
        first, second = limited.client(ana), limited.client(ana)
        relay_send = outbox.send
        meanwhile: list[str] = []

        def with_the_relay(*args: Any, **kwargs: Any) -> Any:
            if not meanwhile:  # the second send arrives while the first is with the relay
                meanwhile.append(text(send(second, to="x@far.test", subject="Second")))
            return relay_send(*args, **kwargs)

        monkeypatch.setattr(outbox, "send", with_the_relay)
        answer = send(first, to="a@far.test, b@far.test, c@far.test", subject="First")
        assert answer.status_code == 302, text(answer)
        assert "You may send to 3 recipients an hour; 0 are left for now." in meanwhile[0]
        assert [sorted(e.rcpt_tos) for e in limited.relay.envelopes] == [
            ["a@far.test", "b@far.test", "c@far.test"]
        ]
        assert sent_audited(limited, ana) == 1
    finally:
        for _rest in world:
            pass


def test_a_send_the_relay_refused_counts_for_nothing(
    portal: Portal,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    world = webmail_world(portal, standby_store, recipients_per_hour=2)
    limited = next(world)
    try:
        ana = limited.person("ana")
        client = limited.client(ana)
        limited.relay.reply = "554 5.7.1 Not today"
        answer = send(client, to="a@far.test, b@far.test", subject="Refused")
        assert "The outgoing mail server refused the message" in text(answer)
        assert sent_audited(limited, ana) == 0
        limited.relay.reply = None
        assert send(client, to="a@far.test, b@far.test", subject="Again").status_code == 302
        assert sent_audited(limited, ana) == 1
    finally:
        for _rest in world:
            pass


def test_a_store_that_does_not_answer_gives_a_clear_page(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.portal.app = webmail.portal.build(
        tables={
            "standby": {
                "imap": f"127.0.0.1:{free_port()}",
                "master_user": webmail.store.master_user,
                "master_password_file": str(webmail.store.master_password_file),
            },
        }
    )
    client = webmail.client(ana)
    for url in (f"/webmail/f/{INBOX}", f"/webmail/m/{INBOX}/1", "/webmail/compose"):
        answer = client.get(url)
        assert answer.status_code == 503, url
        assert "Your standby mailbox cannot be opened right now" in text(answer)


def test_sending_as_an_alias_and_the_sent_folder_by_recipient(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana", aliases=("sales-desk@acme.test",))
    client = webmail.client(ana)
    form, _token = compose_form(client)
    assert re.findall(r"<option[^>]*>([^<]+)</option>", form) == [ana, "sales-desk@acme.test"]
    for to, subject in (("Zoe <zoe@far.test>", "first"), ("adam@far.test", "second")):
        answer = send(client, to=to, subject=subject, sender="sales-desk@acme.test")
        assert answer.status_code == 302, text(answer)
    # Someone else's address is never used, whatever is posted.
    answer = send(client, to="bea@far.test", subject="third", sender="boss@acme.test")
    assert answer.status_code == 302
    senders = [(e.mail_from, relayed_from(e.content)) for e in webmail.relay.envelopes]
    assert senders == [
        ("sales-desk@acme.test", "sales-desk@acme.test"),
        ("sales-desk@acme.test", "sales-desk@acme.test"),
        (ana, ana),
    ]
    sent = page_of(client.get(f"/webmail/f/{SENT}"))
    assert f'href="/webmail/f/{SENT}?sort=to&amp;order=desc"' in sent
    by_recipient = subjects(page_of(client.get(f"/webmail/f/{SENT}?sort=to&order=asc")))
    assert by_recipient == ["second", "third", "first"]


def relayed_from(content: bytes) -> str:
    addresses = message_from_bytes(content, policy=policy.default)["From"].addresses
    return str(addresses[0].addr_spec)


def test_folders_with_unusual_names_open_and_take_messages(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, raw("one"))
    names = ['a"b\\c', "100% sure", "star*", "Ünïcødé & Co", "{3}"]
    with webmail.imap(ana) as imap:
        for name in names:
            imap.create_folder(name)
    client = webmail.client(ana)
    listing = page_of(client.get(f"/webmail/f/{INBOX}"))
    for name in names:
        assert f'href="/webmail/f/{folder_token(name)}"' in listing, name
        assert client.get(f"/webmail/f/{folder_token(name)}").status_code == 200, name
    odd = folder_token('a"b\\c')
    moved = act(client, INBOX, "move", [uid_of(listing, "one")], target=odd)
    assert moved.status_code == 302
    assert subjects(page_of(client.get(f"/webmail/f/{odd}"))) == ["one"]
    assert folder_subjects(webmail, ana, 'a"b\\c') == ["one"]


def test_what_was_written_survives_its_source_going_away(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, raw("Answer me"))
    client = webmail.client(ana)
    uid = uid_of(page_of(client.get(f"/webmail/f/{INBOX}")), "Answer me")
    shown, token = compose_form(client, f"?mode=reply&source={INBOX}/{uid}")
    # The message answered is deleted (in another tab) while the reply is written.
    act(client, INBOX, "delete", [uid])
    answer = client.post(
        "/webmail/compose",
        data={
            "csrf_token": token,
            "action": "send",
            "mode": "reply",
            "source": f"{INBOX}/{uid}",
            "to": "carla@sender.test",
            "subject": "Re: Answer me",
            "body": "A long and careful answer.\n",
        },
    )
    assert answer.status_code == 400
    assert "is no longer there" in text(answer) and "kept in Drafts" in text(answer)
    assert webmail.relay.envelopes == []
    (draft,) = webmail.folder(ana, "Drafts")
    assert b"A long and careful answer." in draft
