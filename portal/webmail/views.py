"""The webmail's pages: folders, the message list, reading, actions, composing."""

from __future__ import annotations

import base64
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    get_template_attribute,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_wtf.csrf import generate_csrf
from imapclient.exceptions import IMAPClientError  # type: ignore[import-untyped]
from markupsafe import Markup, escape

from portal.i18n import template_translations
from portal.request_scope import close_db
from portal.webmail import bp
from portal.webmail.access import current_access, webmail_user
from portal.webmail.imap import (
    BadRequest,
    Folder,
    Mailbox,
    Page,
    StorePool,
    StoreUnavailable,
    checked_uid,
    checked_uids,
    folder_from_token,
    folder_token,
    settings_from,
)
from portal.webmail.message import parse, part_bytes
from portal.webmail.rows import folder_rows
from portal.webmail.sanitize import clean_html, frame_document, frame_policy
from roster.config import ConfigError

log = logging.getLogger("continuity.portal.webmail")
T = TypeVar("T")

POOL = "webmail_pool"
RAW_CACHE = "webmail_raw_cache"
CACHE_BYTES = 64 * 1024 * 1024
CACHE_ONE_MAX = 8 * 1024 * 1024
INLINE_IMAGES = {"image/png", "image/gif", "image/jpeg", "image/webp"}
INLINE_IMAGE_MAX = 2 * 1024 * 1024  # larger inline pictures stay attachments
SORTS = ("arrival", "date", "from", "to", "subject", "size")


# -- the store, per process ---------------------------------------------------------


def pool() -> StorePool:
    """This process's pool of IMAP connections (made at first use)."""
    found = current_app.extensions.get(POOL)
    if found is None:
        with _pool_lock:
            found = current_app.extensions.get(POOL)
            if found is None:
                found = StorePool(settings_from(current_app.config["CONTINUITY"]))
                current_app.extensions[POOL] = found
    return found


_pool_lock = threading.Lock()


class RawCache:
    """Messages' bytes by (address, folder, UIDVALIDITY, UID), bounded in bytes: the
    reading page, its HTML frame and its images read the same message once."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple[str, str, int, int], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int, int]) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, str, int, int], raw: bytes) -> None:
        if len(raw) > CACHE_ONE_MAX:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = raw
            self._size += len(raw)
            while self._size > self.limit:
                _key, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)


def raw_cache() -> RawCache:
    found = current_app.extensions.get(RAW_CACHE)
    if found is None:
        found = current_app.extensions.setdefault(RAW_CACHE, RawCache())
    return found  # type: ignore[no-any-return]


GREETING = "webmail_greeting"


@bp.before_request
def _greet_early() -> None:
    """A request of a person with no idle connection starts opening one at once: the
    store greets it (and, off loopback, negotiates TLS) while the portal reads the
    session and asks who may open the webmail. Signing in waits for that answer."""
    user = session.get("_user_id")
    if request.endpoint == "webmail.index" or not isinstance(user, str):
        return
    try:
        greeting = pool().greet(user)
    except ConfigError:
        return  # on_store says so
    if greeting is not None:
        g.setdefault(GREETING, greeting)


@bp.after_request
def _after_greeting(response: Response) -> Response:
    """A greeting the request did not use is closed. When the request did not succeed
    either (refused, sent to sign in: a session that has ended), the session's next
    requests open nothing ahead, until one reaches the mailbox."""
    greeting = g.pop(GREETING, None)
    if greeting is not None and greeting.discard() and response.status_code >= 300:
        user = session.get("_user_id")
        if isinstance(user, str):
            pool().learn(user, None)
    return response


@bp.teardown_request
def _drop_greeting(_error: BaseException | None) -> None:
    greeting = g.pop(GREETING, None)
    if greeting is not None:
        greeting.discard()


def on_store(work: Callable[[Mailbox], T], *, page: bool = False) -> T:
    """Run ``work`` on the signed-in person's mailbox; 404 for a name or number the
    mailbox does not have, a page saying so when the store cannot be reached.
    ``page``: the request renders a page afterwards (see ``_ready_to_render``)."""
    address = current_access().person.mail  # type: ignore[union-attr]
    if page and g.get(GREETING) is not None:
        _ready_to_render()
        # Nothing of the roster is needed until the page is made (the access checked,
        # the principal loaded): its connection goes back now, not after the store.
        close_db()
    try:
        store = pool()
        user = session.get("_user_id")
        if isinstance(user, str):
            store.learn(user, address)
        return store.run(address, work, g.get(GREETING))
    except BadRequest:
        abort(404)
    except ConfigError as error:
        log.error("webmail: %s", error)
        raise StoreDown() from None
    except StoreUnavailable as error:
        log.warning("webmail: %s", error)
        raise StoreDown() from None


def _ready_to_render() -> None:
    """What a page's template asks for first in a request (the CSRF token, signed; the
    catalogue of the person's language), made while a new connection to the store is
    being greeted: the request would only wait for the store meanwhile (the first
    page of a visit waits some milliseconds), and the page comes out that much sooner."""
    generate_csrf()
    template_translations()


class StoreDown(Exception):
    """The standby store cannot be reached now (a page says so)."""


@bp.errorhandler(StoreDown)
def store_down(_error: StoreDown) -> Any:
    return render_template("webmail/unavailable.html", access=current_access()), 503


def _folder(token: str) -> str:
    try:
        return folder_from_token(token)
    except BadRequest:
        abort(404)


def _uid(value: str) -> int:
    try:
        return checked_uid(value)
    except BadRequest:
        abort(404)


def _read(box: Mailbox, folder: str, uid: int) -> bytes:
    """A message's bytes, from the cache when this process read it already."""
    state = box.select(folder)
    key = (box.address, folder, int(state.get(b"UIDVALIDITY", 0)), uid)
    cache = raw_cache()
    raw = cache.get(key)
    if raw is None:
        raw, _flags = box.fetch(folder, uid)
        cache.put(key, raw)
    elif uid not in box.client.fetch([uid], [b"UID"]):
        # Deleted or moved since it was read: the copy kept here is not shown again.
        raise BadRequest("uid")
    return raw


