"""Control Panel > Security settings > Continuity Service, for domain admins.

The scope selector lists the domains an admin administers; each domain's page shows the
overview and the settings: active or not, all users or only selected users, the list of
selected users (added one by one with suggestions, or in bulk), the emergency password
switch and reminders, the primary mail server, and the domain's audit trail.

The rules are roster.service's. A view finds the domain (a domain outside the admin's
scope is "not found", never "forbidden"), calls the rule inside one write transaction
that reads the domain again, and words the outcome in the reader's language.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal import helpdesk
from portal.access import db, staff, writing
from portal.auth import client_address
from portal.forms import (
    AddPersonForm,
    BulkForm,
    CoverageForm,
    EmergencySwitchForm,
    PrimaryForm,
)
from portal.notify import relay_configured, send_reminders
from roster.addresses import printable
from roster.domains import audit
from roster.identity import ROLE_ADMIN
from roster.models import COVERAGE_ALL, COVERAGE_SELECTED, AuditEvent, CoverageEntry, Domain, Person
from roster.probe import probe_smtp
from roster.search import PeopleIndex
from roster.service import (
    ADD,
    LISTED_SORTS,
    REMOVE,
    BulkLine,
    PrimarySettings,
    Refused,
    activate,
    add_person,
    bulk,
    check_primary,
    deactivate,
    domains_visible,
    listed_page,
    overview,
    remove_person_by_id,
    set_coverage_mode,
    set_emergency_password,
    set_primary,
    without_emergency_password,
)

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("controlpanel", __name__, url_prefix="/admin")

PAGE = 50
PEOPLE_INDEX = "roster_people_index"
"""The app.extensions key of the process's PeopleIndex (its cache lives with the worker)."""
CSV_LIMIT = 1024 * 1024
PROBE_TIMEOUT = 10.0

AUDIT_TEXTS = {
    "service.activated": _l("Continuity Service activated"),
    "service.deactivated": _l("Continuity Service deactivated"),
    "coverage.mode_changed": _l("Coverage changed between all users and only selected users"),
    "coverage.added": _l("Added to the Continuity Service users"),
    "coverage.removed": _l("Removed from the Continuity Service users"),
    "emergency_password.enabled": _l("Emergency password switched on for the domain"),
    "emergency_password.disabled": _l("Emergency password switched off for the domain"),
    "primary.changed": _l("Primary mail server settings changed"),
    "emergency_password.reminders_sent": _l("Reminders to set an emergency password sent"),
    "domain.added": _l("Domain added"),
    "staff.added": _l("Staff account added"),
}

CHANGED_MEANWHILE = _l(
    "Someone changed the list at the same moment: nothing was changed. Please try again."
)

REFUSALS = {
    "not_an_address": _l("“%(address)s” is not an email address."),
    "not_in_roster": _l(
        "%(address)s is not in the roster: nobody with this address came from the directory."
    ),
    "other_domain": _l("%(address)s is not an address of this domain."),
    "removed": _l("%(address)s has been removed from the directory."),
    "already_listed": _l("%(address)s is already on the list."),
    "not_listed": _l("%(address)s is not on the list."),
    "duplicate": _l("%(address)s is repeated on an earlier line."),
    "all_users": _l("This domain covers all users: choose “Only selected users” first."),
    "inactive": _l("Continuity Service is not active for this domain: activate it first."),
    "too_many": _l("%(count)d addresses: at most %(limit)d at a time. Nothing was changed."),
    "bad_csv": _l(
        "The file could not be read as CSV (line %(line)d): check its quotes. Nothing was changed."
    ),
    "bad_mode": _l("Choose all users or only selected users."),
    "primary_host": _l("“%(value)s” is not a host name or IP address."),
    "primary_port": _l("The port must be a whole number from %(low)d to %(high)d."),
    "primary_tls": _l("Choose one of the encryption options."),
    "probe_interval": _l(
        "The seconds between probes must be a whole number from %(low)d to %(high)d."
    ),
    "failures_before_failover": _l(
        "The failed probes before failover must be a whole number from %(low)d to %(high)d."
    ),
}

SYNC_OUTCOMES = {
    "success": _l("succeeded"),
    "failed": _l("failed"),
    "guard": _l("stopped by a safety check: nothing was changed"),
    "running": _l("running"),
    "dry-run": _l("trial run: nothing was changed"),
}

SYNC_COUNTS = {
    "created": _l("new"),
    "updated": _l("updated"),
    "renamed": _l("renamed"),
    "disabled": _l("disabled"),
    "enabled": _l("enabled again"),
    "restored": _l("back in the directory"),
    "removed": _l("removed"),
    "unchanged": _l("unchanged"),
    "skipped_unknown_domain": _l("skipped: another domain"),
    "skipped_invalid": _l("skipped: not valid"),
    "skipped_conflict": _l("skipped: address in use"),
    "staff_roles": _l("staff roles"),
}

