"""The Control Panel's blueprint, and what every view of it uses: the admin's domains
(one outside their scope is "not found"), a write transaction on one of them, who acts,
and the confirmation step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.request_scope import client_address, db, writing
from roster.identity import ROLE_ADMIN
from roster.models import Domain

bp = Blueprint("controlpanel", __name__, url_prefix="/admin")

PAGE = 50
PEOPLE_INDEX = "roster_people_index"
"""The app.extensions key of the process's PeopleIndex (its cache lives with the worker)."""


def admin_scope() -> set[int] | None:
    """The domains this admin administers (None: a global admin, all)."""
    administered: set[int] | None = current_user.domains_for(ROLE_ADMIN)
    return administered


def domain_or_404(session: Session, name: str) -> Domain:
    """The domain ``name`` if this admin administers it; any other is "not found"."""
    domain = session.scalar(select(Domain).where(Domain.name == name.strip().lower()[:253]))
    scope = admin_scope()
    if domain is None or (scope is not None and domain.id not in scope):
        abort(404)
    return domain


@contextmanager
def changing(name: str) -> Iterator[tuple[Session, Domain]]:
    """A write transaction and the admin's domain ``name`` read inside it."""
    db().rollback()  # the request's read snapshot ends before the write lock is taken
    with writing() as write:
        yield write, domain_or_404(write, name)


def actor() -> dict[str, Any]:
    """Who makes a change and from where, as roster.service takes them."""
    return {"actor": current_user.address, "client": client_address()}


def page_number() -> int:
    """The page asked for (from 1)."""
    return min(max(request.args.get("page", 1, type=int) or 1, 1), 1_000_000)


def to_domain(name: str) -> Any:
    """Back to the domain's page (its notices at the top, in view)."""
    return redirect(url_for("controlpanel.domain_page", name=name))


def confirm(
    domain: Domain,
    heading: str,
    points: list[str],
    *,
    warning: str | None = None,
    fields: dict[str, str] | None = None,
    important: list[str] | None = None,
    reason_length: int | None = None,
) -> Any:
    """A confirmation step: what will happen, "Confirm" (POST here again) and "Cancel";
    the manual's "Important" note where the decision needs it; a box for the reason
    when ``reason_length`` is given."""
    return render_template(
        "controlpanel/confirm.html",
        domain=domain,
        heading=heading,
        points=points,
        warning=warning,
        action=request.path,
        fields=fields or {},
        important=important or [],
        reason_length=reason_length,
    )
