"""The domain's audit trail, newest first."""

from __future__ import annotations

from typing import Any

from flask import render_template
from sqlalchemy import func, select

from portal.access import staff
from portal.audit_texts import actor_text, audit_sentences
from portal.controlpanel.scope import PAGE, bp, domain_or_404, page_number
from portal.request_scope import db
from roster.identity import ROLE_ADMIN
from roster.models import AuditEvent, Person


@bp.get("/domains/<name>/audit")
@staff(ROLE_ADMIN)
def audit_page(name: str) -> Any:
    """The domain's audit trail, newest first."""
    session = db()
    domain = domain_or_404(session, name)
    total = (
        session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.domain_id == domain.id)
        )
        or 0
    )
    pages = max(1, -(-total // PAGE))
    page = min(page_number(), pages)
    events = session.execute(
        select(AuditEvent, Person.mail)
        # Someone who has since moved to another domain is not named here by their
        # address there (the event's own detail still says who it was).
        .outerjoin(Person, (Person.id == AuditEvent.person_id) & (Person.domain_id == domain.id))
        .where(AuditEvent.domain_id == domain.id)
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(PAGE)
        .offset((page - 1) * PAGE)
    ).all()
    return render_template(
        "controlpanel/audit.html",
        domain=domain,
        events=events,
        page=page,
        pages=pages,
        actor_text=actor_text,
        audit_sentences=audit_sentences,
    )