PROBE_STAGES = {
    "connect": _l("connecting"),
    "greeting": _l("greeting"),
    "tls": _l("TLS"),
    "ehlo": _l("EHLO"),
    "done": _l("done"),
}

# Which field of the primary form each refusal of check_primary names.
PRIMARY_FIELDS = {
    "primary_host": "host",
    "primary_port": "port",
    "primary_tls": "tls",
    "probe_interval": "probe_interval",
    "failures_before_failover": "failures_before_failover",
}


def audit_text(action: str) -> str:
    """What an audit action means, in the reader's language (the helpdesk's too)."""
    text = AUDIT_TEXTS.get(action)
    return str(text) if text is not None else helpdesk.audit_text(action)


def refusal_text(code: str, params: Mapping[str, Any]) -> str:
    """Why roster.service refused a change, in the reader's language."""
    text = REFUSALS.get(code)
    if text is None:
        return _("The change was refused.")
    try:
        return str(text) % dict(params)
    except (KeyError, TypeError, ValueError):
        return _("The change was refused.")


def state_lines(state: Mapping[str, Any] | None) -> list[str]:
    """An audit event's before or after state as "key: value" lines."""
    if not state:
        return []
    return [f"{key}: {_plain(value)}" for key, value in state.items()]


def sync_counts(counts: Mapping[str, Any] | None) -> list[str]:
    """A sync run's non-zero counts, worded."""
    return [
        f"{SYNC_COUNTS.get(key, key)}: {value}" for key, value in (counts or {}).items() if value
    ]


def _plain(value: Any) -> str:
    """A stored setting as text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def body_limit(limit: int) -> Callable[[F], F]:
    """Let this endpoint take a request body of up to ``limit`` bytes (a file upload)."""

    def decorate(view: F) -> F:
        view._body_limit = limit  # type: ignore[attr-defined]
        return view

    return decorate


def raise_body_limit() -> None:
    """Apply an endpoint's own body limit; runs before CSRFProtect reads the form."""
    view = current_app.view_functions.get(request.endpoint or "")
    limit = getattr(view, "_body_limit", None)
    if limit is not None:
        request.max_content_length = limit


def _scope() -> set[int] | None:
    """The domains this admin administers (None: a global admin, all)."""
    return current_user.domains_for(ROLE_ADMIN)  # type: ignore[no-any-return]


def _domain_or_404(session: Session, name: str) -> Domain:
    """The domain ``name`` if this admin administers it; any other is "not found"."""
    domain = session.scalar(select(Domain).where(Domain.name == name.strip().lower()[:253]))
    scope = _scope()
    if domain is None or (scope is not None and domain.id not in scope):
        abort(404)
    return domain


@contextmanager
def _changing(name: str) -> Iterator[tuple[Session, Domain]]:
    """A write transaction and the admin's domain ``name`` read inside it."""
    db().rollback()  # the request's read snapshot ends before the write lock is taken
    with writing() as write:
        yield write, _domain_or_404(write, name)


def _actor() -> dict[str, Any]:
    """Who makes a change and from where, as roster.service takes them."""
    return {"actor": current_user.address, "client": client_address()}


def _page_number() -> int:
    """The page asked for (from 1)."""
    return min(max(request.args.get("page", 1, type=int) or 1, 1), 1_000_000)


def _to_domain(name: str) -> Any:
    """Back to the domain's page."""
    return redirect(url_for("controlpanel.domain_page", name=name))


def _confirm(
    domain: Domain,
    heading: str,
    points: list[str],
    *,
    warning: str | None = None,
    fields: dict[str, str] | None = None,
) -> Any:
    """A confirmation step: what will happen, "Confirm" (POST here again) and "Cancel"."""
    return render_template(
        "controlpanel/confirm.html",
        domain=domain,
        heading=heading,
        points=points,
        warning=warning,
        action=request.path,
        fields=fields or {},
    )


# ---------------------------------------------------------------------------
# The scope selector and the domain's page
# ---------------------------------------------------------------------------
@bp.get("")
@staff(ROLE_ADMIN)
def domains() -> Any:
    """The scope selector (the domains this admin administers) and, for the domain
    chosen in it, the Control Panel's menu: Security settings > Continuity Service."""
    visible = domains_visible(db(), _scope())
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
    return _domain_view(_domain_or_404(db(), name))


def _primary_form(domain: Domain) -> PrimaryForm:
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
        },
    )


def _domain_view(
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
    page = _page_number()
    rows, total = [], 0
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
            primary_form=primary or _primary_form(domain),
            primary_errors=primary_errors or {},
            probe=probe,
            probe_stages=PROBE_STAGES,
            relay_configured=relay_configured(config),
        ),
        status,
    )


