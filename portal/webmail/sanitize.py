"""Making a message's HTML safe to show, and the policy of the iframe that shows it.

Two walls, each enough on its own for scripts: nh3 (ammonia) keeps an allow-list of
formatting tags and attributes, and the iframe's response carries a sandbox without
scripts and a Content-Security-Policy with `default-src 'none'`. What reaches the network
is decided here: links only to http(s) and mailto, images only from the message's own
parts (cid:) unless the person asked for remote images, no CSS that can load anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote

import nh3

TAGS = {
    "a", "abbr", "acronym", "address", "b", "bdi", "bdo", "big", "blockquote", "br",
    "caption", "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn",
    "div", "dl", "dt", "em", "figcaption", "figure", "font", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "rp", "rt",
    "ruby", "s", "samp", "small", "span", "strike", "strong", "sub", "summary", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var",
    "wbr",
}  # fmt: skip
# Removed with everything inside them: their content is code, or markup that is parsed
# differently from the rest of the page (the ground of mutation XSS).
DROPPED_WITH_CONTENT = {
    "script", "style", "title", "noscript", "template", "iframe", "frame", "frameset",
    "noframes", "noembed", "object", "embed", "applet", "svg", "math", "xmp", "textarea",
    "select", "plaintext", "listing", "head",
}  # fmt: skip
_TABLE_CELL = {"width", "height", "align", "valign", "bgcolor", "colspan", "rowspan", "nowrap"}
ATTRIBUTES = {
    "*": {"dir", "lang", "title", "align", "style"},
    "a": {"href", "name"},
    "img": {"src", "alt", "width", "height", "border", "hspace", "vspace"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "summary"},
    "tr": {"valign", "bgcolor", "height"},
    "td": _TABLE_CELL,
    "th": _TABLE_CELL | {"scope"},
    "col": {"span", "width", "valign"},
    "colgroup": {"span", "width", "valign"},
    "tbody": {"valign"},
    "thead": {"valign"},
    "tfoot": {"valign"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "time": {"datetime"},
    "bdo": {"dir"},
    "details": {"open"},
}
# CSS properties none of which can load anything or cover the page: no shorthand that
# takes an image (background, list-style, border-image), no position, no content.
STYLE_PROPERTIES = {
    "color", "background-color", "font-family", "font-size", "font-style", "font-weight",
    "font-variant", "text-align", "text-decoration", "text-indent", "text-transform",
    "line-height", "letter-spacing", "word-spacing", "white-space", "word-wrap",
    "word-break", "overflow-wrap", "vertical-align", "direction", "unicode-bidi",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-collapse", "border-spacing",
    "border-radius", "width", "height", "max-width", "min-width", "max-height",
    "min-height", "display", "float", "clear", "list-style-type", "table-layout",
    "text-overflow", "caption-side", "empty-cells",
}  # fmt: skip
# A style attribute containing any of these is dropped whole, whatever its properties:
# loading (url, image-set, @import), script (expression, behavior, -moz-binding,
# javascript:), and CSS escapes and comments, which spell any of them past a filter.
# (position and the rest are left to the allow-list above.)
_STYLE_REFUSED = re.compile(
    r"\\|url\s*\(|image-set|image\s*\(|@import|expression|behavior|-moz-binding|javascript:"
    r"|/\*",
    re.IGNORECASE,
)
_LINK_SCHEMES = ("http://", "https://", "mailto:")
_REMOTE = re.compile(r"(https?:)?//", re.IGNORECASE)
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))


def _url(value: str) -> str:
    """A URL attribute as the URL parser reads it: C0 and spaces trimmed, tabs and newlines gone."""
    return re.sub(r"[\t\n\r]", "", value.strip(_C0_AND_SPACE))


def clean_html(
    html: str, *, cid_url: Callable[[str], str | None], allow_remote: bool
) -> tuple[str, bool]:
    """Sanitise a message's HTML; returns (safe body HTML, True if remote images were blocked).

    `cid_url` maps a Content-ID the message has to the URL of that part (a same-origin
    path, or a data: URL) and returns None for an id the message does not have.
    """
    blocked = False
    approved: set[str] = set()

    def attribute_filter(tag: str, attribute: str, value: str) -> str | None:
        nonlocal blocked
        if attribute == "style":
            return None if _STYLE_REFUSED.search(value) else value
        if tag == "a" and attribute == "href":
            url = _url(value)
            return url if url.lower().startswith(_LINK_SCHEMES) else None
        if tag == "img" and attribute == "src":
            url = _url(value)
            if url[:4].lower() == "cid:":
                mapped = cid_url(_content_id(url[4:]))
                if mapped:
                    approved.add(mapped)
                return mapped
            if _REMOTE.match(url):
                if allow_remote:
                    return "https:" + url if url.startswith("//") else url
                blocked = True
            return None
        return value

    def relative_url(url: str) -> str | None:
        # Only the same-origin URLs cid_url gave: a message's own relative URL would
        # point into the portal from inside the frame.
        return url if url in approved else None

    try:
        cleaned = nh3.clean(
            html,
            tags=TAGS,
            clean_content_tags=DROPPED_WITH_CONTENT,
            attributes=ATTRIBUTES,
            attribute_filter=attribute_filter,
            strip_comments=True,
            link_rel="noopener noreferrer",
            set_tag_attribute_values={"a": {"target": "_blank"}},
            # data: only ever passes as what cid_url returned: attribute_filter has
            # already refused every other data: URL.
            url_schemes={"http", "https", "mailto", "cid", "data"},
            filter_style_properties=STYLE_PROPERTIES,
            url_relative=relative_url,
        )
    except Exception:  # nh3 refuses nothing we know of; show nothing rather than risk it
        return "", blocked
    return cleaned, blocked


def _content_id(value: str) -> str:
    """The Content-ID a cid: URL names (RFC 2392: URL-encoded, no angle brackets)."""
    return unquote(value).strip().strip("<>")


def frame_policy(allow_remote: bool) -> str:
    """The Content-Security-Policy of the iframe document that shows a message's HTML."""
    # data: for the message's own inline (cid:) pictures, which the view inlines.
    images = "img-src 'self' data: https: http:" if allow_remote else "img-src 'self' data:"
    return (
        f"default-src 'none'; {images}; style-src 'unsafe-inline'; frame-ancestors 'self'; "
        "base-uri 'none'; form-action 'none'; "
        "sandbox allow-popups allow-popups-to-escape-sandbox"
    )


def frame_document(body: str) -> str:
    """The whole iframe document around a cleaned body: UTF-8, no referrer, images fit."""
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer">'
        "<style>body{margin:0;padding:8px;font-family:sans-serif;overflow-wrap:anywhere}"
        "img{max-width:100%;height:auto}</style>"
        f"</head><body>{body}</body></html>"
    )
