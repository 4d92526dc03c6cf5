"""Who may open the standby webmail, and when.

A covered person of an active domain, signed in as a person (with the emergency
password, or the directory password while the directory is up). The domain's admins
decide whether it is open at all times (people can try it before an outage) or only
while the domain is in a continuity event. Every webmail endpoint carries
``webmail_user``: nobody else reaches any of them, and each request asks again, so
access ends the moment coverage, the domain or the person changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar, cast

from flask import abort, g, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.request_scope import db
from roster.identity import covered
from roster.models import WEBMAIL_OUTAGE, ContinuityEvent, Domain, Person
from roster.standby import holds_others_mail

F = TypeVar("F", bound=Callable[..., Any])

OPEN = "open"
NOT_A_PERSON = "not_a_person"
INACTIVE = "inactive"
NOT_COVERED = "not_covered"
ONLY_IN_OUTAGE = "only_in_outage"
# The address's standby mailbox holds mail of its previous holder until retention has
# emptied it (roster.standby.holds_others_mail).
OTHERS_MAIL = "others_mail"


@dataclass(frozen=True)
class WebmailAccess:
    """Whether a person may open the webmail now, why not, and the domain's state."""

    reason: str
    domain: Domain | None = None
    person: Person | None = None
    event_started_at: datetime | None = None
    recovering: bool = False

    @property
    def allowed(self) -> bool:
        """True when the webmail is open to the person now."""
        return self.reason == OPEN

    @property
    def in_event(self) -> bool:
        """True while the person's domain is in a continuity event."""
        return self.event_started_at is not None


def webmail_access(roster: Session, person: Person | None) -> WebmailAccess:
    """The webmail's answer for ``person`` now."""
    if person is None or person.removed_at is not None or person.disabled:
        return WebmailAccess(NOT_A_PERSON)
    domain = roster.get(Domain, person.domain_id)
    if domain is None or not domain.continuity_active:
        return WebmailAccess(INACTIVE, domain, person)
    if not covered(roster, person):
        return WebmailAccess(NOT_COVERED, domain, person)
    if holds_others_mail(roster, person.mail, person.id):
        return WebmailAccess(OTHERS_MAIL, domain, person)
    event = roster.execute(
        select(ContinuityEvent.started_at, ContinuityEvent.recovery_started_at)
        .where(ContinuityEvent.domain_id == domain.id, ContinuityEvent.ended_at.is_(None))
        .order_by(ContinuityEvent.id.desc())
        .limit(1)
    ).first()
    started = event.started_at if event else None
    recovering = bool(event and event.recovery_started_at)
    if domain.webmail_access == WEBMAIL_OUTAGE and started is None:
        return WebmailAccess(ONLY_IN_OUTAGE, domain, person)
    return WebmailAccess(OPEN, domain, person, started, recovering)


def current_access() -> WebmailAccess:
    """The signed-in principal's answer, asked once per request."""
    if "webmail_access" not in g:
        person = None
        if current_user.is_authenticated and current_user.kind == "person":
            person = db().get(Person, current_user.id)
        g.webmail_access = webmail_access(db(), person)
    found: WebmailAccess = g.webmail_access
    return found


def webmail_user(view: F) -> F:
    """Only a person the webmail is open to may call this endpoint. The webmail's front
    page tells the others why it is closed; every other endpoint answers 403."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_authenticated:
            return redirect(url_for("auth.sign_in", next=request.full_path.rstrip("?")))
        found = current_access()
        if not found.allowed:
            if request.endpoint == "webmail.index":
                return render_template("webmail/closed.html", access=found), 403
            abort(403)
        return view(*args, **kwargs)

    wrapper._access = "webmail"  # type: ignore[attr-defined]  # a tag on the function object
    return cast(F, wrapper)
