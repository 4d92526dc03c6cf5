"""Continuity events: start one by hand, end it (the hand-back), and the domain's list."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import flash, jsonify, render_template, request
from flask_babel import gettext as _

from portal.access import background, staff
from portal.audit_texts import actor_text
from portal.controlpanel.badges import hand_back
from portal.controlpanel.promises import on_event_end, on_event_start
from portal.controlpanel.scope import (
    PAGE,
    actor,
    bp,
    changing,
    confirm,
    domain_or_404,
    page_number,
    to_domain,
)
from portal.controlpanel.wording import refusal_text
from portal.request_scope import db
from roster.domains import Refused
from roster.identity import ROLE_ADMIN
from roster.models import utcnow
from roster.service import (
    end_event_by_hand,
    end_refusal,
    events_page,
    last_primary_check,
    start_event_by_hand,
    start_refusal,
)

REASON_LENGTH = 500


@bp.route("/domains/<name>/events/start", methods=["GET", "POST"])
@staff(ROLE_ADMIN)
def start_event(name: str) -> Any:
    """Start a continuity event: what happens (GET), then do it (POST)."""
    domain = domain_or_404(db(), name)
    if request.method == "GET":
        refused = start_refusal(db(), domain)
        if refused is not None:
            return _refused(domain.name, refused)
        return confirm(
            domain,
            _("Start a continuity event for %(domain)s?", domain=domain.name),
            on_event_start(domain),
            reason_length=REASON_LENGTH,
        )
    reason = request.form.get("reason", "")[:REASON_LENGTH]
    try:
        with changing(name) as (write, found):
            start_event_by_hand(write, found, reason=reason, **actor())
    except Refused as refused:
        return _refused(domain.name, refused)
    flash(
        _(
            "A continuity event has started for %(domain)s: its mail is held until you end"
            " the event.",
            domain=domain.name,
        ),
        "notice",
    )
    return to_domain(domain.name)


@bp.route("/domains/<name>/events/end", methods=["GET", "POST"])
@staff(ROLE_ADMIN)
def end_event(name: str) -> Any:
    """End the continuity event (the hand-back): what happens (GET), then do it (POST)."""
    domain = domain_or_404(db(), name)
    if request.method == "GET":
        refused = end_refusal(db(), domain)
        if refused is not None:
            return _refused(domain.name, refused)
        check = last_primary_check(domain)
        warning = None
        if check is not None and not check.ok:
            warning = _(
                "The last check of the primary mail server failed (%(time)s): the held mail"
                " may not get through yet.",
                time=check.at.strftime("%Y-%m-%d %H:%M UTC"),
            )
        return confirm(
            domain,
            _("End the continuity event of %(domain)s?", domain=domain.name),
            on_event_end(domain),
            warning=warning,
        )
    try:
        with changing(name) as (write, found):
            end_event_by_hand(write, found, **actor())
    except Refused as refused:
        return _refused(domain.name, refused)
    flash(
        _(
            "The held mail of %(domain)s is being handed back to the primary mail server;"
            " the event ends when none is left.",
            domain=domain.name,
        ),
        "notice",
    )
    return to_domain(domain.name)


def _refused(name: str, refused: Refused) -> Any:
    """Back to the domain's page, saying why nothing was done."""
    flash(refusal_text(refused.code, refused.params), "error")
    return to_domain(name)


@bp.get("/domains/<name>/events")
@staff(ROLE_ADMIN)
def events(name: str) -> Any:
    """The domain's continuity events, newest first, with their counts and durations."""
    session = db()
    domain = domain_or_404(session, name)
    rows, total = events_page(session, domain, page=page_number(), per_page=PAGE)
    pages = max(1, -(-total // PAGE))
    if not rows and total:  # past the last page
        rows, total = events_page(session, domain, page=pages, per_page=PAGE)
    return render_template(
        "controlpanel/events.html",
        domain=domain,
        rows=rows,
        total=total,
        page=min(page_number(), pages),
        pages=pages,
        now=utcnow(),
        who=who,
        duration_text=duration_text,
    )


@bp.get("/domains/<name>/handback")
@staff(ROLE_ADMIN)
@background
def hand_back_progress(name: str) -> Any:
    """The hand-back's figures alone, as JSON, for the pages that show its progress to
    fetch every few seconds (portal.js): a background request, so the page left open
    neither keeps the session alive nor takes a notice meant for the next page."""
    progress = hand_back(domain_or_404(db(), name))
    if progress is None:
        return jsonify(running=False)
    return jsonify(
        running=True,
        held=progress.held,
        handed_back=progress.handed_back,
        left=progress.left,
        text=_(
            "Handed back %(done)d of %(held)d, %(left)d left.",
            done=progress.handed_back,
            held=progress.held,
            left=progress.left,
        ),
    )


def who(name: str | None) -> str:
    """Who started or ended an event: Continuity's monitor, or a person or command."""
    if name is None:
        return ""
    if name == "monitor":
        return _("Continuity (automatic)")
    return actor_text(name)


def duration_text(length: timedelta) -> str:
    """A duration in days, hours and minutes (under a minute: less than a minute)."""
    minutes = int(length.total_seconds()) // 60
    if minutes < 1:
        return _("less than a minute")
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = []
    if days:
        parts.append(_("%(num)d d", num=days))
    if hours:
        parts.append(_("%(num)d h", num=hours))
    if minutes:
        parts.append(_("%(num)d min", num=minutes))
    return " ".join(parts)
