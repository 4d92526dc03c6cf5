"""What the audit trail's events say, in the reader's language: one registry for the
Control Panel's and the helpdesk's pages.

An event is stored as an action key, the state before and after, and a detail; a page
shows sentences made from them, never the keys themselves (``coverage_mode: selected``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext

ACTIONS = {
    # Continuity Service administration (Control Panel and command line)
    "service.activated": _l("Continuity Service activated"),
    "service.deactivated": _l("Continuity Service deactivated"),
    "coverage.mode_changed": _l("Coverage changed between all users and only selected users"),
    "coverage.added": _l("Added to the Continuity Service users"),
    "coverage.removed": _l("Removed from the Continuity Service users"),
    "emergency_password.enabled": _l("Emergency password switched on for the domain"),
    "emergency_password.disabled": _l("Emergency password switched off for the domain"),
    "primary.changed": _l("Primary mail server settings changed"),
    "retention.changed": _l("Days the standby archive keeps mail changed"),
    "continuity_event.started": _l("Continuity event started by hand: mail held"),
    "continuity_event.ended": _l("Continuity event ended by hand: held mail handed back"),
    "emergency_password.reminders_sent": _l("Reminders to set an emergency password sent"),
    "domain.added": _l("Domain added"),
    "staff.added": _l("Staff account added"),
    "dkim.key_created": _l("DKIM key made for the mail sent from the webmail"),
    "webmail.access_changed": _l("Changed when the standby webmail opens"),
    # People: signing in, their emergency password, the directory sync
    "sign_in": _l("Signed in"),
    "sign_in.failed": _l("Sign-in refused"),
    "account.locked": _l("Locked after too many failed sign-ins"),
    "account.unlocked": _l("Sign-in lock lifted"),
    "emergency_password.set": _l("Emergency password set"),
    "emergency_password.changed": _l("Emergency password changed"),
    "reset_code.issued": _l("Reset code issued"),
    "reset_code.refused": _l("Reset code refused"),
    "person.renamed": _l("Address changed in the directory"),
    "person.disabled": _l("Disabled in the directory"),
    "person.enabled": _l("Enabled again in the directory"),
    "person.removed": _l("Gone from the directory"),
    "person.restored": _l("Back in the directory"),
    # The standby webmail
    "webmail_sent": _l("Sent a message from the webmail"),
}

# Details written by the roster in English, for the pages to word.
DETAILS = {
    "moved to another domain in the directory": _l("Moved to another domain in the directory."),
    "gone from the directory": _l("Gone from the directory."),
    "directory unreachable": _l("The directory could not be reached."),
    "directory": _l("With the directory password."),
    "emergency": _l("With the emergency password."),
    "local": _l("With the password of a local staff account."),
    "the primary server's certificate is no longer checked": _l(
        "Security decision: the primary server's certificate is no longer checked."
    ),
}

# Settings whose change the action's own words already say.
SAID_BY_ACTION = {
    "continuity_active",
    "emergency_password_enabled",
    "disabled",
    "listed",
    "event",
}

SETTINGS = {
    "coverage_mode": _l("Who is covered"),
    "primary": _l("Primary mail server"),
    "primary_host": _l("Host name or IP address"),
    "primary_port": _l("Port"),
    "primary_tls": _l("Encryption"),
    "failover_automatic": _l("Fail over automatically"),
    "probe_interval_seconds": _l("Seconds between probes"),
    "failures_before_failover": _l("Failed probes before failover"),
    "primary_tls_verify": _l("Check the primary server's certificate"),
    "verify_recipients": _l("Ask the primary server about unknown recipients"),
    "sent_copies_to_primary": _l("Hand mail sent from the webmail to the primary for Sent"),
    "recover_after": _l("Good checks before the hand-back"),
    "reason": _l("Reason"),
    "failover_codes": _l("Reply codes that count as a failure"),
    "language": _l("Language of the mail Continuity writes to your people"),
    "mail": _l("Address"),
    "address": _l("Address"),
    "role": _l("Role"),
    "retention_days": _l("Days the standby archive keeps mail"),
    "dkim_selector": _l("DKIM selector"),
    "webmail_access": _l("The standby webmail opens"),
}

VALUES = {
    ("coverage_mode", "all"): _l("all users"),
    ("coverage_mode", "selected"): _l("only selected users"),
    ("primary_tls", "starttls"): _l("STARTTLS"),
    ("primary_tls", "tls"): _l("TLS from the start"),
    ("primary_tls", "none"): _l("none"),
    ("language", "en"): _l("English"),
    ("language", "es"): _l("Spanish"),
    ("role", "admin"): _l("domain admin"),
    ("role", "helpdesk"): _l("helpdesk"),
    ("role", "global_admin"): _l("global admin"),
    ("retention_days", "default"): _l("the service's default"),
    ("webmail_access", "always"): _l("at all times"),
    ("webmail_access", "outage"): _l("only during a continuity event"),
}

_OLD_REMINDERS = re.compile(r"(\d+) sent, (\d+) failed")
_OLD_EMPTIED = re.compile(r"(\d+) listed user\(s\) removed")


def audit_text(action: str) -> str:
    """What an audit action means, in the reader's language."""
    text = ACTIONS.get(action)
    return str(text) if text is not None else _("Other change")


