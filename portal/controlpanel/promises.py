"""What the Control Panel's confirmation pages promise: only what the product does today.

The gateway copies covered people's incoming mail into the standby store (issue #9), so
the pages say what activation, deactivation and removal do to that archive. Covered people
read and send mail in the standby webmail (issue #11), so the pages say what the
service does to it too.
"""

from __future__ import annotations

from flask_babel import gettext as _
from flask_babel import ngettext

from roster.models import Domain

STANDBY_COPIES = True
"""True once covered people's incoming mail is copied into the standby store."""
STANDBY_WEBMAIL = True
"""True once covered people can read and send mail in the standby webmail."""


def important() -> list[str]:
    """The manual's "Important" note, said where the admin decides to activate,
    deactivate or narrow the service."""
    return [
        _(
            "Continuity Service is a standby system: it can only help in an outage if it"
            " was active before the outage began."
        ),
        _("Mail that arrived before Continuity Service was activated is not in its archive."),
        _("Keep Continuity Service permanently active."),
    ]


def on_activation() -> list[str]:
    """What activating the service does."""
    points = []
    if STANDBY_COPIES:
        points.append(
            _("From now on a standby copy of incoming mail is kept for the covered users.")
        )
        points.append(
            _("The archive starts now: mail that arrived before the activation is not in it.")
        )
    if STANDBY_WEBMAIL:
        points.append(
            _(
                "During an outage of the primary mail server, covered users can read and"
                " send mail in the standby webmail, signing in with their emergency"
                " password if it is switched on."
            )
        )
    points.append(
        _(
            "Covered users can sign in to this portal and set an emergency password, once"
            " you switch the emergency password on."
        )
    )
    points.append(_("The change takes effect at once."))
    return points


def on_deactivation() -> list[str]:
    """What deactivating the service stops."""
    points = []
    if STANDBY_COPIES:
        points.append(_("No more standby copies of incoming mail are kept."))
        points.append(
            _("The archive of mail copied so far is kept until the retention period removes it.")
        )
        points.append(
            _("Mail already held is not lost: it is still handed back to the primary mail server.")
        )
    if STANDBY_WEBMAIL:
        points.append(
            _(
                "Nobody can sign in to the standby webmail or with an emergency password"
                " any more; such sessions end at once."
            )
        )
    else:
        points.append(
            _("Nobody can sign in with an emergency password any more; such sessions end at once.")
        )
    points.append(
        _("The list of selected users and the settings are kept for when you activate it again.")
    )
    return points


def losing_coverage() -> str:
    """What someone who is no longer covered loses."""
    if STANDBY_COPIES and STANDBY_WEBMAIL:
        return _(
            "They will no longer be covered: no more standby copies of their mail, no"
            " standby webmail, no emergency password sign-in. What was copied so far stays"
            " in the archive until the retention period removes it."
        )
    if STANDBY_COPIES:
        return _(
            "They will no longer be covered: no more standby copies of their mail, no"
            " emergency password sign-in. What was copied so far stays in the archive"
            " until the retention period removes it."
        )
    return _("They will no longer be covered: no emergency password sign-in.")


def on_event_start(domain: Domain) -> list[str]:
    """What starting a continuity event by hand does."""
    points = [
        _(
            "From now on, mail for %(domain)s is held: nothing is delivered to the primary"
            " mail server until the event ends.",
            domain=domain.name,
        ),
    ]
    if STANDBY_COPIES:
        points.append(_("Covered users' incoming mail is still kept in the standby store."))
    if domain.failover_automatic:
        points.append(
            ngettext(
                "Automatic failover is on: once the primary mail server answers %(num)d"
                " check, the held mail is handed back and the event ends by itself.",
                "Automatic failover is on: once the primary mail server answers %(num)d"
                " checks in a row, the held mail is handed back and the event ends by"
                " itself.",
                domain.recover_after,
            )
        )
    points.append(
        _(
            "To end it, use “End continuity event”: the held mail is then handed back to"
            " the primary mail server, oldest first."
        )
    )
    points.append(_("The event is recorded with its reason, and in the audit trail."))
    return points


def on_event_end(domain: Domain) -> list[str]:
    """What ending a continuity event by hand does."""
    return [
        _(
            "The held mail is handed back to the primary mail server, oldest first, each"
            " message once."
        ),
        _("New mail for %(domain)s goes to the primary mail server again.", domain=domain.name),
        _(
            "The event ends by itself once no held mail is left. Mail the primary mail"
            " server does not take yet waits in the queue and is tried again."
        ),
    ]