# ---------------------------------------------------------------------------
# Activate, deactivate
# ---------------------------------------------------------------------------
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
    domain = _domain_or_404(db(), name)
    if request.method == "GET":
        if on:
            heading = _("Activate Continuity Service for %(domain)s?", domain=domain.name)
            points = [
                _("From now on a standby copy of incoming mail is kept for the covered users."),
                _(
                    "During an outage of the primary mail server, covered users can read and"
                    " send mail in the standby webmail, signing in with their emergency"
                    " password if it is switched on."
                ),
                _("The change takes effect at once."),
            ]
        else:
            heading = _("Deactivate Continuity Service for %(domain)s?", domain=domain.name)
            points = [
                _("No more standby copies of incoming mail are kept."),
                _(
                    "Nobody can sign in to the standby webmail or with an emergency password"
                    " any more; such sessions end at once."
                ),
                _(
                    "Mail already held is not lost: it is still handed back to the primary"
                    " mail server."
                ),
                _(
                    "The list of selected users and the settings are kept for when you"
                    " activate it again."
                ),
            ]
        return _confirm(domain, heading, points)
    with _changing(name) as (write, found):
        changed = (activate if on else deactivate)(write, found, **_actor())
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
    return _to_domain(found.name)


# ---------------------------------------------------------------------------
# All users or only selected users
# ---------------------------------------------------------------------------
@bp.post("/domains/<name>/coverage")
@staff(ROLE_ADMIN)
def coverage(name: str) -> Any:
    """Cover all users or only selected users; a warning first when the list would empty."""
    domain = _domain_or_404(db(), name)
    mode = request.form.get("mode", "")
    confirmed = request.form.get("confirmed") == "1"
    try:
        with _changing(name) as (write, found):
            unchanged = found.coverage_mode == mode
            emptied = set_coverage_mode(write, found, mode, confirmed=confirmed, **_actor())
    except Refused as refused:
        if refused.code != "confirm_all_users":
            flash(refusal_text(refused.code, refused.params), "error")
            return _to_domain(domain.name)
        count = int(refused.params.get("count", 0))
        return _confirm(
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
                count,
            ),
            fields={"mode": COVERAGE_ALL, "confirmed": "1"},
        )
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
    return _to_domain(domain.name)


# ---------------------------------------------------------------------------
# The list of selected users: one by one, with suggestions, and in bulk
# ---------------------------------------------------------------------------
@bp.route("/domains/<name>/add", methods=["GET", "POST"])
@staff(ROLE_ADMIN)
def add(name: str) -> Any:
    """Select a user and add them to the list (GET the form, POST the address)."""
    domain = _domain_or_404(db(), name)
    form = AddPersonForm()
    if request.method == "GET":
        return _add_view(domain, form)
    typed = (form.address.data or "").strip()
    if not typed:
        return _add_view(domain, form, error=_("Type the address of the user to add."))
    try:
        with _changing(name) as (write, found):
            person = add_person(write, found, typed, **_actor())
            added = person.mail
    except Refused as refused:
        return _add_view(domain, form, error=refusal_text(refused.code, refused.params))
    except IntegrityError:
        return _add_view(domain, form, error=str(CHANGED_MEANWHILE))
    flash(_("%(address)s was added to the Continuity Service users.", address=added), "notice")
    return _to_domain(domain.name)


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
def suggest(name: str) -> Any:
    """People of the domain matching what the admin typed (3 characters on), as JSON."""
    domain = _domain_or_404(db(), name)
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
    domain = _domain_or_404(db(), name)
    action = request.form.get("action")
    if action not in (ADD, REMOVE):
        abort(400)
    form = BulkForm()
    text, problem = _bulk_text(form)
    if problem is not None:
        return _add_view(domain, AddPersonForm(formdata=None), bulk_form=form, bulk_error=problem)
    try:
        with _changing(name) as (write, found):
            lines = bulk(write, found, text, action, **_actor())
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
    if upload is not None and getattr(upload, "filename", ""):
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
    domain = _domain_or_404(db(), name)
    if request.method == "GET":
        person = db().get(Person, person_id)
        listed = db().scalar(select(CoverageEntry.id).where(CoverageEntry.person_id == person_id))
        if person is None or person.domain_id != domain.id or listed is None:
            abort(404)
        return _confirm(
            domain,
            _("Remove %(address)s from the Continuity Service users?", address=person.mail),
            [
                _(
                    "They will no longer be covered: no standby copies of their mail, no"
                    " standby webmail, no emergency password sign-in."
                )
            ],
        )
    try:
        with _changing(name) as (write, found):
            person = write.get(Person, person_id)
            if person is None or person.domain_id != found.id:
                abort(404)
            removed = remove_person_by_id(write, found, person.id, **_actor()).mail
    except Refused as refused:
        flash(refusal_text(refused.code, refused.params), "error")
        return _to_domain(domain.name)
    flash(
        _("%(address)s was removed from the Continuity Service users.", address=removed), "notice"
    )
    return _to_domain(domain.name)