def actor_text(actor: str) -> str:
    """Who made a change: an address, the directory sync, or the command line."""
    kind, _sep, name = actor.partition(":")
    if kind == "sync" and name:
        return _("Directory sync (%(source)s)", source=name)
    if kind == "cli":
        return _("Command line (%(user)s)", user=name) if name else _("Command line")
    if actor == "demo":
        return _("The demo")
    return actor


def audit_sentences(
    action: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    detail: str,
) -> list[str]:
    """What else an event says beyond its action: each change worded, and its detail."""
    before, after = before or {}, after or {}
    found: list[str] = []
    # A domain's "after" is every setting (the action says enough); a message sent has
    # only its count of recipients, worded below.
    if action not in ("domain.added", "webmail_sent"):
        other = False
        for key in [*after, *(k for k in before if k not in after)]:
            if key in SAID_BY_ACTION:
                continue
            if key not in SETTINGS:
                other = True
                continue
            if not before:  # something new: what it is, not what it was
                found.append(
                    _(
                        "%(setting)s: %(value)s.",
                        setting=SETTINGS[key],
                        value=_value(key, after.get(key)),
                    )
                )
                continue
            found.append(
                _(
                    "%(setting)s: from %(before)s to %(after)s.",
                    setting=SETTINGS[key],
                    before=_value(key, before.get(key)),
                    after=_value(key, after.get(key)),
                )
            )
        if other:
            found.append(_("Other settings changed too."))
    emptied = int(before.get("listed") or 0) if action == "coverage.mode_changed" else 0
    reminders = (after.get("sent"), after.get("failed"))
    old_emptied, old_reminders = _OLD_EMPTIED.fullmatch(detail), _OLD_REMINDERS.fullmatch(detail)
    if old_emptied:
        emptied = int(old_emptied.group(1))
    elif old_reminders:
        reminders = (int(old_reminders.group(1)), int(old_reminders.group(2)))
    elif detail in DETAILS:
        found.append(str(DETAILS[detail]))
    if emptied:
        found.append(
            ngettext(
                "%(num)d individually added user was removed from the list.",
                "%(num)d individually added users were removed from the list.",
                emptied,
            )
        )
    if action == "webmail_sent" and isinstance(after.get("recipients"), int):
        found.append(
            ngettext("To %(num)d recipient.", "To %(num)d recipients.", after["recipients"])
        )
    if action == "emergency_password.reminders_sent" and reminders[0] is not None:
        found.append(ngettext("%(num)d reminder sent.", "%(num)d reminders sent.", reminders[0]))
        if reminders[1]:
            found.append(
                ngettext(
                    "%(num)d reminder could not be sent.",
                    "%(num)d reminders could not be sent.",
                    reminders[1],
                )
            )
    return found


def _value(key: str, value: Any) -> str:
    """A setting's stored value, worded."""
    if value is None or value == "":
        return _("none")
    if isinstance(value, bool):
        return _("on") if value else _("off")
    worded = VALUES.get((key, str(value)))
    return str(worded) if worded is not None else str(value)
