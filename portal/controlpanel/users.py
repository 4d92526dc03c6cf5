"""The list of selected users: one by one with suggestions, in bulk, and the cross that
takes someone off."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, flash, jsonify, render_template, request
from flask_babel import gettext as _
from sqlalchemy.exc import IntegrityError

from portal.access import background, staff
from portal.controlpanel.promises import losing_coverage
from portal.controlpanel.scope import (
    PEOPLE_INDEX,
    actor,
    bp,
    changing,
    confirm,
    domain_or_404,
    to_domain,
)
from portal.controlpanel.wording import CHANGED_MEANWHILE, refusal_text
from portal.forms import AddPersonForm, BulkForm
from portal.request_scope import body_limit, db
from roster.addresses import printable
from roster.bulk import ADD, REMOVE, BulkLine, bulk
from roster.domains import Refused
from roster.identity import ROLE_ADMIN, is_listed
from roster.models import COVERAGE_SELECTED, Domain, Person
from roster.search import PeopleIndex
from roster.service import add_person, remove_person_by_id

CSV_LIMIT = 1024 * 1024


@bp.route("/domains/<name>/add", methods=["GET", "POST"])
@staff(ROLE_ADMIN)
def add(name: str) -> Any:
    """Select a user and add them to the list (GET the form, POST the address)."""
    domain = domain_or_404(db(), name)
    form = AddPersonForm()
    if request.method == "GET":
        return _add_view(domain, form)
    typed = (form.address.data or "").strip()
    if not typed:
        return _add_view(domain, form, error=_("Type the address of the user to add."))
    try:
        with changing(name) as (write, found):
            person = add_person(write, found, typed, **actor())
            added = person.mail
    except Refused as refused:
        return _add_view(domain, form, error=refusal_text(refused.code, refused.params))
    except IntegrityError:
        return _add_view(domain, form, error=str(CHANGED_MEANWHILE))
    flash(_("%(address)s was added to the Continuity Service users.", address=added), "notice")
    return to_domain(domain.name)


def _add_view(
    domain: Domain,
    form: AddPersonForm,
    *,
    error: str | None = None,
    bulk_form: BulkForm | None = None,
    bulk_error: str | None = None,
    report: list[dict[str, Any]] | None = None,
) -> Any:
    """Render the add page: one address, bulk, and a bulk report if there is one."""
    failed = error is not None or bulk_error is not None
    return (
        render_template(
            "controlpanel/add.html",
            domain=domain,
            form=form,
            error=error,
            bulk_form=bulk_form or BulkForm(formdata=None),
            bulk_error=bulk_error,
            report=report,
            selected=domain.continuity_active and domain.coverage_mode == COVERAGE_SELECTED,
        ),
        400 if failed else 200,
    )


@bp.get("/domains/<name>/suggest")
@staff(ROLE_ADMIN)
@background
def suggest(name: str) -> Any:
    """People of the domain matching what the admin typed (3 characters on), as JSON."""
    domain = domain_or_404(db(), name)
    typed = printable(request.args.get("q") or "", 200)
    index: PeopleIndex = current_app.extensions[PEOPLE_INDEX]
    return jsonify(
        [
            {
                "id": found.person_id,
                "mail": found.mail,
                "name": found.display_name,
                "listed": found.listed,
                "disabled": found.disabled,
            }
            for found in index.suggest(db(), domain.id, typed)
        ]
    )


@bp.post("/domains/<name>/bulk")
@staff(ROLE_ADMIN)
@body_limit(2 * CSV_LIMIT)
def bulk_change(name: str) -> Any:
    """Add or remove every pasted address, or every address of a CSV file; a report."""
    domain = domain_or_404(db(), name)
    action = request.form.get("action")
    if action not in (ADD, REMOVE):
        abort(400)
    form = BulkForm()
    text, problem = _bulk_text(form)
    if problem is not None:
        return _add_view(domain, AddPersonForm(formdata=None), bulk_form=form, bulk_error=problem)
    try:
        with changing(name) as (write, found):
            lines = bulk(write, found, text, action, **actor())
    except (Refused, IntegrityError) as error:
        return _add_view(
            domain,
            AddPersonForm(formdata=None),
            bulk_form=form,
            bulk_error=refusal_text(error.code, error.params)
            if isinstance(error, Refused)
            else str(CHANGED_MEANWHILE),
        )
    return _add_view(domain, AddPersonForm(formdata=None), report=_report(lines, action))


def _bulk_text(form: BulkForm) -> tuple[str, str | None]:
    """The pasted text or the uploaded file's, or why there is none to use."""
    pasted = form.addresses.data or ""
    upload = form.csv_file.data
    if upload is not None and getattr(upload, "filename", None):
        if pasted.strip():
            return "", _("Paste addresses or choose a file, not both.")
        data = upload.stream.read(CSV_LIMIT + 1)
        if len(data) > CSV_LIMIT:
            return "", _("The file is larger than 1 MB: split it and send the parts one by one.")
        try:
            return data.decode("utf-8-sig"), None
        except UnicodeDecodeError:
            return "", _(
                "The file is not UTF-8 text. Save it from your spreadsheet as “CSV UTF-8”"
                " and try again."
            )
    if pasted.strip():
        return pasted, None
    return "", _("Paste addresses or choose a CSV file.")


def _report(lines: list[BulkLine], action: str) -> list[dict[str, Any]]:
    """The bulk report, each line worded."""
    done_text = _("Added") if action == ADD else _("Removed")
    return [
        {
            "line": line.line,
            "address": printable(line.address, 320),
            "done": line.done,
            "text": done_text if line.done else refusal_text(line.code, line.params),
        }
        for line in lines
    ]


@bp.route("/domains/<name>/people/<int(max=2147483647):person_id>/remove", methods=["GET", "POST"])
@staff(ROLE_ADMIN)
def remove(name: str, person_id: int) -> Any:
    """Take someone off the list: what happens (GET), then do it (POST)."""
    domain = domain_or_404(db(), name)
    if request.method == "GET":
        person = db().get(Person, person_id)
        if person is None or person.domain_id != domain.id or not is_listed(db(), person):
            abort(404)
        return confirm(
            domain,
            _("Remove %(address)s from the Continuity Service users?", address=person.mail),
            [losing_coverage()],
        )
    try:
        with changing(name) as (write, found):
            person = write.get(Person, person_id)
            if person is None or person.domain_id != found.id:
                abort(404)
            removed = remove_person_by_id(write, found, person.id, **actor()).mail
    except Refused as refused:
        flash(refusal_text(refused.code, refused.params), "error")
        return to_domain(domain.name)
    flash(
        _("%(address)s was removed from the Continuity Service users.", address=removed), "notice"
    )
    return to_domain(domain.name)
