"""The Control Panel's words: refusals, sync outcomes, probe stages and audit actions in
the reader's language. Every table of wording lives here, so a translator or a reviewer
reads them in one place."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

# What roster.probe reports when a connection test fails (English), worded.
PROBE_ERRORS = [
    (
        re.compile(r"no answer within (?P<seconds>[0-9.]+) s"),
        _l("No answer within %(seconds)s seconds."),
    ),
    (
        re.compile(r"(?:\[Errno \d+\] )?Connection refused"),
        _l("Connection refused: nothing listens on that port, or a firewall refuses."),
    ),
    (
        re.compile(r"(?:\[Errno \d+\] )?(?:No route to host|Network is unreachable)"),
        _l("The server cannot be reached from the Continuity server (no route)."),
    ),
    (
        re.compile(r"(?:\[Errno \d+\] )?Connection reset by peer|Connection unexpectedly closed.*"),
        _l("The server closed the connection."),
    ),
    (
        re.compile(r"the server closed the connection without a greeting"),
        _l("The server closed the connection without a greeting."),
    ),
    (re.compile(r"the server refused the connection"), _l("The server refused the connection.")),
    (re.compile(r"not an SMTP server"), _l("It is not an SMTP server.")),
    (
        re.compile(r"the server does not accept mail now"),
        _l("The server does not accept mail now."),
    ),
    (re.compile(r"the server does not offer STARTTLS"), _l("The server does not offer STARTTLS.")),
    (re.compile(r"the server refused EHLO"), _l("The server refused EHLO.")),
    (re.compile(r"TLS failed: (?P<reason>.*)"), _l("TLS failed: %(reason)s")),
    (
        re.compile(r"(?P<host>\S+) does not resolve within (?P<seconds>[0-9.]+) s"),
        _l("%(host)s: no address found within %(seconds)s seconds."),
    ),
    (
        re.compile(r"(?P<host>\S+) does not resolve to an address"),
        _l("%(host)s: no such host name (it has no address)."),
    ),
]

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
    "primary_ip": _l(
        "“%(value)s” is not a valid IP address (four numbers from 0 to 255, or IPv6)."
    ),
    "primary_port": _l("The port must be a whole number from %(low)d to %(high)d."),
    "primary_tls": _l("Choose one of the encryption options."),
    "probe_interval": _l(
        "The seconds between probes must be a whole number from %(low)d to %(high)d."
    ),
    "failures_before_failover": _l(
        "The failed probes before failover must be a whole number from %(low)d to %(high)d."
    ),
    "recover_after": _l(
        "The good checks before the hand-back must be a whole number from %(low)d to %(high)d."
    ),
    "failover_code": _l(
        "“%(value)s” is not the reply code of a failure: give three digits starting with 4"
        " or 5, such as 452 or 552."
    ),
    "failover_codes": _l("At most %(limit)d reply codes."),
    "language": _l("Choose English or Spanish."),
    "event_open": _l(
        "A continuity event of this domain is open already (since %(since)s): nothing was changed."
    ),
    "no_event": _l("This domain is in no continuity event: there is nothing to end."),
    "event_recovering": _l(
        "The continuity event of this domain is handing its mail back already (since %(since)s)."
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
    "warnings": _l("changes refused (see the sync's record)"),
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
    "primary_ip": "host",
    "primary_port": "port",
    "primary_tls": "tls",
    "probe_interval": "probe_interval",
    "failures_before_failover": "failures_before_failover",
    "recover_after": "recover_after",
    "failover_code": "failover_codes",
    "failover_codes": "failover_codes",
    "language": "language",
}

# Why "Test connection" did not try the server (roster.primary_address and
# roster.probe_bounds refusals).
PROBE_REFUSALS = {
    "this_host": _l(
        "%(host)s is an address of the Continuity server itself (%(address)s): the primary"
        " mail server cannot be there, so it was not tried."
    ),
    "denied": _l(
        "%(host)s (%(address)s) is in a network your operator does not allow for a primary"
        " mail server, so it was not tried."
    ),
    "domain_busy": _l(
        "A connection test of this domain is running already. Try again in %(seconds)d s."
    ),
    "too_often": _l(
        "You have tested connections %(count)d times in the last minute."
        " Try again in %(seconds)d s."
    ),
    "portal_busy": _l("Other connection tests are running now. Try again in %(seconds)d s."),
    "no_places": _l(
        "Test connection is not available on this portal: it runs a single worker process,"
        " which a test would hold. Ask your operator."
    ),
}


def probe_refusal_text(code: str, **params: Any) -> str:
    """Why a connection test was not made, in the reader's language."""
    text = PROBE_REFUSALS.get(code)
    if text is None:
        return _("The connection test was refused.")
    return str(text) % params


def probe_error_text(error: str) -> str:
    """Why a connection test failed (roster.probe's English reason), in the reader's
    language; a reason not known here is shown as the server or system gave it."""
    for pattern, text in PROBE_ERRORS:
        found = pattern.fullmatch(error)
        if found:
            return str(text) % found.groupdict()
    return _("The server or the network said: %(error)s", error=error)


def refusal_text(code: str, params: Mapping[str, Any]) -> str:
    """Why roster.service refused a change, in the reader's language."""
    text = REFUSALS.get(code)
    if text is None:
        return _("The change was refused.")
    try:
        return str(text) % dict(params)
    except (KeyError, TypeError, ValueError):
        return _("The change was refused.")


def sync_counts(counts: Mapping[str, Any] | None) -> list[str]:
    """A sync run's non-zero counts, worded; its warnings (the directory's own words,
    kept in the run's record) are counted here, not quoted."""
    return [
        f"{SYNC_COUNTS.get(key, key)}: {_refused_count(value) if key == 'warnings' else value}"
        for key, value in (counts or {}).items()
        if value
    ]


def _refused_count(warnings: Any) -> int:
    """How many changes a run refused: its kept warnings, plus the "and N more" line's N."""
    if not isinstance(warnings, list):
        return int(warnings or 0)
    count = 0
    for line in warnings:
        more = str(line).removeprefix("and ").removesuffix(" more")
        count += int(more) if more.isdigit() else 1
    return count
