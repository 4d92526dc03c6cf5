"""The primary mail server: its settings, and "Test connection"."""

from __future__ import annotations

from typing import Any

from flask import current_app, flash
from flask_babel import gettext as _
from flask_login import current_user

from portal.access import staff
from portal.controlpanel.page import domain_view
from portal.controlpanel.scope import actor, bp, changing, domain_or_404, to_domain
from portal.controlpanel.wording import PRIMARY_FIELDS, probe_refusal_text, refusal_text
from portal.forms import PrimaryForm
from portal.request_scope import db, writing
from roster.domains import PrimaryRefused, PrimarySettings, check_primary
from roster.identity import ROLE_ADMIN
from roster.models import Domain, utcnow
from roster.primary_address import PrimaryAddressRefused
from roster.probe import probe_smtp
from roster.probe_bounds import (
    PER_ADMIN_PER_MINUTE,
    PROBE_SECONDS,
    ProbeRefused,
    finish_probe,
    start_probe,
)
from roster.service import set_primary


def _typed(field: Any, kept: Any) -> Any:
    """What was typed in ``field``, or ``kept`` (the domain's setting) when the post
    did not carry it: a form of an older page changes only what it shows."""
    return field.data if field.raw_data else kept


def _checked_primary(
    form: PrimaryForm, domain: Domain
) -> tuple[PrimarySettings | None, dict[str, str]]:
    """The settings typed in ``form``, checked; or a message for every wrong field."""
    switch = {"on": True, "off": False}
    tls_verify = _typed(form.tls_verify, "on" if domain.primary_tls_verify else "off")
    verify_recipients = _typed(form.verify_recipients, "on" if domain.verify_recipients else "off")
    sent_copies = _typed(form.sent_copies, "on" if domain.sent_copies_to_primary else "off")
    errors: dict[str, str] = {}
    if tls_verify not in switch:
        errors["tls_verify"] = _("Choose whether the certificate is checked.")
    if verify_recipients not in switch:
        errors["verify_recipients"] = _("Choose what happens to unknown recipients.")
    if sent_copies not in switch:
        errors["sent_copies"] = _("Choose what happens to mail sent from the webmail.")
    try:
        settings = check_primary(
            form.host.data or "",
            form.port.data or "",
            form.tls.data or "",
            form.automatic.data is True,
            form.probe_interval.data or "",
            form.failures_before_failover.data or "",
            tls_verify=switch.get(tls_verify, True),
            recover_after=_typed(form.recover_after, domain.recover_after) or "",
            failover_codes=_typed(form.failover_codes, domain.failover_codes) or "",
            language=_typed(form.language, domain.language) or "",
            verify_recipients=switch.get(verify_recipients, True),
            sent_copies=switch.get(sent_copies, False),
        )
    except PrimaryRefused as refused:
        for each in refused.refusals:
            field = PRIMARY_FIELDS.get(each.code, "host")
            errors.setdefault(field, refusal_text(each.code, each.params))
        return None, errors
    if errors:
        return None, errors
    return settings, {}


@bp.post("/domains/<name>/primary")
@staff(ROLE_ADMIN)
def primary(name: str) -> Any:
    """Save the primary mail server settings."""
    domain = domain_or_404(db(), name)
    form = PrimaryForm()
    settings, errors = _checked_primary(form, domain)
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
    settings, errors = _checked_primary(form, domain)
    if settings is None:
        return domain_view(domain, primary=form, primary_errors=errors, status=400)
    db().rollback()  # no transaction is held while the probe waits for the server
    try:
        with writing() as write:
            ticket = start_probe(
                write,
                domain_id=domain.id,
                actor=current_user.address,
                places=current_app.config.get("CONTINUITY_PROBE_PLACES", 1),
                now=utcnow(),
            )
    except ProbeRefused as busy:
        flash(
            probe_refusal_text(busy.code, seconds=busy.wait_seconds, count=PER_ADMIN_PER_MINUTE),
            "error",
        )
        return domain_view(domain, primary=form, status=429)
    try:
        result = probe_smtp(
            settings.host,
            settings.port,
            settings.tls,
            config=current_app.config["CONTINUITY"],
            timeout=PROBE_SECONDS,
        )
    except PrimaryAddressRefused as refused:
        text = probe_refusal_text(refused.code, host=refused.host, address=refused.address)
        return domain_view(domain, primary=form, primary_errors={"host": text}, status=400)
    finally:
        with writing() as write:
            finish_probe(write, ticket)
    return domain_view(domain, primary=form, probe=result)
