"""The portal's forms (flask-wtf: every POST carries a CSRF token)."""

from __future__ import annotations

from typing import cast

from flask_babel import lazy_gettext as lazy_text
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    BooleanField,
    HiddenField,
    PasswordField,
    RadioField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.fields import SelectChoice  # type: ignore[attr-defined]  # types-WTForms 3.2 lacks it


def _l(text: str) -> str:
    """``text`` in the reader's language, translated each time the form is shown.

    WTForms takes Flask-Babel's lazy string as a label (it only turns it into text),
    though its stubs ask for a str. pybabel extracts the literals of the ``_l(...)`` calls
    below (babel.cfg), not this one's argument.
    """
    return cast(str, lazy_text(text))


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


class CoverageForm(FlaskForm):
    """Who Continuity Service covers in a domain."""

    mode = RadioField(
        _l("Who is covered"),
        choices=[
            SelectChoice("all", _l("All users")),
            SelectChoice("selected", _l("Only selected users")),
        ],
    )


class EmergencySwitchForm(FlaskForm):
    """The domain's emergency password switch."""

    enabled = BooleanField(_l("Activate the emergency password"))


class PrimaryForm(FlaskForm):
    """A domain's primary mail server and its failover thresholds, kept as typed."""

    host = StringField(_l("Host name or IP address"))
    port = StringField(_l("Port"))
    tls = SelectField(
        _l("Encryption"),
        choices=[
            SelectChoice("starttls", _l("STARTTLS (usual on port 25)")),
            SelectChoice("tls", _l("TLS from the start (port 465)")),
            SelectChoice("none", _l("None (trusted network only)")),
        ],
    )
    automatic = BooleanField(_l("Fail over automatically"))
    probe_interval = StringField(_l("Seconds between probes"))
    failures_before_failover = StringField(_l("Failed probes before failover"))
    # Selects, not checkboxes: a post without them keeps the domain's setting, where an
    # unticked box would switch the certificate check off unseen.
    tls_verify = SelectField(
        _l("The primary server's certificate"),
        choices=[
            SelectChoice("on", _l("Check it (recommended)")),
            SelectChoice("off", _l("Do not check it (a self-signed certificate)")),
        ],
    )
    recover_after = StringField(_l("Good checks before the hand-back"))
    failover_codes = StringField(_l("Reply codes that count as a failure"))
    language = SelectField(
        _l("Language of the mail Continuity writes to your people"),
        choices=[SelectChoice("en", "English"), SelectChoice("es", "Español")],
    )
    verify_recipients = SelectField(
        _l("Unknown recipients"),
        choices=[
            SelectChoice("on", _l("Ask the primary server while the mail arrives (recommended)")),
            SelectChoice("off", _l("Accept them; a bounce follows if the primary refuses")),
        ],
    )
    sent_copies = SelectField(
        _l("Mail people send from the webmail during a continuity event"),
        choices=[
            SelectChoice("off", _l("Keep it in the webmail's Sent folder only")),
            SelectChoice("on", _l("Also hand a copy to the primary server for their Sent folder")),
        ],
    )


class AddPersonForm(FlaskForm):
    """Put one person on a domain's list of selected users."""

    address = StringField(_l("Select user"))


class BulkForm(FlaskForm):
    """Add or remove many people at once: pasted addresses or a CSV file."""

    addresses = TextAreaField(_l("Paste addresses (one a line, or separated by commas)"))
    csv_file = FileField(_l("Or choose a CSV file (UTF-8, at most 1 MB)"))
