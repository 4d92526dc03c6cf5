"""Helpdesk: find people of the domains served, see their status and audit trail, issue a
reset code for the emergency password, lift a lock. Never sees or chooses a password."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import or_, select

from portal.access import HELPDESK_ROLES, staff
from portal.forms import ActionForm
from portal.request_scope import client_address, db, writing
from roster import throttle
from roster.addresses import printable
from roster.domains import audit
from roster.identity import (
    ROLE_ADMIN,
    covered,
    emergency_credential,
    issue_reset_code,
    roles_of,
    valid_reset_code,
)
from roster.models import Alias, AuditEvent, Domain, Person, utcnow

bp = Blueprint("helpdesk", __name__, url_prefix="/helpdesk")
PAGE = 50


def _served() -> set[int] | None:
    """The domains this helpdesk member serves (None: all)."""
    served: set[int] | None = current_user.domains_for(*HELPDESK_ROLES)
    return served


def _person_or_404(person_id: int) -> Person:
    """A person of a served domain; any other id is "not found", never "forbidden"."""
    person = db().get(Person, person_id)
    served = _served()
    if person is None or (served is not None and person.domain_id not in served):
        abort(404)
    return person


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its own wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@bp.get("")
@staff(*HELPDESK_ROLES)
def search() -> Any:
    """Search people by address or name in the domains served."""
    query_text = printable((request.args.get("q") or "").strip(), 200)
    people: list[Person] = []
    if query_text:
        pattern = _like(query_text.lower())
        query = (
            select(Person)
            .outerjoin(Alias, Alias.person_id == Person.id)
            .where(
                or_(
                    Person.mail.like(pattern, escape="\\"),
                    Person.display_name.ilike(pattern, escape="\\"),
                    Alias.address.like(pattern, escape="\\"),
                )
            )
            .distinct()
            .order_by(Person.mail)
            .limit(PAGE)
        )
        served = _served()
        if served is not None:
            query = query.where(Person.domain_id.in_(served or {-1}))
        people = list(db().scalars(query))
    return render_template("helpdesk/search.html", q=query_text, people=people)


def _lock_keys(person: Person) -> list[str]:
    """Every throttle key that can lock this person out (their address and aliases)."""
    addresses = [person.mail] + list(
        db().scalars(select(Alias.address).where(Alias.person_id == person.id))
    )
    return [throttle.person_key(person.id)] + [throttle.account_key(a) for a in addresses]


@bp.get("/people/<int(max=2147483647):person_id>")
@staff(*HELPDESK_ROLES)
def person_page(person_id: int) -> Any:
    """A person's status and audit trail."""
    roster = db()
    person = _person_or_404(person_id)
    now = utcnow()
    events = list(
        roster.scalars(
            select(AuditEvent)
            .where(AuditEvent.person_id == person.id)
            .order_by(AuditEvent.id.desc())
            .limit(200)
        )
    )
    return render_template(
        "helpdesk/person.html",
        person=person,
        domain=roster.get(Domain, person.domain_id),
        is_covered=covered(roster, person),
        credential=emergency_credential(roster, person),
        locked=any(throttle.is_locked(roster, key, now) for key in _lock_keys(person)),
        valid_code=valid_reset_code(roster, person, now),
        events=events,
        form=ActionForm(),
    )


# The code shown once waits in the helpdesk member's session between the POST that
# issues it and the page that shows it (then dropped): the roster stores codes hashed
# only, and a reload of the page must neither show the code again nor issue another.
# The session cookie is signed, not encrypted, so the code travels in it sealed with a
# one-time pad drawn from the secret key (its integrity is the signature's).
SHOWN_CODE = "reset_code_to_show"


def _pad(nonce: bytes) -> bytes:
    """32 bytes only the portal can draw: HMAC-SHA256 of a fresh nonce, by the secret key."""
    key = str(current_app.config["SECRET_KEY"]).encode("utf-8")
    return hmac.new(key, b"continuity reset code shown once:" + nonce, hashlib.sha256).digest()


