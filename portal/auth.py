"""Signing in and out, and choosing the language."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, make_response, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user

from portal.access import end_session, public, safe_next, signed_in, start_session
from portal.forms import ActionForm, LanguageForm
from portal.i18n import LANGUAGES
from portal.request_scope import client_address
from portal.signin import Failure, check_sign_in

bp = Blueprint("auth", __name__)


def _wait_text(seconds: int) -> str:
    if seconds >= 90:
        return _(
            "Too many attempts. Try again in %(minutes)d minutes.", minutes=(seconds + 59) // 60
        )
    return ngettext(
        "Too many attempts. Try again in %(num)d second.",
        "Too many attempts. Try again in %(num)d seconds.",
        seconds,
    )


@bp.get("/")
@public
def index() -> Any:
    """Send people where they belong: their page, or the sign-in page."""
    if current_user.is_authenticated:
        return redirect(url_for("me.status"))
    return redirect(url_for("auth.sign_in"))


@bp.route("/sign-in", methods=["GET", "POST"], endpoint="sign_in")
@public
def sign_in_page() -> Any:
    """The one sign-in page, for end users, helpdesk and admins alike."""
    # Plain form fields, no wtforms form: this is the busiest page on the day of an
    # outage, and CSRFProtect has checked the token of every POST before any view runs.
    if request.method == "GET":
        return render_template("auth/sign_in.html", next=safe_next(request.args.get("next")))
    address = request.form.get("address", "")
    next_ = safe_next(request.form.get("next"))
    outcome = check_sign_in(address, request.form.get("password", ""), client_address())
    if outcome.principal is None or outcome.method is None:
        if outcome.failure is Failure.LOCKED:
            message = _(
                "Too many failed sign-ins: this account is locked for a while."
                " Try again later, or ask your helpdesk."
            )
        elif outcome.failure is Failure.THROTTLED:
            message = _wait_text(outcome.wait_seconds)
        elif outcome.directory_down:
            # One true thing: the password may well be right, but with the directory
            # down nobody can tell; only an emergency password can be checked now.
            message = _(
                "Your organisation's directory cannot be reached right now, so a directory"
                " password cannot be checked, and this password was not accepted. If you"
                " have set an emergency password, sign in with it."
            )
        else:
            message = _("The address or password is not right.")
        flash(message, "error")
        return render_template("auth/sign_in.html", address=address, next=next_), 401
    start_session(outcome.principal, outcome.method, outcome.session_id)
    return redirect(next_ or url_for("me.status"))


@bp.post("/sign-out")
@signed_in
def sign_out() -> Any:
    """End the session."""
    ActionForm()  # CSRF is checked for every POST by CSRFProtect
    end_session()
    flash(_("You have signed out."), "notice")
    return redirect(url_for("auth.sign_in"))


@bp.post("/language")
@public
def language() -> Any:
    """Remember the chosen language in a cookie and go back to the page."""
    form = LanguageForm()
    chosen = form.language.data if form.language.data in LANGUAGES else "en"
    response = make_response(redirect(safe_next(form.next.data) or url_for("auth.index")))
    response.set_cookie(
        "lang",
        chosen,
        max_age=365 * 24 * 3600,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )
    return response
