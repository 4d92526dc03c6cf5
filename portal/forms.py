"""The portal's forms (flask-wtf: every POST carries a CSRF token)."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField


class ActionForm(FlaskForm):
    """A button that only needs its CSRF token (sign out, unlock, issue a code)."""


class LanguageForm(FlaskForm):
    """The language switcher."""

    language = HiddenField()
    next = HiddenField()


class EmergencyPasswordForm(FlaskForm):
    """Set or change the emergency password, after typing the directory password again."""

    directory_password = PasswordField(_l("Your directory password"))
    password = PasswordField(_l("New emergency password"))
    confirmation = PasswordField(_l("New emergency password, again"))


class ResetForm(FlaskForm):
    """Set a new emergency password with a helpdesk reset code."""

    address = StringField(_l("Email address"))
    code = StringField(_l("Reset code"))
    password = PasswordField(_l("New emergency password"))
    confirmation = PasswordField(_l("New emergency password, again"))