# ---------------------------------------------------------------------------
# The emergency password: the switch and the reminders
# ---------------------------------------------------------------------------
@bp.post("/domains/<name>/emergency-password")
@staff(ROLE_ADMIN)
def emergency_password(name: str) -> Any:
    """Switch the emergency password on or off for the domain."""
    domain = _domain_or_404(db(), name)
    enabled = EmergencySwitchForm().enabled.data is True
    try:
        with _changing(name) as (write, found):
            changed = set_emergency_password(write, found, enabled, **_actor())
    except Refused as refused:
        flash(refusal_text(refused.code, refused.params), "error")
        return _to_domain(domain.name)
    if not changed:
        flash(_("Nothing changed."), "notice")
    elif enabled:
        flash(_("The emergency password is now switched on for this domain."), "notice")
    else:
        flash(_("The emergency password is now switched off for this domain."), "notice")
    return _to_domain(domain.name)


@bp.post("/domains/<name>/remind")
@staff(ROLE_ADMIN)
def remind(name: str) -> Any:
    """Email every covered person without an emergency password a reminder to set one."""
    session = db()
    domain = _domain_or_404(session, name)
    config = current_app.config["CONTINUITY"]
    if not relay_configured(config):
        flash(_("The outbound relay is not configured: no reminder can be sent."), "error")
        return _to_domain(domain.name)
    if not domain.emergency_password_enabled:
        flash(
            _(
                "The emergency password is switched off for this domain: switch it on before"
                " asking people to set one."
            ),
            "error",
        )
        return _to_domain(domain.name)
    if not config.portal.get("base_url"):
        # The link in a reminder comes from the configuration, never from the request's
        # Host header, which whoever sends the request chooses.
        flash(_("The portal's public address is not configured: no reminder can be sent."), "error")
        return _to_domain(domain.name)
    people = [
        (person.mail, person.display_name)
        for person in session.scalars(without_emergency_password(domain))
    ]
    session.rollback()  # no transaction is held while the relay takes its time
    if not people:
        flash(_("Everyone covered has set an emergency password: nobody to remind."), "notice")
        return _to_domain(domain.name)
    sent, failed = send_reminders(config, people, str(config.portal["base_url"]))
    with _changing(name) as (write, found):
        audit(
            write,
            current_user.address,
            "emergency_password.reminders_sent",
            domain_id=found.id,
            client=client_address(),
            detail=f"{sent} sent, {failed} failed",
        )
    flash(
        ngettext("%(num)d reminder sent.", "%(num)d reminders sent.", sent),
        "notice" if sent else "error",
    )
    if failed:
        flash(
            ngettext(
                "%(num)d reminder could not be sent.",
                "%(num)d reminders could not be sent.",
                failed,
            ),
            "error",
        )
    return _to_domain(domain.name)


# ---------------------------------------------------------------------------
# The primary mail server
# ---------------------------------------------------------------------------
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
    domain = _domain_or_404(db(), name)
    form = PrimaryForm()
    settings, errors = _checked_primary(form)
    if settings is None:
        return _domain_view(domain, primary=form, primary_errors=errors, status=400)
    with _changing(name) as (write, found):
        changed = set_primary(write, found, settings, **_actor())
    flash(
        _("The primary mail server settings are saved.") if changed else _("Nothing changed."),
        "notice",
    )
    return _to_domain(domain.name)


@bp.post("/domains/<name>/primary/test")
@staff(ROLE_ADMIN)
def probe_primary(name: str) -> Any:
    """Try the primary mail server typed in the form (saved or not) and show what it said."""
    domain = _domain_or_404(db(), name)
    form = PrimaryForm()
    settings, errors = _checked_primary(form)
    if settings is None:
        return _domain_view(domain, primary=form, primary_errors=errors, status=400)
    db().rollback()  # no transaction is held while the probe waits for the server
    result = probe_smtp(settings.host, settings.port, settings.tls, timeout=PROBE_TIMEOUT)
    return _domain_view(domain, primary=form, probe=result)


# ---------------------------------------------------------------------------
# The audit trail
# ---------------------------------------------------------------------------
@bp.get("/domains/<name>/audit")
@staff(ROLE_ADMIN)
def audit_page(name: str) -> Any:
    """The domain's audit trail, newest first."""
    session = db()
    domain = _domain_or_404(session, name)
    total = (
        session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.domain_id == domain.id)
        )
        or 0
    )
    pages = max(1, -(-total // PAGE))
    page = min(_page_number(), pages)
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
        state_lines=state_lines,
    )
