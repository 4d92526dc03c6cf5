"""Email Live Tracking: a domain's mail newest first, filtered and paged by key, one
message's timeline, and the domain's continuity events. The queries are roster.tracking's."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import abort, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from portal.access import staff
from portal.controlpanel.scope import bp, domain_or_404
from portal.request_scope import db
from roster.identity import ROLE_ADMIN
from roster.tracking import (
    SHOWN_STATUSES,
    Filters,
    clean_queue_id,
    continuity_events,
    list_messages,
    message_tracking,
    parse_key,
    parse_time,
)

# The manual's words for what a person sees ("Aplazado" for Deferred).
STATUS_WORDS = {
    "delivered": _l("Delivered"),
    "deferred": _l("Deferred"),
    "bounced": _l("Bounced"),
    "refused": _l("Refused"),
    "queued": _l("Queued"),
}
STEP_WORDS = {
    "received": _l("Received by Continuity"),
    "held": _l("Held by a continuity event"),
    "attempt": _l("Last delivery attempt to the primary mail server"),
    "delivered": _l("Delivered to the primary mail server"),
    "handed_back": _l("Handed back to the primary mail server"),
    "bounced": _l("Bounced"),
    "copied": _l("Copied to the standby mailbox"),
}
COPY_WORDS = {
    "pending": _l("waiting"),
    "copied": _l("copied"),
    "failed": _l("failed"),
    "removed": _l("removed (the address passed to someone else)"),
}
LONGEST = 320  # an address, the longest thing typed in a filter


def duration_text(value: timedelta) -> str:
    """A duration in days, hours and minutes (seconds under a minute)."""
    seconds = max(int(value.total_seconds()), 0)
    if seconds < 60:
        return _("%(num)d s", num=seconds)
    minutes, _seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return _("%(days)d d %(hours)d h %(minutes)d min", days=days, hours=hours, minutes=minutes)
    if hours:
        return _("%(hours)d h %(minutes)d min", hours=hours, minutes=minutes)
    return _("%(minutes)d min", minutes=minutes)


def _filters() -> tuple[Filters, dict[str, str]]:
    """The filters typed in the form, checked; a message for each wrong field."""
    errors: dict[str, str] = {}
    args = request.args
    since = until = None
    for name in ("since", "until"):
        typed = (args.get(name) or "").strip()
        if not typed:
            continue
        moment = parse_time(typed[:40])
        if moment is None:
            errors[name] = _(
                "Type a date and time as 2026-11-30 14:05 (UTC), or a date as 2026-11-30."
            )
        elif name == "since":
            since = moment
        else:
            until = moment
    status = (args.get("status") or "").strip().lower()
    if status and status not in SHOWN_STATUSES:
        errors["status"] = _("Choose a status from the list.")
        status = ""
    sender = (args.get("sender") or "").strip()
    recipient = (args.get("recipient") or "").strip()
    for name, typed in (("sender", sender), ("recipient", recipient)):
        if len(typed) > LONGEST or any(ord(c) < 32 for c in typed):
            errors[name] = _("Type one whole email address.")
    if since is not None and until is not None and until <= since:
        errors["until"] = _("The end of the time range must come after its start.")
    filters = Filters(
        since=since,
        until=until,
        sender=sender if "sender" not in errors else "",
        recipient=recipient if "recipient" not in errors else "",
        status=status,
        continuity=args.get("continuity") == "1",
    )
    return filters, errors


@bp.get("/domains/<name>/tracking")
@staff(ROLE_ADMIN)
def tracking(name: str) -> Any:
    """Email Live Tracking: the domain's messages newest first, and its continuity events."""
    session = db()
    domain = domain_or_404(session, name)
    filters, errors = _filters()
    older = parse_key(request.args.get("older", "")) if request.args.get("older") else None
    newer = parse_key(request.args.get("newer", "")) if request.args.get("newer") else None
    if (request.args.get("older") and older is None) or (
        request.args.get("newer") and newer is None
    ):
        errors["page"] = _("That page link is not valid: here are the newest messages.")
        older = newer = None
    page = list_messages(session, domain.id, filters, older_than=older, newer_than=newer)
    kept = {
        key: value
        for key, value in request.args.items()
        if key in ("since", "until", "sender", "recipient", "status", "continuity") and value
    }
    return (
        render_template(
            "controlpanel/tracking.html",
            domain=domain,
            page=page,
            filters=filters,
            typed=request.args,
            kept=kept,
            errors=errors,
            events=continuity_events(session, domain.id),
            duration_text=duration_text,
            status_words=STATUS_WORDS,
            statuses=SHOWN_STATUSES,
        ),
        400 if errors and "page" not in errors else 200,
    )


@bp.get("/domains/<name>/tracking/<queue_id>")
@staff(ROLE_ADMIN)
def tracking_message(name: str, queue_id: str) -> Any:
    """One message of the domain: each recipient's state and the message's timeline."""
    session = db()
    domain = domain_or_404(session, name)
    cleaned = clean_queue_id(queue_id)
    found = message_tracking(session, cleaned, domain.id) if cleaned else None
    if found is None:
        abort(404)  # not there, or no recipient in this domain: the same answer
    return render_template(
        "controlpanel/tracking_message.html",
        domain=domain,
        message=found,
        status_words=STATUS_WORDS,
        step_words=STEP_WORDS,
        copy_words=COPY_WORDS,
    )
