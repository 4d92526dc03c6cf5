"""The Control Panel's words: refusals, sync outcomes, probe stages and audit actions in
the reader's language. Every table of wording lives here, so a translator or a reviewer
reads them in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from portal import helpdesk

AUDIT_TEXTS = {
    "service.activated": _l("Continuity Service activated"),
    "service.deactivated": _l("Continuity Service deactivated"),
    "coverage.mode_changed": _l("Coverage changed between all users and only selected users"),
    "coverage.added": _l("Added to the Continuity Service users"),
    "coverage.removed": _l("Removed from the Continuity Service users"),
    "emergency_password.enabled": _l("Emergency password switched on for the domain"),
    "emergency_password.disabled": _l("Emergency password switched off for the domain"),
    "primary.changed": _l("Primary mail server settings changed"),
    "emergency_password.reminders_sent": _l("Reminders to set an emergency password sent"),
    "domain.added": _l("Domain added"),
    "staff.added": _l("Staff account added"),
}

CHANGED_MEANWHILE = _l(
    "Someone changed the list at the same moment: nothing was changed. Please try again."
)

REFUSALS = {
    "not_an_address": _l("“%(address)s” is not an email address."),
    "not_in_roster": _l(
        "%(address)s is not in the roster: nobody with this address came from the directory."
    ),
    "other_domain": _l("%(address)s is not an address of this domain."),
    "removed": _l("%(address)s has been removed from the directory."),
    "already_listed": _l("%(address)s is already on the list."),
    "not_listed": _l("%(address)s is not on the list."),
    "duplicate": _l("%(address)s is repeated on an earlier line."),
    "all_users": _l("This domain covers all users: choose “Only selected users” first."),
    "inactive": _l("Continuity Service is not active for this domain: activate it first."),
    "too_many": _l("%(count)d addresses: at most %(limit)d at a time. Nothing was changed."),
    "bad_csv": _l(
        "The file could not be read as CSV (line %(line)d): check its quotes. Nothing was changed."
    ),
    "bad_mode": _l("Choose all users or only selected users."),
    "primary_host": _l("“%(value)s” is not a host name or IP address."),
    "primary_port": _l("The port must be a whole number from %(low)d to %(high)d."),
    "primary_tls": _l("Choose one of the encryption options."),
    "probe_interval": _l(
        "The seconds between probes must be a whole number from %(low)d to %(high)d."
    ),
    "failures_before_failover": _l(
        "The failed probes before failover must be a whole number from %(low)d to %(high)d."
    ),
}

SYNC_OUTCOMES = {
    "success": _l("succeeded"),
    "failed": _l("failed"),
    "guard": _l("stopped by a safety check: nothing was changed"),
    "running": _l("running"),
    "dry-run": _l("trial run: nothing was changed"),
}

SYNC_COUNTS = {
    "created": _l("new"),
    "updated": _l("updated"),
    "renamed": _l("renamed"),
    "disabled": _l("disabled"),
    "enabled": _l("enabled again"),
    "restored": _l("back in the directory"),
    "removed": _l("removed"),
    "unchanged": _l("unchanged"),
    "skipped_unknown_domain": _l("skipped: another domain"),
    "skipped_invalid": _l("skipped: not valid"),
    "skipped_conflict": _l("skipped: address in use"),
    "staff_roles": _l("staff roles"),
}

PROBE_STAGES = {
    "connect": _l("connecting"),
    "greeting": _l("greeting"),
    "tls": _l("TLS"),
    "ehlo": _l("EHLO"),
    "done": _l("done"),
}

# Which field of the primary form each refusal of check_primary names.
PRIMARY_FIELDS = {
    "primary_host": "host",
    "primary_port": "port",
    "primary_tls": "tls",
    "probe_interval": "probe_interval",
    "failures_before_failover": "failures_before_failover",
}


def audit_text(action: str) -> str:
    """What an audit action means, in the reader's language (the helpdesk's too)."""
    text = AUDIT_TEXTS.get(action)
    return str(text) if text is not None else helpdesk.audit_text(action)


def refusal_text(code: str, params: Mapping[str, Any]) -> str:
    """Why roster.service refused a change, in the reader's language."""
    text = REFUSALS.get(code)
    if text is None:
        return _("The change was refused.")
    try:
        return str(text) % dict(params)
    except (KeyError, TypeError, ValueError):
        return _("The change was refused.")


def state_lines(state: Mapping[str, Any] | None) -> list[str]:
    """An audit event's before or after state as "key: value" lines."""
    if not state:
        return []
    return [f"{key}: {_plain(value)}" for key, value in state.items()]


def sync_counts(counts: Mapping[str, Any] | None) -> list[str]:
    """A sync run's non-zero counts, worded."""
    return [
        f"{SYNC_COUNTS.get(key, key)}: {value}" for key, value in (counts or {}).items() if value
    ]


def _plain(value: Any) -> str:
    """A stored setting as text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
