"""When the domain's covered people may open the standby webmail."""

from __future__ import annotations

from typing import Any

from flask import flash, request
from flask_babel import gettext as _

from portal.access import staff
from portal.controlpanel.scope import actor, bp, changing, domain_or_404, to_domain
from portal.request_scope import db
from roster.identity import ROLE_ADMIN
from roster.models import WEBMAIL_ALWAYS, WEBMAIL_OUTAGE
from roster.service import set_webmail_access


@bp.post("/domains/<name>/webmail")
@staff(ROLE_ADMIN)
def webmail_access(name: str) -> Any:
    """Open the webmail at all times, or only during a continuity event."""
    domain = domain_or_404(db(), name)
    access = request.form.get("access", "")
    if access not in (WEBMAIL_ALWAYS, WEBMAIL_OUTAGE):
        flash(_("Choose when the standby webmail is open."), "error")
        return to_domain(domain.name)
    with changing(name) as (write, found):
        changed = set_webmail_access(write, found, access, **actor())
    if not changed:
        flash(_("Nothing changed."), "notice")
    elif access == WEBMAIL_ALWAYS:
        flash(_("The standby webmail is now open to covered users at all times."), "notice")
    else:
        flash(_("The standby webmail now opens only during a continuity event."), "notice")
    return to_domain(domain.name)