def _chrome(box: Mailbox, current: str) -> dict[str, Any]:
    """What every webmail page shows around its content: the folders and the state."""
    return _chrome_of(box.folders(), current)


def _chrome_of(folders: list[Folder], current: str) -> dict[str, Any]:
    """``_chrome`` with the folders given."""
    return {
        "folders": folders,
        "current_folder": current,
        "access": current_access(),
        "folder_token": folder_token,
        "current": next((f for f in folders if f.name == current), None),
        "wide_page": True,
    }


# -- pages --------------------------------------------------------------------------


@bp.get("")
@webmail_user
def index() -> Any:
    """The webmail's front door: the inbox."""
    return redirect(url_for("webmail.folder", token=folder_token("INBOX")))


@bp.get("/f/<token>")
@webmail_user
def folder(token: str) -> Any:
    """A folder's messages, 50 a page."""
    name = _folder(token)
    sort = request.args.get("sort", "arrival")
    if sort not in SORTS:
        sort = "arrival"
    reverse = request.args.get("order", "desc") != "asc"
    query = request.args.get("q", "")
    field = request.args.get("in", "text")
    asked = request.args.get("page", "1")
    page_number = int(asked) if asked.isdigit() and len(asked) < 7 else 1
    if (
        len(query) > 200
        or any(ord(c) < 32 for c in query)
        or field
        not in (
            "text",
            "from",
            "to",
            "subject",
        )
    ):
        flash(_("That search cannot be made: use shorter text on one line."), "error")
        return redirect(url_for("webmail.folder", token=token))

    # The first page of a visit waits for the store three times (the folder opened, its
    # messages read, and less for its count): the page is made around what is still to
    # come while it waits, and each part, once known, goes where the page left room
    # for it. The rooms are random tokens, which no message and no folder name can hold;
    # the messages go in last, so nothing of theirs is looked at again.
    badge_hole, list_hole, note_hole, rows_hole = (secrets.token_hex(16) for _hole in range(4))
    shown = {"token": token, "sort": sort, "reverse": reverse, "query": query, "field": field}
    made: dict[str, Any] = {}

    def work(box: Mailbox) -> Page:
        made.clear()
        # The other folders' counts first (a STATUS of a folder that is not open costs
        # the same before the SELECT as after it); the open one's once it is open.
        folders = [f if f.name == name else box.counted(f) for f in box.folders(counts=False)]

        def frame() -> None:  # while the store opens the folder
            made["frame"] = render_template(
                "webmail/folder.html",
                badge_hole=Markup(badge_hole),  # noqa: S704 - random tokens of ours
                list_section=Markup(list_hole),  # noqa: S704
                pane_note=Markup(note_hole),  # noqa: S704
                **shown,
                **_chrome_of(folders, name),
            )

        box.select(name, meanwhile=frame)
        folders = [box.counted(f) if f.name == name else f for f in folders]
        current = made["current"] = next((f for f in folders if f.name == name), None)

        def around(outline: Page) -> None:  # while the store reads the messages
            made["badge"] = unread_badge(current) if current else ""
            made["section"] = _list_section(outline, current, name, rows_hole, shown)
            made["note"] = (
                _("Open a message to read it here.") if outline.total else _("No message to read.")
            )

        return box.page(
            name,
            page=page_number,
            sort=sort,
            reverse=reverse,
            search=query,
            search_field=field,
            meanwhile=around,
        )

    listed = on_store(work, page=True)
    current = made["current"]
    if listed.total and not listed.messages:
        # The messages counted went before they were read (moved elsewhere meanwhile):
        # the list says the folder shows none, not an empty table.
        made["section"] = _list_section(Page(name, [], 0, 1, 1), current, name, "", shown)
        made["note"] = _("No message to read.")
    link_base, to_people = _row_links(current, token)
    return (
        made["frame"]
        .replace(badge_hole, str(made["badge"]), 1)
        .replace(note_hole, str(escape(made["note"])), 1)
        .replace(list_hole, made["section"], 1)
        .replace(rows_hole, folder_rows(listed.messages, link_base, to_people), 1)
    )


