"""The scope selector, and one domain's page: the overview and every setting's form."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, render_template, request

from portal.access import staff
from portal.controlpanel.flowchart import flow_chart
from portal.controlpanel.scope import PAGE, admin_scope, bp, domain_or_404, page_number
from portal.controlpanel.wording import PROBE_STAGES, SYNC_OUTCOMES, probe_error_text, sync_counts
from portal.forms import CoverageForm, EmergencySwitchForm, PrimaryForm
from portal.notify import relay_configured
from portal.request_scope import db
from roster.identity import ROLE_ADMIN
from roster.models import COVERAGE_SELECTED, Domain
from roster.service import LISTED_SORTS, ListedRow, domains_visible, listed_page, overview


@bp.get("")
@staff(ROLE_ADMIN)
def domains() -> Any:
    """The scope selector (the domains this admin administers) and, for the domain
    chosen in it, the Control Panel's menu: Security settings > Continuity Service."""
    visible = domains_visible(db(), admin_scope())
    chosen = (request.args.get("domain") or "").strip().lower()
    selected = next((d for d in visible if d.name == chosen), None)
    if chosen and selected is None:
        abort(404)  # not theirs, or not there: the same answer
    if selected is None and len(visible) == 1:
        selected = visible[0]
    return render_template("controlpanel/domains.html", domains=visible, selected=selected)


@bp.get("/domains/<name>")
@staff(ROLE_ADMIN)
def domain_page(name: str) -> Any:
    """Security settings > Continuity Service for one domain."""
    return domain_view(domain_or_404(db(), name))


def primary_form(domain: Domain) -> PrimaryForm:
    """The primary server form filled from the domain's settings."""
    return PrimaryForm(
        formdata=None,
        data={
            "host": domain.primary_host or "",
            "port": str(domain.primary_port),
            "tls": domain.primary_tls,
            "automatic": domain.failover_automatic,
            "probe_interval": str(domain.probe_interval_seconds),
            "failures_before_failover": str(domain.failures_before_failover),
            "tls_verify": "on" if domain.primary_tls_verify else "off",
            "recover_after": str(domain.recover_after),
            "failover_codes": domain.failover_codes,
            "language": domain.language,
            "verify_recipients": "on" if domain.verify_recipients else "off",
            "sent_copies": "on" if domain.sent_copies_to_primary else "off",
        },
    )


def domain_view(
    domain: Domain,
    *,
    primary: PrimaryForm | None = None,
    primary_errors: dict[str, str] | None = None,
    probe: Any = None,
    status: int = 200,
) -> Any:
    """Render the domain's page; a primary form kept as typed, with errors, if given."""
    session = db()
    config = current_app.config["CONTINUITY"]
    summary = overview(session, domain, config.sources_for(domain.name))
    sort = request.args.get("sort", "address")
    if sort not in LISTED_SORTS:
        sort = "address"
    page = page_number()
    rows: list[ListedRow] = []
    total = 0
    if domain.continuity_active and domain.coverage_mode == COVERAGE_SELECTED:
        rows, total = listed_page(session, domain, page=page, per_page=PAGE, sort=sort)
        if not rows and total:  # past the last page (people were removed): show the last
            page = -(-total // PAGE)
            rows, total = listed_page(session, domain, page=page, per_page=PAGE, sort=sort)
    return (
        render_template(
            "controlpanel/domain.html",
            domain=domain,
            summary=summary,
            sync_counts=sync_counts(summary.last_sync.counts if summary.last_sync else None),
            sync_outcomes=SYNC_OUTCOMES,
            rows=rows,
            total=total,
            page=page,
            pages=max(1, -(-total // PAGE)),
            sort=sort,
            coverage_form=CoverageForm(formdata=None, data={"mode": domain.coverage_mode}),
            emergency_form=EmergencySwitchForm(
                formdata=None, data={"enabled": domain.emergency_password_enabled}
            ),
            primary_form=primary or primary_form(domain),
            primary_errors=primary_errors or {},
            probe=probe,
            probe_stages=PROBE_STAGES,
            probe_error_text=probe_error_text,
            relay_configured=relay_configured(config),
            flow_chart=flow_chart(session, domain),
        ),
        status,
    )
