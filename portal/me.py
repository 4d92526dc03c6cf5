"""Self-service: a person's Continuity status, their emergency password, reset codes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, session, url_for
from flask_babel import gettext as _
from flask_login import current_user

from portal.access import METHOD_DIRECTORY, public, signed_in
from portal.forms import EmergencyPasswordForm, ResetForm
from portal.ldapauth import BindOutcome, check_password
from portal.request_scope import client_address, db, writing
from portal.webmail.access import webmail_access
from roster import throttle
from roster.config import Config
from roster.domains import audit
from roster.identity import (
    covered,
    emergency_credential,
    find_person,
    forget_reset_codes,
    may_use_emergency_password,
    normalise_address,
    redeem_reset_code,
    set_person_emergency_password,
)
from roster.models import Domain, Person, utcnow
from roster.passwords import burn_verify_time, policy_problems

bp = Blueprint("me", __name__)


def policy_messages() -> dict[str, str]:
    """What each password-policy refusal says, in the person's language."""
    return {
        "too_short": _("Use at least 12 characters."),
        "too_long": _("Use at most 256 characters."),
        "mismatch": _("The two new passwords are not the same."),
        "same_as_directory": _("Do not use your directory password as emergency password."),
        "contains_identity": _("Do not use your address or your name in the password."),
        "common": _("This password is too common; choose another."),
    }


def _person() -> Person:
    """The signed-in person (local staff accounts have no emergency password)."""
    if current_user.kind != "person":
        abort(404)
    person = db().get(Person, current_user.id)
    if person is None:
        abort(404)
    return person


@bp.get("/me")
@signed_in
def status() -> Any:
    """The person's Continuity status and, after a directory sign-in, the password form."""
    if current_user.kind != "person":
        return render_template("me/staff.html")
    roster = db()
    person = _person()
    domain = roster.get(Domain, person.domain_id)
    credential = emergency_credential(roster, person)
    return render_template(
        "me/status.html",
        person=person,
        domain=domain,
        is_covered=covered(roster, person),
        may_use=may_use_emergency_password(roster, person),
        credential=credential,
        can_change=current_user.method == METHOD_DIRECTORY,
        form=EmergencyPasswordForm(),
        webmail=webmail_access(roster, person),
    )


@bp.post("/me/emergency-password")
@signed_in
def emergency_password() -> Any:
    """Set or change the emergency password (only in a directory-password session)."""
    if current_user.method != METHOD_DIRECTORY:
        abort(403)
    form = EmergencyPasswordForm()
    person = _person()
    config: Config = current_app.config["CONTINUITY"]
    source = next((d for d in config.directories if d.name == person.source), None)
    directory_password = form.directory_password.data or ""
    keys = [
        throttle.account_key(person.mail),
        throttle.person_key(person.id),
        throttle.client_key(client_address()),
    ]
    db().rollback()
    with writing() as write:
        verdict = throttle.attempt(write, keys, utcnow())
    if not verdict.allowed:
        # The same throttle as the sign-in page (the attempt is counted before the
        # check): a stolen session must not become a way to guess the directory password.
        if verdict.locked:
            flash(_("Too many failed attempts: this account is locked for a while."), "error")
        else:
            flash(_("Too many attempts. Try again later."), "error")
        return redirect(url_for("me.status"))
    if source is None or check_password(source, person.dn, directory_password) is not (
        BindOutcome.ACCEPTED
    ):
        flash(_("Your directory password is not right."), "error")
        return redirect(url_for("me.status"))
    with writing() as write:
        throttle.succeeded(write, keys)  # the directory password was right
    problems = policy_problems(
        form.password.data or "",
        form.confirmation.data or "",
        address=person.mail,
        display_name=person.display_name,
        directory_password=directory_password,
    )
    if problems:
        messages = policy_messages()
        for problem in problems:
            flash(messages[problem], "error")
        return redirect(url_for("me.status"))
    with writing() as write:
        row = write.get(Person, person.id)
        if row is None:
            abort(404)
        set_person_emergency_password(
            write,
            row,
            form.password.data or "",
            row.mail,
            client_address(),
            keep=str(session.get("sid", "")),
        )
        write.flush()
        write.refresh(row)
        # This session goes on; every other one of the person ends.
        session["gen"] = row.session_generation
    flash(_("Your emergency password is set."), "notice")
    return redirect(url_for("me.status"))


@bp.route("/reset", methods=["GET", "POST"])
@public
def reset() -> Any:
    """Set a new emergency password with the code the helpdesk gave."""
    form = ResetForm()
    if not form.is_submitted():
        return render_template("me/reset.html", form=form)
    if not form.validate():
        flash(_("The form expired. Please try again."), "error")
        return render_template("me/reset.html", form=form), 400
    address = normalise_address(form.address.data or "")
    keys = [throttle.account_key(address), throttle.client_key(client_address())]
    with writing() as write:
        # Counted per person too, like the sign-in: each of a person's addresses is no
        # new allowance of guesses at their code.
        holder = find_person(write, address)
        if holder is not None:
            keys.append(throttle.person_key(holder.id))
        verdict = throttle.attempt(write, keys, utcnow())  # counted before the check
    if not verdict.allowed:
        flash(_("Too many attempts. Try again later."), "error")
        return render_template("me/reset.html", form=form), 429
    roster = db()
    person = find_person(roster, address)
    code = form.code.data or ""
    # The code is checked before the password policy: only someone holding a valid
    # code may learn anything (policy messages) about an address.
    valid = (
        person is not None
        and not person.disabled
        and redeem_reset_code(roster, person, code, utcnow(), use=False)
    )
    if not valid:
        burn_verify_time(code)  # a refusal costs the same, whoever the address is
    roster.rollback()
    if person is None or not valid:
        with writing() as write:
            if person is not None:
                audit(
                    write,
                    address,
                    "reset_code.refused",
                    person_id=person.id,
                    domain_id=person.domain_id,
                    client=client_address(),
                )
        flash(_("The address or the code is not right, or the code has expired."), "error")
        return render_template("me/reset.html", form=form), 401
    with writing() as write:
        throttle.succeeded(write, keys)  # the code is right; only the password may not be
    problems = policy_problems(
        form.password.data or "",
        form.confirmation.data or "",
        address=person.mail,
        display_name=person.display_name,
    )
    if problems:
        messages = policy_messages()
        for problem in problems:
            flash(messages[problem], "error")
        return render_template("me/reset.html", form=form), 400
    with writing() as write:
        row = write.get(Person, person.id)
        if row is None or not redeem_reset_code(write, row, code, utcnow()):
            flash(_("The address or the code is not right, or the code has expired."), "error")
            return render_template("me/reset.html", form=form), 401
        set_person_emergency_password(
            write, row, form.password.data or "", row.mail, client_address()
        )
        forget_reset_codes(write, row)
    flash(_("Your new emergency password is set. You can sign in with it."), "notice")
    return redirect(url_for("auth.sign_in"))