def _list_section(
    listing: Page, current: Folder | None, name: str, rows: str, shown: dict[str, Any]
) -> str:
    """The part of a folder's page around its messages (``rows`` where they go)."""
    return render_template(
        "webmail/_folder_list.html",
        listing=listing,
        rows=Markup(rows),  # noqa: S704 - a random token of ours, or nothing
        current=current,
        current_folder=name,
        **shown,
    )


def unread_badge(folder: Folder) -> str:
    """A folder's unread count as the folder list shows it (webmail/_labels.html)."""
    return str(get_template_attribute("webmail/_labels.html", "unread_badge")(folder))


def _row_links(current: Folder | None, token: str) -> tuple[str, bool]:
    """Where a folder's rows link to (a draft opens in the editor; other messages on the
    reading page, their UID appended) and whether they show recipients, not senders."""
    special = current.special if current else None
    if special == "Drafts":
        return url_for("webmail.compose", mode="draft", source=token + "/"), True
    return url_for("webmail.message", token=token, uid=0)[:-1], special == "Sent"


@bp.get("/m/<token>/<uid>")
@webmail_user
def message(token: str, uid: str) -> Any:
    """One message: its headers, its text or (sanitised, in a sandbox) its HTML, its
    attachments. Opening it marks it read."""
    name, number = _folder(token), _uid(uid)
    images = request.args.get("images") == "1"

    def work(box: Mailbox) -> tuple[bytes, tuple[int | None, int | None], dict[str, Any]]:
        raw = _read(box, name, number)
        box.set_flag(name, [number], b"\\Seen", True)
        # The folder's newest messages beside the one read (the three panes of a desktop).
        chrome = {**_chrome(box, name), "listing": box.page(name)}
        return raw, box.neighbours(name, number), chrome

    raw, (newer, older), chrome = on_store(work, page=True)
    parsed = parse(raw)
    blocked = False
    if parsed.html is not None:
        _html, blocked = clean_html(parsed.html, cid_url=lambda _cid: "", allow_remote=images)
    return render_template(
        "webmail/message.html",
        token=token,
        uid=number,
        msg=parsed,
        images=images,
        blocked=blocked,
        newer=newer,
        older=older,
        is_draft=chrome["folders"]
        and any(f.name == name and f.special == "Drafts" for f in chrome["folders"]),
        **chrome,
    )


