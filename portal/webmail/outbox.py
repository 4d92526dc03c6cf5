"""The compose page: a new message, a reply, a reply to all, a forward, or a draft
resumed; sent through the outbound relay or saved in Drafts.

Nothing a person wrote is lost: a relay that is down, a recipient refused by all, or
an address mistyped next to uploaded files, and the message is saved in Drafts and the
form shown again from there, with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from imapclient.exceptions import IMAPClientError  # type: ignore[import-untyped]
from werkzeug.exceptions import NotFound

from portal.request_scope import body_limit, client_address, db, writing
from portal.webmail import bp
from portal.webmail.access import current_access, webmail_user
from portal.webmail.compose import (
    ComposeError,
    build_message,
    envelope_recipients,
    format_recipients,
    forward_fields,
    parse_recipients,
    reply_fields,
)
from portal.webmail.imap import BadRequest, Mailbox, checked_uid, folder_from_token, folder_token
from portal.webmail.message import ParsedMessage, addresses_of, parse, part_bytes
from portal.webmail.sending import (
    NotSent,
    RelayDown,
    reserve_sending,
    send,
    settle_sending,
)
from portal.webmail.views import GREETING, _chrome, _read, on_store, pool
from roster.models import Alias, Domain, Person
from roster.queue import queue_sent_copy

log = logging.getLogger("continuity.portal.webmail")

MODES = ("new", "reply", "reply_all", "forward", "draft")


def sender_addresses(person: Person) -> list[str]:
    """The addresses a person may send as: their roster address, then their aliases."""
    from sqlalchemy import select

    aliases = db().scalars(select(Alias.address).where(Alias.person_id == person.id))
    return [person.mail, *sorted(a for a in aliases if a != person.mail)]


def upload_limit() -> int:
    """The largest total of attachments one message may carry, in bytes."""
    megabytes = int(current_app.config["CONTINUITY"].webmail.get("max_upload_mb", 25))
    return megabytes * 1024 * 1024


def recipients_per_hour() -> int:
    """How many recipients one person may send to in an hour."""
    return int(current_app.config["CONTINUITY"].webmail.get("recipients_per_hour", 200))


@dataclass
class Draft:
    """What the compose form holds."""

    mode: str = "new"
    source: str = ""  # "<folder token>/<uid>": the message answered, forwarded or resumed
    sender: str = ""
    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    body: str = ""
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    kept: list[tuple[str, str, int]] = field(default_factory=list)  # (part, name, size)


def _source(value: str) -> tuple[str, int] | None:
    """A "<folder token>/<uid>" from the form or the URL, checked; None if empty."""
    if not value:
        return None
    token, _slash, uid = value.partition("/")
    try:
        return folder_from_token(token), checked_uid(uid)
    except BadRequest:
        abort(404)


def _bcc(raw: bytes) -> list[tuple[str, str]]:
    """The Bcc recipients of a draft (ParsedMessage has none: a received message does
    not show them)."""
    headers = BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
    return addresses_of([str(value) for value in headers.get_all("Bcc", [])])


def _from_source(
    mode: str, parsed: ParsedMessage, own: set[str], raw: bytes | None = None
) -> Draft:
    """The form filled for a reply, a forward or a draft of ``parsed``."""
    if mode in ("reply", "reply_all"):
        fields = reply_fields(parsed, own, all=mode == "reply_all")
    elif mode == "forward":
        fields = forward_fields(parsed)
    else:  # a draft: the message as saved
        fields = {
            "to": parsed.to,
            "cc": parsed.cc,
            "bcc": _bcc(raw) if raw is not None else [],
            "subject": parsed.subject,
            "body": parsed.text or "",
            "in_reply_to": parsed.in_reply_to,
            "references": parsed.references,
        }
    draft = Draft(mode=mode)
    for name in ("to", "cc", "bcc"):
        value = fields.get(name, "")
        setattr(draft, name, value if isinstance(value, str) else format_recipients(value))
    draft.subject = str(fields.get("subject", ""))
    draft.body = str(fields.get("body", ""))
    draft.in_reply_to = fields.get("in_reply_to")
    draft.references = list(fields.get("references", []))
    if mode in ("forward", "draft"):
        draft.kept = [(a.part, a.filename, a.size) for a in parsed.attachments if not a.content_id]
    return draft


def _show(draft: Draft, errors: dict[str, str], status: int = 200) -> Any:
    person = current_access().person
    if person is None:
        abort(403)
    senders = sender_addresses(person)  # before the store: the roster's session closes then
    chrome = on_store(lambda box: _chrome(box, ""), page=True)
    return (
        render_template(
            "webmail/compose.html",
            draft=draft,
            errors=errors,
            senders=senders,
            limit_mb=upload_limit() // (1024 * 1024),
            **chrome,
        ),
        status,
    )


@bp.route("/compose", methods=["GET", "POST"])
@webmail_user
@body_limit(lambda: upload_limit() + 512 * 1024)
def compose() -> Any:
    """Write, send or save a message."""
    access = current_access()
    person, domain = access.person, access.domain
    if person is None or domain is None:
        abort(403)
    if request.method == "GET":
        mode = request.args.get("mode", "new")
        if mode not in MODES:
            abort(404)
        source = _source(request.args.get("source", ""))
        if mode == "new" or source is None:
            draft = Draft(to=request.args.get("to", "")[:500])
            if any(ord(c) < 32 for c in draft.to):
                draft.to = ""
            return _show(draft, {})
        folder, uid = source
        raw = on_store(lambda box: _read(box, folder, uid))
        own = {a.lower() for a in sender_addresses(person)}
        draft = _from_source(mode, parse(raw), own, raw)
        draft.source = request.args["source"]
        return _show(draft, {})
    return _submit(person, domain)


@bp.errorhandler(413)
def too_large(_error: Exception) -> Any:
    """A request over its size limit: for the compose form, which limit it was."""
    if request.endpoint == "webmail.compose":
        message = _(
            "The attached files are larger than the %(limit)d MB a message may carry,"
            " so the message was neither sent nor saved. Go back, remove or shrink some"
            " files, and send it again.",
            limit=upload_limit() // (1024 * 1024),
        )
    else:
        message = _("What you sent is too large.")
    return render_template("error.html", title=_("Too large"), message=message), 413


def _form_draft() -> Draft:
    form = request.form
    mode = form.get("mode", "new")
    if mode not in MODES:
        abort(400)
    draft = Draft(
        mode=mode,
        source=form.get("source", ""),
        sender=form.get("sender", ""),
        to=form.get("to", ""),
        cc=form.get("cc", ""),
        bcc=form.get("bcc", ""),
        subject=form.get("subject", ""),
        body=form.get("body", "").replace("\r\n", "\n"),
    )
    return draft


def _attachments(draft: Draft, source_raw: bytes | None) -> list[tuple[str, str, bytes]]:
    """The kept attachments of the source message and the uploaded files."""
    found: list[tuple[str, str, bytes]] = []
    if source_raw is not None and draft.mode in ("forward", "draft"):
        for kept in request.form.getlist("keep")[:100]:
            got = part_bytes(source_raw, kept) if len(kept) < 40 else None
            if got is not None:
                found.append((got[0].filename, got[0].content_type, got[1]))
    for upload in request.files.getlist("attachments"):
        if upload and upload.filename:
            data = upload.read()
            found.append((upload.filename, upload.mimetype or "application/octet-stream", data))
    return found


def _submit(person: Person, domain: Domain) -> Any:
    draft = _form_draft()
    action = request.form.get("action", "send")
    if action not in ("send", "draft"):
        abort(400)
    senders = sender_addresses(person)
    if draft.sender not in senders:
        draft.sender = senders[0]
    source = _source(draft.source)
    source_raw, source_gone = None, False
    if source is not None:
        source_folder, source_uid = source
        try:
            source_raw = on_store(lambda box: _read(box, source_folder, source_uid))
        except NotFound:  # deleted or moved since the form was opened
            source, source_gone = None, True
    source_parsed = parse(source_raw) if source_raw is not None else None
    if source_parsed is not None:
        if draft.mode in ("reply", "reply_all"):
            draft.in_reply_to = source_parsed.message_id
            draft.references = [
                *source_parsed.references,
                *filter(None, [source_parsed.message_id]),
            ]
        elif draft.mode == "draft":
            draft.in_reply_to = source_parsed.in_reply_to
            draft.references = source_parsed.references
    attachments = _attachments(draft, source_raw)
    total = sum(len(data) for _n, _t, data in attachments)
    errors: dict[str, str] = {}
    if total > upload_limit():
        errors["attachments"] = _(
            "The attachments come to %(size)s MB; a message may carry at most %(limit)d MB.",
            size=f"{total / 1048576:.1f}",
            limit=upload_limit() // 1048576,
        )
        attachments = []
    recipients: dict[str, list[tuple[str, str]]] = {}
    for name in ("to", "cc", "bcc"):
        try:
            recipients[name] = parse_recipients(getattr(draft, name), field=name)
        except ComposeError as error:
            errors[error.field] = error.message
            recipients[name] = []
    everyone: list[str] = []
    if action == "send" and not errors:
        try:  # each address once across To, Cc and Bcc, at most MAX_RECIPIENTS in all
            everyone = envelope_recipients(recipients["to"], recipients["cc"], recipients["bcc"])
        except ComposeError as error:
            errors[error.field] = error.message

    def build(with_bcc: bool) -> EmailMessage:
        message = build_message(
            sender=(person.display_name, draft.sender),
            to=recipients["to"],
            cc=recipients["cc"],
            bcc=recipients["bcc"],
            subject=draft.subject,
            body=draft.body,
            attachments=attachments,
            in_reply_to=draft.in_reply_to,
            references=draft.references,
            domain=domain.name,
        )
        if with_bcc and recipients["bcc"]:
            message["Bcc"] = format_recipients(recipients["bcc"])
        return message

    if source_gone and action == "send":
        errors["send"] = _(
            "The message you were answering, forwarding or editing is no longer there"
            " (deleted or moved), so nothing was sent. What you wrote is kept in Drafts:"
            " check it, then send it again."
        )
    replaces = source if draft.mode == "draft" else None
    if errors or action == "draft":
        uploaded = any(upload.filename for upload in request.files.getlist("attachments"))
        # Saved as a draft when asked, when its source went away, or when files came
        # with a mistake elsewhere (so that they are not lost); files too large to keep
        # are said so instead.
        if action == "draft" or source_gone or (uploaded and "attachments" not in errors):
            uid = _save_draft(build(True).as_bytes(), replaces)
            if not errors:
                flash(_("The draft is saved in Drafts."), "success")
                return redirect(_draft_url(uid))
            return _reshow_from_draft(uid, draft, errors)
        return _show(draft, errors, 400)

    # Sending: the message made first, then counted toward the hourly limit before the
    # relay is asked (a count taken is given back whatever stops the send).
    message = build(False)
    dkim = None
    if domain.dkim_selector and domain.dkim_private_key:
        dkim = (domain.name, domain.dkim_selector, domain.dkim_private_key)
    limit = recipients_per_hour()
    with writing() as write:
        already, reservation = reserve_sending(
            write, person, len(everyone), client_address(), limit
        )
    if reservation is None:
        errors["to"] = _(
            "You may send to %(limit)d recipients an hour; %(left)d are left for now."
            " Your message is kept in Drafts.",
            limit=limit,
            left=max(0, limit - already),
        )
        uid = _save_draft(build(True).as_bytes(), replaces)
        return _reshow_from_draft(uid, draft, errors)
    config = current_app.config["CONTINUITY"]
    try:
        result = send(config, message, draft.sender, everyone, dkim=dkim)
    except BaseException as error:
        with writing() as write:
            settle_sending(write, reservation, 0)  # nothing went
        if not isinstance(error, NotSent):
            raise
        log.warning("webmail: nothing sent for %s: %s", person.mail, error)
        uid = _save_draft(build(True).as_bytes(), replaces)
        if isinstance(error, RelayDown):
            errors["send"] = _(
                "The message could not be sent: the outgoing mail server cannot be reached"
                " right now. It is kept in Drafts; try again in a few minutes."
            )
        else:  # refused for good, at MAIL or after DATA
            errors["send"] = _(
                "The outgoing mail server refused the message (%(reply)s). Nothing was"
                " sent; the message is kept in Drafts.",
                reply=f"{error.reply[0]} {error.reply[1]}".strip(),
            )
        return _reshow_from_draft(uid, draft, errors)
    with writing() as write:
        settle_sending(write, reservation, len(result.accepted))
        if result.accepted:
            queue_sent_copy(write.connection(), domain, person.id, draft.sender, message.as_bytes())
    if not result.accepted:
        uid = _save_draft(build(True).as_bytes(), replaces)
        errors["send"] = _(
            "No recipient was accepted; nothing was sent. The message is kept in Drafts."
        )
        return _reshow_from_draft(uid, draft, errors, refused=result.refused)
    copy = build(True).as_bytes()

    def file_it(box: Mailbox) -> None:
        box.append(box.special("Sent"), copy, (b"\\Seen",))
        if source is not None and draft.mode in ("reply", "reply_all"):
            box.set_flag(source[0], [source[1]], b"\\Answered", True)
        if source is not None and draft.mode == "draft" and source[0] == box.special("Drafts"):
            box.remove(source[0], source[1])  # the draft, now sent (never a message elsewhere)

    try:
        on_store(file_it)
    except IMAPClientError as error:
        log.warning("webmail: sent by %s, but not filed in Sent: %s", person.mail, error)
        flash(_("The message was sent, but could not be copied to Sent."), "error")
    log.info(
        "webmail: %s sent a message to %d recipient(s), %d refused",
        person.mail,
        len(result.accepted),
        len(result.refused),
    )
    if result.refused:
        return render_template(
            "webmail/sent.html",
            refused=result.refused,
            accepted=result.accepted,
            **on_store(lambda box: _chrome(box, ""), page=True),
        )
    flash(_("Your message was sent."), "success")
    return redirect(url_for("webmail.folder", token=folder_token("INBOX")))


def _save_draft(raw: bytes, replaces: tuple[str, int] | None) -> int | None:
    """Store a draft in Drafts (replacing the one it was resumed from); its UID."""

    def work(box: Mailbox) -> int | None:
        drafts = box.special("Drafts")
        uid = box.append(drafts, raw, (b"\\Draft", b"\\Seen"))
        if replaces is not None and replaces[0] == drafts:
            box.remove(drafts, replaces[1])
        return uid

    address = current_access().person.mail  # type: ignore[union-attr]
    with pool().mailbox(address, g.get(GREETING)) as box:
        return work(box)


def _draft_url(uid: int | None) -> str:
    if uid is None:
        return url_for("webmail.folder", token=folder_token("Drafts"))
    return url_for("webmail.compose", mode="draft", source=f"{folder_token('Drafts')}/{uid}")


def _reshow_from_draft(
    uid: int | None,
    typed: Draft,
    errors: dict[str, str],
    refused: dict[str, tuple[int, str]] | None = None,
) -> Any:
    """The form again, as typed, now resumed from the draft just saved."""
    if uid is not None:
        raw = on_store(lambda box: _read(box, box.special("Drafts"), uid))
        saved = parse(raw)
        typed.mode = "draft"
        typed.source = f"{folder_token('Drafts')}/{uid}"
        typed.kept = [(a.part, a.filename, a.size) for a in saved.attachments if not a.content_id]
    if refused:
        errors["refused"] = "; ".join(
            f"{address}: {code} {text}" for address, (code, text) in sorted(refused.items())
        )
    return _show(typed, errors, 400)
