"""What the Control Panel's confirmation pages promise: only what the product does today.

The mail path (standby copies of incoming mail, the standby webmail) is still being
built. Its sentences are written here already and stay off until the change that makes
them true switches them on, so that no page promises a copy or a webmail that does not
exist yet.
"""

from __future__ import annotations

from flask_babel import gettext as _

STANDBY_COPIES = False
"""True once covered people's incoming mail is copied into the standby store."""
STANDBY_WEBMAIL = False
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
            "They will no longer be covered: no standby copies of their mail, no"
            " standby webmail, no emergency password sign-in."
        )
    return _("They will no longer be covered: no emergency password sign-in.")