@bp.get("/m/<token>/<uid>/body")
@webmail_user
def body(token: str, uid: str) -> Any:
    """The HTML of a message, sanitised, for the sandboxed frame of the reading page."""
    name, number = _folder(token), _uid(uid)
    images = request.args.get("images") == "1"
    raw = on_store(lambda box: _read(box, name, number))
    parsed = parse(raw)
    by_cid = {a.content_id: a.part for a in parsed.attachments if a.content_id}

    def cid_url(content_id: str) -> str | None:
        # A data: URL: the frame is sandboxed (an opaque origin), so a request from it
        # to the portal is cross-site and carries no session cookie (SameSite=Lax).
        part = by_cid.get(content_id.strip("<>"))
        found = part_bytes(raw, part) if part is not None else None
        if found is None or found[0].content_type not in INLINE_IMAGES:
            return None
        if len(found[1]) > INLINE_IMAGE_MAX:
            return None
        encoded = base64.b64encode(found[1]).decode("ascii")
        return f"data:{found[0].content_type};base64,{encoded}"

    cleaned, _blocked = clean_html(parsed.html or "", cid_url=cid_url, allow_remote=images)
    response = Response(frame_document(cleaned), mimetype="text/html")
    response.headers["Content-Security-Policy"] = frame_policy(images)
    # Shown inside the reading page: the portal's DENY would leave the frame empty (it
    # sets its headers only where a view set none).
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/m/<token>/<uid>/part/<part>")
@webmail_user
def part(token: str, uid: str, part: str) -> Any:
    """One attachment, as a download whatever the message claims it is (inline only for
    plain raster images that an HTML message shows by cid:)."""
    name, number = _folder(token), _uid(uid)
    if len(part) > 40 or not all(p.isdigit() and len(p) < 5 for p in part.split(".")):
        abort(404)
    raw = on_store(lambda box: _read(box, name, number))
    found = part_bytes(raw, part)
    if found is None:
        abort(404)
    attachment, data = found
    inline = request.args.get("inline") == "1" and attachment.content_type in INLINE_IMAGES
    response = Response(data, mimetype=attachment.content_type if inline else None)
    if not inline:
        response.headers["Content-Type"] = "application/octet-stream"
    from urllib.parse import quote

    ascii_name = attachment.filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    ascii_name = ascii_name.replace('"', "_").replace("\\", "_")
    response.headers["Content-Disposition"] = (
        f'{"inline" if inline else "attachment"}; filename="{ascii_name}";'
        f" filename*=UTF-8''{quote(attachment.filename, safe='')}"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, no-store"
    if inline:
        response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


# -- actions ------------------------------------------------------------------------

ACTIONS = ("read", "unread", "flag", "unflag", "move", "delete")


@bp.post("/f/<token>/act")
@webmail_user
def act(token: str) -> Any:
    """Mark read or unread, flag, move or delete one message or a selection."""
    name = _folder(token)
    action = request.form.get("action", "")
    back = request.form.get("back", "")
    target_token = request.form.get("target", "")
    if action not in ACTIONS:
        abort(400)
    try:
        uids = checked_uids(request.form.getlist("uid"))
    except BadRequest:
        flash(_("Select at least one message first."), "error")
        return _back(token, back)
    target = _folder(target_token) if action == "move" else ""

    def work(box: Mailbox) -> bool:
        if action in ("read", "unread"):
            box.set_flag(name, uids, b"\\Seen", action == "read")
        elif action in ("flag", "unflag"):
            box.set_flag(name, uids, b"\\Flagged", action == "flag")
        elif action == "move":
            box.move(name, uids, target)
        else:
            return box.delete(name, uids)
        return False

    try:
        removed = on_store(work)
    except IMAPClientError as error:
        log.warning("webmail: %s on %s refused: %s", action, current_access().person, error)
        flash(_("The standby store refused that change. Reload the page and try again."), "error")
        return _back(token, back)
    count = len(uids)
    if action == "delete":
        flash(
            _("%(count)d message(s) removed for good.", count=count)
            if removed
            else _("%(count)d message(s) moved to Trash.", count=count),
            "success",
        )
    elif action == "move":
        flash(_("%(count)d message(s) moved.", count=count), "success")
    if action in ("move", "delete"):
        return redirect(url_for("webmail.folder", token=token))
    return _back(token, back)


def _back(token: str, back: str) -> Any:
    """Back to the page the form came from, when it is one of this folder's."""
    prefix = url_for("webmail.folder", token=token)
    message_prefix = url_for("webmail.index") + f"/m/{token}/"
    same_folder = back.startswith(prefix) or back.startswith(message_prefix)
    path = back.partition("?")[0].lower()
    unusual = "\\" in back or any(part in path for part in ("/..", "//", "%2e", "%2f", "%5c"))
    if same_folder and not unusual and not any(ord(c) < 32 for c in back):
        return redirect(back)
    return redirect(prefix)


@bp.post("/trash/empty")
@webmail_user
def empty_trash() -> Any:
    """Remove everything in Trash."""
    on_store(lambda box: box.empty_trash())
    flash(_("Trash is empty."), "success")
    return redirect(url_for("webmail.folder", token=folder_token("Trash")))
