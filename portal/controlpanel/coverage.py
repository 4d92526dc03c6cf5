"""All users or only selected users; a warning first when the switch uncovers people."""

from __future__ import annotations

from typing import Any

from flask import flash, request
from flask_babel import gettext as _
from flask_babel import ngettext

from portal.access import staff
from portal.controlpanel.promises import important, losing_coverage
from portal.controlpanel.scope import actor, bp, changing, confirm, domain_or_404, to_domain
from portal.controlpanel.wording import refusal_text
from portal.request_scope import db
from roster.domains import Refused
from roster.identity import ROLE_ADMIN
from roster.models import COVERAGE_ALL, COVERAGE_SELECTED, Domain
from roster.service import set_coverage_mode


@bp.post("/domains/<name>/coverage")
@staff(ROLE_ADMIN)
def coverage(name: str) -> Any:
    """Cover all users or only selected users; a warning first when people would lose
    their coverage (the list emptied, or everyone not on it uncovered)."""
    domain = domain_or_404(db(), name)
    mode = request.form.get("mode", "")
    confirmed = request.form.get("confirmed") == "1"
    try:
        with changing(name) as (write, found):
            unchanged = found.coverage_mode == mode
            emptied = set_coverage_mode(write, found, mode, confirmed=confirmed, **actor())
    except Refused as refused:
        if refused.code == "confirm_all_users":
            return _confirm_all_users(domain, int(refused.params.get("count", 0)))
        if refused.code == "confirm_selected_users":
            return _confirm_selected_users(domain, int(refused.params.get("count", 0)))
        flash(refusal_text(refused.code, refused.params), "error")
        return to_domain(domain.name)
    if unchanged:
        flash(_("Nothing changed."), "notice")
    else:
        flash(
            _("Continuity Service now covers all users.")
            if mode == COVERAGE_ALL
            else _("Continuity Service now covers only selected users."),
            "notice",
        )
        if emptied:
            flash(
                ngettext(
                    "%(num)d individually added user was removed from the list.",
                    "%(num)d individually added users were removed from the list.",
                    emptied,
                ),
                "notice",
            )
    return to_domain(domain.name)


def _confirm_all_users(domain: Domain, listed: int) -> Any:
    """The warning before "all users" empties the list of ``listed`` people."""
    return confirm(
        domain,
        _("Cover all users of %(domain)s?", domain=domain.name),
        [
            _(
                "Everyone in the domain will be covered. If you go back to only selected"
                " users later, the list starts empty."
            )
        ],
        warning=ngettext(
            "The %(num)d individually added user will be removed from the list.",
            "The %(num)d individually added users will be removed from the list.",
            listed,
        ),
        fields={"mode": COVERAGE_ALL, "confirmed": "1"},
    )


def _confirm_selected_users(domain: Domain, uncovered: int) -> Any:
    """The warning before "only selected users" uncovers ``uncovered`` people."""
    return confirm(
        domain,
        _("Cover only selected users of %(domain)s?", domain=domain.name),
        [_("Only the users you add to the list will be covered."), losing_coverage()],
        warning=ngettext(
            "%(num)d user covered now is not on the list and will no longer be covered.",
            "%(num)d users covered now are not on the list and will no longer be covered.",
            uncovered,
        ),
        fields={"mode": COVERAGE_SELECTED, "confirmed": "1"},
        important=important(),
    )
