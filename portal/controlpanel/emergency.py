"""The domain's emergency password: the switch, and reminders to those who have none."""

from __future__ import annotations

from typing import Any

from flask import current_app, flash
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user

from portal.access import staff
from portal.controlpanel.scope import actor, bp, changing, domain_or_404, to_domain
from portal.controlpanel.wording import refusal_text
from portal.forms import EmergencySwitchForm
from portal.notify import relay_configured, send_reminders
from portal.request_scope import client_address, db
from roster.domains import Refused, audit
from roster.identity import ROLE_ADMIN
from roster.service import switch_emergency_password, without_emergency_password


@bp.post("/domains/<name>/emergency-password")
@staff(ROLE_ADMIN)
def emergency_password(name: str) -> Any:
    """Switch the emergency password on or off for the domain."""
    domain = domain_or_404(db(), name)
    enabled = EmergencySwitchForm().enabled.data is True
    try:
        with changing(name) as (write, found):
            changed = switch_emergency_password(write, found, enabled, **actor())
    except Refused as refused:
        flash(refusal_text(refused.code, refused.params), "error")
        return to_domain(domain.name)
    if not changed:
        flash(_("Nothing changed."), "notice")
    elif enabled:
        flash(_("The emergency password is now switched on for this domain."), "notice")
    else:
        flash(_("The emergency password is now switched off for this domain."), "notice")
    return to_domain(domain.name)


@bp.post("/domains/<name>/remind")
@staff(ROLE_ADMIN)
def remind(name: str) -> Any:
    """Email every covered person without an emergency password a reminder to set one."""
    session = db()
    domain = domain_or_404(session, name)
    config = current_app.config["CONTINUITY"]
    if not relay_configured(config):
        flash(_("The outbound relay is not configured: no reminder can be sent."), "error")
        return to_domain(domain.name)
    if not domain.emergency_password_enabled:
        flash(
            _(
                "The emergency password is switched off for this domain: switch it on before"
                " asking people to set one."
            ),
            "error",
        )
        return to_domain(domain.name)
    if not config.portal.get("base_url"):
        # The link in a reminder comes from the configuration, never from the request's
        # Host header, which whoever sends the request chooses.
        flash(_("The portal's public address is not configured: no reminder can be sent."), "error")
        return to_domain(domain.name)
    people = [
        (person.mail, person.display_name)
        for person in session.scalars(without_emergency_password(domain))
    ]
    session.rollback()  # no transaction is held while the relay takes its time
    if not people:
        flash(_("Everyone covered has set an emergency password: nobody to remind."), "notice")
        return to_domain(domain.name)
    sent, failed = send_reminders(config, people, str(config.portal["base_url"]))
    with changing(name) as (write, found):
        audit(
            write,
            current_user.address,
            "emergency_password.reminders_sent",
            domain_id=found.id,
            client=client_address(),
            after={"sent": sent, "failed": failed},
        )
    flash(
        ngettext("%(num)d reminder sent.", "%(num)d reminders sent.", sent),
        "notice" if sent else "error",
    )
    if failed:
        flash(
            ngettext(
                "%(num)d reminder could not be sent.",
                "%(num)d reminders could not be sent.",
                failed,
            ),
            "error",
        )
    return to_domain(domain.name)
