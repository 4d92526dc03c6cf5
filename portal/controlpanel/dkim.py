"""The DNS records a domain publishes for the mail its people send from the webmail:
the DKIM key (made here when the domain has none yet) and the SPF mechanism for the
outbound relay."""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, redirect, render_template, url_for
from flask_babel import gettext as _

from portal.access import staff
from portal.controlpanel.scope import actor, bp, changing, domain_or_404
from portal.forms import ActionForm
from portal.request_scope import db
from roster.config import Config
from roster.dkim import dkim_record, spf_mechanism, spf_record
from roster.dkim import ensure_key as ensure_dkim_key
from roster.domains import RosterError, parse_primary
from roster.identity import ROLE_ADMIN


def relay_host(config: Config) -> str | None:
    """The host of [outbound] relay, or None when no relay is configured."""
    try:
        return parse_primary(str(config.outbound.get("relay") or "")).host
    except RosterError:
        return None


@bp.get("/domains/<name>/dns")
@staff(ROLE_ADMIN)
def dns_page(name: str) -> Any:
    """The DNS records to publish for the domain's mail sent from the webmail."""
    domain = domain_or_404(db(), name)
    relay = relay_host(current_app.config["CONTINUITY"])
    return render_template(
        "controlpanel/dkim.html",
        domain=domain,
        dkim=dkim_record(domain),
        relay=relay,
        spf=spf_record(domain.name, relay) if relay else None,
        mechanism=spf_mechanism(relay) if relay else None,
        form=ActionForm(),
    )


@bp.post("/domains/<name>/dns/dkim-key")
@staff(ROLE_ADMIN)
def make_dkim_key(name: str) -> Any:
    """Make the domain's DKIM key, unless it has one (a second press changes nothing)."""
    with changing(name) as (write, found):
        had_key = bool(found.dkim_selector and found.dkim_private_key)
        ensure_dkim_key(write, found, **actor())
    if had_key:
        flash(_("The domain already has a DKIM key; nothing changed."), "notice")
    else:
        flash(_("The DKIM key is made. Publish its record below in the domain's DNS."), "notice")
    return redirect(url_for("controlpanel.dns_page", name=found.name))