def _seal(code: str) -> str:
    """``code`` (19 ASCII characters) made unreadable without the secret key."""
    nonce = secrets.token_bytes(16)
    sealed = bytes(a ^ b for a, b in zip(code.encode("ascii"), _pad(nonce), strict=False))
    return (nonce + sealed).hex()


def _unseal(sealed: str) -> str:
    """The code ``_seal`` sealed."""
    raw = bytes.fromhex(sealed)
    nonce, body = raw[:16], raw[16:]
    return bytes(a ^ b for a, b in zip(body, _pad(nonce), strict=False)).decode("ascii")


@bp.post("/people/<int(max=2147483647):person_id>/reset-code")
@staff(*HELPDESK_ROLES)
def reset_code(person_id: int) -> Any:
    """Issue a single-use reset code, after asking if one still works; then show it once
    (POST, then a redirect to the page that shows it)."""
    person = _person_or_404(person_id)
    if person.disabled:
        flash(_("This person is disabled in the directory: no reset code."), "error")
        return redirect(url_for("helpdesk.person_page", person_id=person.id))
    held = roles_of(db(), person.id, None)
    admin_domains = current_user.domains_for(ROLE_ADMIN)
    if held and admin_domains is not None and person.domain_id not in admin_domains:
        # Staff members' codes come from an administrator: a helpdesk member must not
        # be able to take over a colleague's (or a manager's) account.
        flash(_("Reset codes for staff members are issued by an administrator."), "error")
        return redirect(url_for("helpdesk.person_page", person_id=person.id))
    replacing = request.form.get("replacing", "")
    db().rollback()
    hours = current_app.config["CONTINUITY_RESET_CODE_HOURS"]
    with writing() as write:
        # The person's row is locked: two helpdesk members cannot both find no code.
        row = write.get(Person, person.id, with_for_update=True)
        if row is None:
            abort(404)
        current = valid_reset_code(write, row, utcnow())
        if current is not None and replacing != str(current.id):
            # A code that still works may be in the person's hands: a new one would void
            # it without a word (a reload of the code page did that). Ask first.
            return render_template(
                "helpdesk/replace_code.html", person=person, current=current, form=ActionForm()
            )
        code = issue_reset_code(
            write, row, current_user.address, timedelta(hours=hours), client_address()
        )
    session[SHOWN_CODE] = {"person": person.id, "code": _seal(code)}
    return redirect(url_for("helpdesk.show_reset_code", person_id=person.id), 303)


@bp.get("/people/<int(max=2147483647):person_id>/reset-code")
@staff(*HELPDESK_ROLES)
def show_reset_code(person_id: int) -> Any:
    """Show the code just issued, this once; a reload says it was shown already."""
    person = _person_or_404(person_id)
    waiting = session.get(SHOWN_CODE)
    code = None
    if isinstance(waiting, dict) and waiting.get("person") == person.id:
        code = _unseal(session.pop(SHOWN_CODE)["code"])
    hours = current_app.config["CONTINUITY_RESET_CODE_HOURS"]
    still_valid = None if code else valid_reset_code(db(), person, utcnow())
    response = current_app.make_response(
        render_template(
            "helpdesk/code.html", person=person, code=code, hours=hours, valid_code=still_valid
        )
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/people/<int(max=2147483647):person_id>/unlock")
@staff(*HELPDESK_ROLES)
def unlock(person_id: int) -> Any:
    """Lift a sign-in lock."""
    person = _person_or_404(person_id)
    keys = _lock_keys(person)
    db().rollback()
    with writing() as write:
        lifted = [key for key in keys if throttle.clear(write, key)]
        audit(
            write,
            current_user.address,
            "account.unlocked",
            person_id=person.id,
            domain_id=person.domain_id,
            client=client_address(),
            detail=", ".join(lifted),
        )
    flash(_("The sign-in lock is lifted."), "notice")
    return redirect(url_for("helpdesk.person_page", person_id=person.id))
