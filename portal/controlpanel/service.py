"""Activate and deactivate Continuity Service for a domain, each after a confirmation."""

from __future__ import annotations

from typing import Any

from flask import flash, request
from flask_babel import gettext as _

from portal.access import staff
from portal.controlpanel.promises import important, on_activation, on_deactivation
from portal.controlpanel.scope import actor, bp, changing, confirm, domain_or_404, to_domain
from portal.request_scope import db
from roster.identity import ROLE_ADMIN
from roster.service import activate, deactivate


@bp.route("/domains/<name>/activate", methods=["GET", "POST"])
@staff(ROLE_ADMIN)
def activate_service(name: str) -> Any:
    """Activate Continuity Service: what happens (GET), then do it (POST)."""
    return _switch_service(name, on=True)


@bp.route("/domains/<name>/deactivate", methods=["GET", "POST"])
@staff(ROLE_ADMIN)
def deactivate_service(name: str) -> Any:
    """Deactivate Continuity Service: what stops (GET), then do it (POST)."""
    return _switch_service(name, on=False)


def _switch_service(name: str, *, on: bool) -> Any:
    """Activate or deactivate: the confirmation step (GET), or the change (POST)."""
    domain = domain_or_404(db(), name)
    if request.method == "GET":
        if on:
            heading = _("Activate Continuity Service for %(domain)s?", domain=domain.name)
            points = on_activation()
        else:
            heading = _("Deactivate Continuity Service for %(domain)s?", domain=domain.name)
            points = on_deactivation()
        return confirm(domain, heading, points, important=important())
    with changing(name) as (write, found):
        changed = (activate if on else deactivate)(write, found, **actor())
    if on:
        message = (
            _("Continuity Service is now active for %(domain)s.", domain=found.name)
            if changed
            else _("Continuity Service was already active for %(domain)s.", domain=found.name)
        )
    else:
        message = (
            _("Continuity Service is now inactive for %(domain)s.", domain=found.name)
            if changed
            else _("Continuity Service was already inactive for %(domain)s.", domain=found.name)
        )
    flash(message, "notice")
    return to_domain(found.name)
