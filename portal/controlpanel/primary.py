"""The primary mail server: its settings, and "Test connection"."""

from __future__ import annotations

from typing import Any

from flask import flash
from flask_babel import gettext as _

from portal.access import staff
from portal.controlpanel.page import domain_view
from portal.controlpanel.scope import actor, bp, changing, domain_or_404, to_domain
from portal.controlpanel.wording import PRIMARY_FIELDS, refusal_text
from portal.forms import PrimaryForm
from portal.request_scope import db
from roster.domains import PrimarySettings, Refused, check_primary
from roster.identity import ROLE_ADMIN
from roster.probe import probe_smtp
from roster.service import set_primary

PROBE_TIMEOUT = 10.0


def _checked_primary(form: PrimaryForm) -> tuple[PrimarySettings | None, dict[str, str]]:
    """The settings typed in ``form``, checked; or the message for the wrong field."""
    try:
        return (
            check_primary(
                form.host.data or "",
                form.port.data or "",
                form.tls.data or "",
                form.automatic.data is True,
                form.probe_interval.data or "",
                form.failures_before_failover.data or "",
            ),
            {},
        )
    except Refused as refused:
        field = PRIMARY_FIELDS.get(refused.code, "host")
        return None, {field: refusal_text(refused.code, refused.params)}


@bp.post("/domains/<name>/primary")
@staff(ROLE_ADMIN)
def primary(name: str) -> Any:
    """Save the primary mail server settings."""
    domain = domain_or_404(db(), name)
    form = PrimaryForm()
    settings, errors = _checked_primary(form)
    if settings is None:
        return domain_view(domain, primary=form, primary_errors=errors, status=400)
    with changing(name) as (write, found):
        changed = set_primary(write, found, settings, **actor())
    flash(
        _("The primary mail server settings are saved.") if changed else _("Nothing changed."),
        "notice",
    )
    return to_domain(domain.name)


@bp.post("/domains/<name>/primary/test")
@staff(ROLE_ADMIN)
def probe_primary(name: str) -> Any:
    """Try the primary mail server typed in the form (saved or not) and show what it said."""
    domain = domain_or_404(db(), name)
    form = PrimaryForm()
    settings, errors = _checked_primary(form)
    if settings is None:
        return domain_view(domain, primary=form, primary_errors=errors, status=400)
    db().rollback()  # no transaction is held while the probe waits for the server
    result = probe_smtp(settings.host, settings.port, settings.tls, timeout=PROBE_TIMEOUT)
    return domain_view(domain, primary=form, probe=result)
