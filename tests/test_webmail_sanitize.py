"""The webmail's HTML sanitiser against the XSS corpus, and the iframe's policy."""

import re
from html.parser import HTMLParser

import pytest

from portal.webmail.message import ParsedMessage, parse
from portal.webmail.sanitize import TAGS, clean_html, frame_document, frame_policy
from tests.webmail_corpus import CORPUS_DIR, REMOTE_HOST, corpus

CORPUS = corpus()
PART_URL = "/webmail/m/SU5CT1g/7/part/"


def cid_urls(parsed: ParsedMessage):
    """The mapping the reading view gives: a Content-ID the message has -> its part URL."""
    parts = {a.content_id: a.part for a in parsed.attachments if a.content_id}

    def cid_url(content_id: str) -> str | None:
        part = parts.get(content_id)
        return PART_URL + part if part else None

    return cid_url


class Elements(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str]]]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, [(name, value or "") for name, value in attrs]))

    handle_startendtag = handle_starttag


def elements(html: str) -> list[tuple[str, list[tuple[str, str]]]]:
    parser = Elements()
    parser.feed(html)
    parser.close()
    return parser.elements


def structure(html: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Elements with their attributes in order of name; part URLs (relative) left out."""
    return [
        (tag, sorted((n, v) for n, v in attrs if not v.startswith(PART_URL)))
        for tag, attrs in elements(html)
    ]


def clean(raw: bytes, *, allow_remote: bool) -> tuple[str, bool]:
    parsed = parse(raw)
    return clean_html(parsed.html or "", cid_url=cid_urls(parsed), allow_remote=allow_remote)


FORBIDDEN_MARKUP = ["<script", "<base", "<meta", "<form", "<svg", "<math", "<iframe", "<frame",
                    "<object", "<embed", "<link", "<style", "<input", "<button", "<area",
                    "<noscript", "<template", "<video", "<audio", "<source", "<image "]  # fmt: skip
STYLE_REFUSED = re.compile(r"url\(|expression|\\|@import|behavior|binding|javascript|position")


def assert_safe(html: str, *, allow_remote: bool) -> None:
    """What a browser would load, run or navigate to from this HTML, checked one by one."""
    lowered = html.lower()
    for markup in FORBIDDEN_MARKUP:
        assert markup not in lowered, markup
    for tag, attributes in elements(html):
        assert tag in TAGS, tag
        for name, value in attributes:
            url = re.sub(r"[\x00-\x20]", "", value).lower()
            assert not name.startswith("on"), (tag, name)
            assert not url.startswith(("javascript:", "vbscript:", "data:", "livescript:")), (
                tag,
                name,
                value,
            )
            if name == "href":
                assert tag == "a"
                assert url.startswith(("http://", "https://", "mailto:")), value
            elif name == "src":
                assert tag == "img"
                remote = url.startswith(("http://", "https://"))
                assert value.startswith(PART_URL) or (allow_remote and remote), value
            elif name == "style":
                assert not STYLE_REFUSED.search(url), value
            else:
                assert REMOTE_HOST not in value, (tag, name, value)
                assert name not in ("srcset", "background", "action", "formaction", "poster")
        if tag == "a":
            names = dict(attributes)
            assert names.get("target") == "_blank"
            assert set(names.get("rel", "").split()) >= {"noopener", "noreferrer"}


def test_corpus_has_sixty_messages_each_described():
    names = [name for name, _ in CORPUS]
    assert len(names) >= 60
    readme = (CORPUS_DIR / "README.md").read_text()
    for name in names:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize(("name", "raw"), CORPUS, ids=[name for name, _ in CORPUS])
@pytest.mark.parametrize("allow_remote", [False, True], ids=["blocked", "allowed"])
def test_corpus_message_is_made_safe(name, raw, allow_remote):
    html, _ = clean(raw, allow_remote=allow_remote)
    assert_safe(html, allow_remote=allow_remote)
    # What comes out is stable: cleaning it again keeps every element and attribute (no
    # markup that means something else once re-parsed, the ground of mutation XSS).
    again, _ = clean_html(html, cid_url=lambda cid: PART_URL + "x", allow_remote=True)
    assert structure(again) == structure(html)


def corpus_message(fragment: str) -> bytes:
    return next(raw for name, raw in CORPUS if fragment in name)


@pytest.mark.parametrize(
    "fragment",
    [
        "remote-image.eml",
        "remote-image-https",
        "multipart-related-cid",
        "alternative-hostile",
        "base64-body",
        "address-spoof",
    ],  # fmt: skip
)
def test_remote_images_blocked_and_reported_then_shown_when_allowed(fragment):
    raw = corpus_message(fragment)
    blocked_html, blocked = clean(raw, allow_remote=False)
    assert blocked
    assert REMOTE_HOST not in blocked_html
    shown_html, still_blocked = clean(raw, allow_remote=True)
    assert not still_blocked
    sources = [value for tag, attrs in elements(shown_html) for n, value in attrs if n == "src"]
    assert any(source.startswith(("http://", "https://")) for source in sources)


@pytest.mark.parametrize(
    "fragment", ["script-tag", "javascript-link", "css-url-attribute", "srcset", "iframe"]
)
def test_nothing_to_show_means_nothing_reported(fragment):
    """The "show images" offer appears only where allowing would show something."""
    assert clean(corpus_message(fragment), allow_remote=False)[1] is False


def test_cid_images_are_mapped_to_their_part():
    html, blocked = clean(corpus_message("multipart-related-cid"), allow_remote=False)
    assert f'<img src="{PART_URL}2" alt="logo">' in html
    assert blocked  # the remote image next to it


def test_cid_without_such_part_loses_its_src():
    html, _ = clean_html(
        '<img src="cid:nothere@x" alt="a"><img src="CID:%3Chere%40x%3E" alt="b">',
        cid_url=lambda cid: PART_URL + "3" if cid == "here@x" else None,
        allow_remote=False,
    )
    assert html == f'<img alt="a"><img src="{PART_URL}3" alt="b">'


def test_cid_url_may_give_a_data_url_but_a_message_may_not():
    png = "data:image/png;base64,iVBORw0KGgo="
    html, _ = clean_html(
        f'<img src="cid:a@x"><img src="{png}"><a href="{png}">x</a>',
        cid_url=lambda cid: png if cid == "a@x" else None,
        allow_remote=True,
    )
    assert structure(html) == [
        ("img", [("src", png)]),
        ("img", []),
        ("a", [("rel", "noopener noreferrer"), ("target", "_blank")]),
    ]


def test_relative_urls_never_point_into_the_portal():
    html, _ = clean_html(
        '<a href="/webmail/logout">a</a><img src="/webmail/x"><img src="../me"><a href="?x">b</a>',
        cid_url=lambda cid: None,
        allow_remote=True,
    )
    assert "/webmail" not in html
    assert "../me" not in html
    assert "?x" not in html


def test_links_open_in_a_new_tab_without_referrer():
    html, _ = clean_html(
        '<a href="https://example.org/a" target="_top">x</a> <a href="mailto:b@example.org">m</a>',
        cid_url=lambda cid: None,
        allow_remote=False,
    )
    assert html == (
        '<a href="https://example.org/a" target="_blank" rel="noopener noreferrer">x</a> '
        '<a href="mailto:b@example.org" target="_blank" rel="noopener noreferrer">m</a>'
    )


def test_formatting_survives():
    """A normal newsletter still looks like one: tables, fonts, colours, lists."""
    source = (
        '<table width="600" cellpadding="4" bgcolor="#eeeeee"><tr><td align="center" '
        'style="color: #333; font-size: 14px; position: fixed">'
        '<font face="Arial" color="red"><b>Hello</b> <i>world</i></font></td></tr></table>'
        '<ul><li>one</li></ul><ol start="3"><li>three</li></ol><blockquote>q</blockquote>'
        '<h1>Title</h1><p dir="rtl">x</p><pre>code</pre><hr><br>'
    )
    html, blocked = clean_html(source, cid_url=lambda cid: None, allow_remote=False)
    assert not blocked
    assert '<table width="600" cellpadding="4" bgcolor="#eeeeee">' in html
    assert 'style="color:#333;font-size:14px"' in html
    assert '<font face="Arial" color="red"><b>Hello</b> <i>world</i></font>' in html
    assert '<ol start="3"><li>three</li></ol>' in html
    for tag in ("<ul>", "<blockquote>", "<h1>", '<p dir="rtl">', "<pre>", "<hr>", "<br>"):
        assert tag in html


@pytest.mark.parametrize(
    "style",
    [
        "background:url(http://198.51.100.7/a)",
        "color:red;background-image:u\\72l(http://198.51.100.7/a)",
        "width:expression(alert(1))",
        "color:red;-moz-binding:url(x)",
        "color:red;behavior:url(x.htc)",
        "color:red;/**/@import 'x'",
        "position:fixed;top:0",
        "color:red;background:javascript:alert(1)",
    ],
)
def test_dangerous_style_attributes_are_dropped(style):
    html, _ = clean_html(f'<p style="{style}">x</p>', cid_url=lambda cid: None, allow_remote=True)
    assert html in ("<p>x</p>", '<p style="">x</p>')


def test_frame_policy_without_remote_images():
    policy = frame_policy(False)
    directives = {part.split()[0]: part.split()[1:] for part in policy.split("; ")}
    assert directives["default-src"] == ["'none'"]
    assert directives["img-src"] == ["'self'", "data:"]  # data: only for the view's cid: pictures
    assert directives["style-src"] == ["'unsafe-inline'"]
    assert directives["frame-ancestors"] == ["'self'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["form-action"] == ["'none'"]
    assert directives["sandbox"] == ["allow-popups", "allow-popups-to-escape-sandbox"]
    assert "script-src" not in directives


def test_frame_policy_with_remote_images():
    policy = frame_policy(True)
    assert "img-src 'self' data: https: http:" in policy
    assert "allow-scripts" not in policy and "allow-same-origin" not in policy
    assert "default-src 'none'" in policy


def test_frame_document_declares_utf8_and_no_referrer():
    document = frame_document("<p>x</p>")
    assert document.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in document
    assert '<meta name="referrer" content="no-referrer">' in document
    assert "<body><p>x</p></body>" in document
