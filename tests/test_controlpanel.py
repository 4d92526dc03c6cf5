"""Control Panel > Security settings > Continuity Service: a domain admin's pages, over the
real portal, roster, directory and, for reminders and "test connection", real aiosmtpd
servers on loopback."""

from __future__ import annotations

import email
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import pytest
from flask import Flask, url_for
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

from continuity.localslapd import free_port
from portal import create_app
from roster.config import load_config
from roster.models import AuditEvent, CoverageEntry, Domain, Person
from roster.search import PeopleIndex
from tests.portal_support import (
    DOMAIN,
    EMERGENCY,
    OTHER_DOMAIN,
    STAFF_PASSWORD,
    Portal,
    csrf_token,
    location_path,
    portal_table,
    sign_in,
    signed_in_client,
    submit,
    text,
)
from tests.servers.smtp import Collect, smtp_server

PAGE = f"/admin/domains/{DOMAIN}"
SPANISH = {"Accept-Language": "es"}


@pytest.fixture
def panel(portal: Portal) -> Portal:
    """Ana, Bo and Cy at acme.test, Carl at other.test; an admin for each domain."""
    portal.add_person("ana", display_name="Ana García")
    portal.add_person("bo", display_name="Bo Berg")
    portal.add_person("cy", display_name="Cy Young")
    portal.add_person("carl", "carl@other.test", display_name="Carl Ortega")
    portal.sync()
    portal.add_staff("admin@acme.test", "admin")
    return portal


def admin_of(portal: Portal, domain: str = DOMAIN, app: Flask | None = None) -> FlaskClient:
    """A browser signed in as the local admin account of ``domain``."""
    if app is None:
        return signed_in_client(portal, f"admin@{domain}", STAFF_PASSWORD)
    client = app.test_client()
    assert sign_in(client, f"admin@{domain}", STAFF_PASSWORD).status_code == 302
    return client


def post(
    client: FlaskClient,
    action: str,
    data: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> TestResponse:
    """POST to ``action`` with the browser's CSRF token (read from the domain's page)."""
    return submit(client, "/admin", data or {}, action=action, headers=headers)


def listed(portal: Portal, domain: str = DOMAIN) -> list[str]:
    """The addresses on a domain's list of selected users."""
    with Session(portal.engine) as session:
        return list(
            session.scalars(
                select(Person.mail)
                .join(CoverageEntry, CoverageEntry.person_id == Person.id)
                .join(Domain, Domain.id == CoverageEntry.domain_id)
                .where(Domain.name == domain)
                .order_by(Person.mail)
            )
        )


def domain_row(portal: Portal, name: str = DOMAIN) -> Domain:
    """The domain's roster row as it is now."""
    with Session(portal.engine) as session:
        found = session.scalar(select(Domain).where(Domain.name == name))
        assert found is not None
        return found


def table_addresses(page: str) -> list[str]:
    """The addresses in the "Continuity Service users" table of a domain's page."""
    found = re.search(r'<table class="users" id="listed">.*?</table>', page, re.DOTALL)
    if not found:
        return []
    return re.findall(r"<tr>\s*<td[^>]*>([^<\s]+)", found.group(0))


def flashes(page: str) -> list[str]:
    """The flashed messages on a page."""
    return [m.strip() for m in re.findall(r'<p class="flash [^"]*"[^>]*>(.*?)</p>', page)]


def field_error(page: str, field_id: str) -> str:
    """The error message shown under a form field."""
    found = re.search(rf'<p class="field-error" id="{field_id}-error"[^>]*>(.*?)</p>', page)
    return found.group(1) if found else ""


@contextmanager
def app_with_relay(
    portal: Portal,
    relay: str,
    base_url: str | None = "https://continuity.example",
    login: tuple[str, str] | None = None,
) -> Iterator[Flask]:
    """The portal built from a configuration with an [outbound] relay and a base_url."""
    settings = {**portal.settings, **({"base_url": base_url} if base_url else {})}
    outbound = f'[outbound]\nrelay = "{relay}"\n'
    if login:
        outbound += f'username = "{login[0]}"\npassword = "{login[1]}"\n'
    portal.tool.configure(portal.source, portal_table(**settings), outbound)
    app = create_app(config=load_config(portal.tool.path, environ={}))
    portal.tool.configure(portal.source, portal_table(**portal.settings))
    try:
        yield app
    finally:
        app.extensions["roster_engine"].dispose()


# The scope selector and who may come in.


def test_scope_selector_lists_only_the_admins_domains(panel: Portal) -> None:
    panel.add_staff("root@example.net", "global-admin", None)
    admin = admin_of(panel)
    root = signed_in_client(panel, "root@example.net", STAFF_PASSWORD)

    mine = text(admin.get("/admin"))
    everything = text(root.get("/admin"))
    spanish = text(admin.get("/admin", headers=SPANISH))

    options = re.compile(r'<option value="([^"]+)"')
    assert options.findall(mine) == [DOMAIN]
    assert options.findall(everything) == [DOMAIN, OTHER_DOMAIN]
    # One domain: it is chosen already, and its menu leads to Continuity Service.
    assert "Select a domain" in mine and "Security settings" in mine
    assert f'href="/admin/domains/{DOMAIN}">Continuity Service</a>' in mine
    assert "Selección de ámbitos" in spanish and "Configuración de seguridad" in spanish
    # Several: nothing is chosen until the global admin picks one in the selector.
    assert "/admin/domains/" not in everything
    picked = text(root.get(f"/admin?domain={OTHER_DOMAIN}"))
    assert f'href="/admin/domains/{OTHER_DOMAIN}">Continuity Service</a>' in picked
    assert admin.get(f"/admin?domain={OTHER_DOMAIN}").status_code == 404
    page = text(admin.get(PAGE, headers=SPANISH))
    assert "<h1>Configuración de seguridad > Continuity Service</h1>" in page
    assert '<a href="/admin">Control Panel</a>' in text(admin.get("/me"))
    assert root.get(f"/admin/domains/{OTHER_DOMAIN}").status_code == 200


def test_helpdesk_and_end_users_may_not_open_the_control_panel(panel: Portal) -> None:
    panel.add_staff("helpdesk@acme.test", "helpdesk")
    helpdesk = signed_in_client(panel, "helpdesk@acme.test", STAFF_PASSWORD)
    ana = signed_in_client(panel, "ana@acme.test")

    answers = {
        (who, url): client.get(url).status_code
        for who, client in (("helpdesk", helpdesk), ("ana", ana))
        for url in ("/admin", PAGE, f"{PAGE}/suggest?q=ana", f"{PAGE}/audit")
    }

    assert answers == dict.fromkeys(answers, 403)
    assert "Control Panel" not in text(helpdesk.get("/me"))
    assert location_path(panel.client().get("/admin")) == "/sign-in"


def test_an_admin_of_another_domain_finds_nothing_here(panel: Portal) -> None:
    panel.add_staff("admin@other.test", "admin", OTHER_DOMAIN)
    panel.set_domain(active=True, mode="selected")
    panel.list_person("ana@acme.test")
    ana_id = panel.person_id("ana@acme.test")
    other = admin_of(panel, OTHER_DOMAIN)
    token = csrf_token(text(other.get("/admin")))
    answers = {}
    with panel.app.test_request_context():
        for rule in panel.app.url_map.iter_rules():
            if not rule.endpoint.startswith("controlpanel.") or "name" not in rule.arguments:
                continue
            arguments: dict[str, Any] = dict.fromkeys(rule.arguments, "1")
            arguments["name"] = DOMAIN
            if "person_id" in rule.arguments:
                arguments["person_id"] = ana_id
            url = url_for(rule.endpoint, **arguments)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                data = {"csrf_token": token, "mode": "all", "confirmed": "1", "action": "add"}
                data |= {"address": "ana@acme.test", "addresses": "ana@acme.test"}
                response = other.get(url) if method == "GET" else other.post(url, data=data)
                answers[(method, url)] = response.status_code
    guessed = {
        "page": other.get(f"/admin/domains/{OTHER_DOMAIN}/people/{ana_id}/remove").status_code,
        "post": post(other, f"/admin/domains/{OTHER_DOMAIN}/people/{ana_id}/remove").status_code,
    }
    suggestions = other.get(f"/admin/domains/{OTHER_DOMAIN}/suggest?q=acme").get_json()

    assert len(answers) >= 12, answers
    assert answers == dict.fromkeys(answers, 404)
    assert guessed == {"page": 404, "post": 404}
    assert suggestions == []
    assert listed(panel) == ["ana@acme.test"]
    assert domain_row(panel).coverage_mode == "selected"
    assert [a for a, _actor in panel.audit_actions() if a.startswith("coverage")] == []


# Activate and deactivate: a confirmation first, and the effect is immediate.


def test_activate_and_deactivate_take_effect_at_once(panel: Portal) -> None:
    panel.set_domain(active=False, emergency=True)
    panel.set_emergency_password("ana@acme.test")
    admin = admin_of(panel)
    assert sign_in(panel.client(), "ana@acme.test", EMERGENCY).status_code == 401
    page = text(admin.get(PAGE))
    assert "Continuity Service is not active for this domain." in page
    # Regression: the buttons were GET forms without fields, so the confirmation
    # pages' addresses ended with "?".
    assert f'<a class="button primary" id="activate" href="{PAGE}/activate">' in page
    assert "Only selected users" not in page

    confirm = text(admin.get(f"{PAGE}/activate"))
    activated = post(admin, f"{PAGE}/activate")

    assert "Activate Continuity Service for acme.test?" in confirm
    # The manual's "Important" where the admin decides, and promises of only what the
    # product does: standby copies and the webmail, nothing more.
    important = re.search(r'<aside class="important".*?</aside>', confirm, re.DOTALL)
    assert important and "Keep Continuity Service permanently active." in important.group(0)
    assert "not in its archive" in important.group(0)
    # Standby copies (issue #9) and the webmail (issue #11) exist: the page says what
    # activation does to the archive, and that the webmail opens in an outage.
    points = re.search(r'<ul class="points">(.*?)</ul>', confirm, re.DOTALL)
    assert points and re.findall(r"<li>(.*?)</li>", points.group(1))[:2] == [
        "From now on a standby copy of incoming mail is kept for the covered users.",
        "The archive starts now: mail that arrived before the activation is not in it.",
    ]
    assert "covered users can read and send mail in the standby webmail" in confirm
    assert ">Confirm</button>" in confirm and f'href="{PAGE}">Cancel</a>' in confirm
    assert location_path(activated) == PAGE
    page = text(admin.get(PAGE))
    assert "Continuity Service is now active for acme.test." in flashes(page)
    assert "All users" in page and "Only selected users" in page
    ana = panel.client()
    assert sign_in(ana, "ana@acme.test", EMERGENCY).status_code == 302

    confirm = text(admin.get(f"{PAGE}/deactivate", headers=SPANISH))
    assert "Confirmar" in confirm
    confirm = text(admin.get(f"{PAGE}/deactivate"))
    assert (
        "Nobody can sign in to the standby webmail or with an emergency password any more"
        in confirm
    )
    assert "Keep Continuity Service permanently active." in confirm
    assert "No more standby copies of incoming mail are kept." in confirm
    assert (
        "The archive of mail copied so far is kept until the retention period removes it."
        in confirm
    )
    assert location_path(post(admin, f"{PAGE}/deactivate")) == PAGE

    assert location_path(ana.get("/me")) == "/sign-in"  # her emergency session ended
    assert sign_in(panel.client(), "ana@acme.test", EMERGENCY).status_code == 401
    assert "Continuity Service is now inactive for acme.test." in flashes(text(admin.get(PAGE)))
    assert [a for a in panel.audit_actions() if a[0].startswith("service.")] == [
        ("service.activated", "admin@acme.test"),
        ("service.deactivated", "admin@acme.test"),
    ]


# All users or only selected users.


def test_going_to_all_users_warns_with_the_count_then_empties_the_list(panel: Portal) -> None:
    panel.set_domain(active=True, mode="selected")
    panel.list_person("ana@acme.test")
    panel.list_person("bo@acme.test")
    admin = admin_of(panel)
    page = text(admin.get(PAGE))
    assert table_addresses(page) == ["ana@acme.test", "bo@acme.test"]
    assert re.search(r'<input checked [^>]*value="selected"', page)

    warning = post(admin, f"{PAGE}/coverage", {"mode": "all"})
    spanish = post(admin, f"{PAGE}/coverage", {"mode": "all"}, headers=SPANISH)

    assert warning.status_code == 200
    shown = text(warning)
    assert "The 2 individually added users will be removed from the list." in shown
    assert '<input type="hidden" name="confirmed" value="1">' in shown
    assert ">Confirm</button>" in shown and f'<a class="button" href="{PAGE}">Cancel</a>' in shown
    assert "Confirmar" in text(spanish) and "Cancelar" in text(spanish)
    assert listed(panel) == ["ana@acme.test", "bo@acme.test"]  # nothing happened yet
    assert domain_row(panel).coverage_mode == "selected"

    confirmed = post(admin, f"{PAGE}/coverage", {"mode": "all", "confirmed": "1"})

    assert location_path(confirmed) == PAGE
    page = text(admin.get(PAGE))
    assert "Continuity Service now covers all users." in flashes(page)
    assert "2 individually added users were removed from the list." in flashes(page)
    assert listed(panel) == [] and domain_row(panel).coverage_mode == "all"
    assert "Continuity Service users" not in page
    assert '<dd id="covered">3</dd>' in page

    post(admin, f"{PAGE}/coverage", {"mode": "selected", "confirmed": "1"})
    page = text(admin.get(PAGE))
    assert "Continuity Service now covers only selected users." in flashes(page)
    assert "0 users on the list." in page and table_addresses(page) == []
    assert '<dd id="covered">0</dd>' in page


def test_going_to_selected_users_warns_with_the_count_of_the_uncovered(panel: Portal) -> None:
    """Regression: going from all users to only selected users with nobody listed
    uncovered everyone (3 covered people became 0) without a word."""
    panel.set_domain(active=True, mode="all")
    admin = admin_of(panel)
    assert '<dd id="covered">3</dd>' in text(admin.get(PAGE))

    warning = post(admin, f"{PAGE}/coverage", {"mode": "selected"})
    spanish = post(admin, f"{PAGE}/coverage", {"mode": "selected"}, headers=SPANISH)

    assert warning.status_code == 200
    shown = text(warning)
    assert "Cover only selected users of acme.test?" in shown
    assert "3 users covered now are not on the list and will no longer be covered." in flashes(
        shown
    )
    assert '<input type="hidden" name="mode" value="selected">' in shown
    assert '<input type="hidden" name="confirmed" value="1">' in shown
    assert "Keep Continuity Service permanently active." in shown  # the manual's note
    assert "3 usuarios cubiertos ahora no están en la lista" in text(spanish)
    assert domain_row(panel).coverage_mode == "all"  # nothing happened yet
    assert '<dd id="covered">3</dd>' in text(admin.get(PAGE))

    confirmed = post(admin, f"{PAGE}/coverage", {"mode": "selected", "confirmed": "1"})

    assert location_path(confirmed) == PAGE
    page = text(admin.get(PAGE))
    assert "Continuity Service now covers only selected users." in flashes(page)
    assert domain_row(panel).coverage_mode == "selected"
    assert '<dd id="covered">0</dd>' in page


# The list of selected users, one by one.


def test_the_list_is_sorted_and_paged(panel: Portal) -> None:
    for number in range(50):
        panel.add_person(f"u{number:02}", password=None, display_name=f"Zed {99 - number}")
    panel.sync()
    panel.set_domain(active=True, mode="selected")
    admin = admin_of(panel)
    everyone = "\n".join(["ana@acme.test"] + [f"u{n:02}@acme.test" for n in range(50)])
    assert post(admin, f"{PAGE}/bulk", {"addresses": everyone, "action": "add"}).status_code == 200

    first = text(admin.get(PAGE))
    second = text(admin.get(PAGE, query_string={"page": 2}))
    beyond = text(admin.get(PAGE, query_string={"page": 9}))
    by_name = text(admin.get(PAGE, query_string={"sort": "name"}))

    assert "51 users on the list." in first and "Page 1 of 2" in first
    assert table_addresses(first) == ["ana@acme.test"] + [f"u{n:02}@acme.test" for n in range(49)]
    assert f'href="{PAGE}?page=2&sort=address" rel="next"' in first
    assert table_addresses(second) == ["u49@acme.test"] and "Page 2 of 2" in second
    assert table_addresses(beyond) == ["u49@acme.test"]
    assert table_addresses(by_name)[:3] == ["ana@acme.test", "u49@acme.test", "u48@acme.test"]
    assert '<th aria-sort="ascending"><a href="/admin/domains/acme.test?sort=name">' in by_name


def test_add_a_user_through_the_form_and_every_refusal(panel: Portal) -> None:
    panel.add_person("gone")
    panel.sync()
    panel.tree.delete("gone")
    panel.sync("--allow-mass-removal")
    panel.set_domain(active=True, mode="selected")
    admin = admin_of(panel)
    add_page = text(admin.get(f"{PAGE}/add"))
    assert '<label for="address">Select user</label>' in add_page
    assert 'list="address-suggestions"' in add_page
    assert '<script src="/static/controlpanel.js" defer></script>' in add_page

    added = post(admin, f"{PAGE}/add", {"address": " Ana@ACME.test "})

    assert location_path(added) == PAGE
    page = text(admin.get(PAGE))
    assert "ana@acme.test was added to the Continuity Service users." in flashes(page)
    assert table_addresses(page) == ["ana@acme.test"]
    refusals = {}
    for typed in (
        "ana@acme.test",
        "nobody@acme.test",
        "carl@other.test",
        "gone@acme.test",
        "not an address",
        "",
    ):
        response = post(admin, f"{PAGE}/add", {"address": typed})
        assert response.status_code == 400, typed
        refusals[typed] = re.findall(r'id="address-error" role="alert">(.*?)</p>', text(response))
    spanish = post(admin, f"{PAGE}/add", {"address": "nobody@acme.test"}, headers=SPANISH)

    assert refusals == {
        "ana@acme.test": ["ana@acme.test is already on the list."],
        "nobody@acme.test": [
            "nobody@acme.test is not in the roster: nobody with this address came from the"
            " directory."
        ],
        "carl@other.test": ["carl@other.test is not an address of this domain."],
        "gone@acme.test": ["gone@acme.test has been removed from the directory."],
        "not an address": ["“not an address” is not an email address."],
        "": ["Type the address of the user to add."],
    }
    assert "nobody@acme.test no está en el censo de Continuity" in text(spanish)
    assert 'value="nobody@acme.test"' in text(spanish)  # what was typed stays
    assert listed(panel) == ["ana@acme.test"]
    assert ("coverage.added", "admin@acme.test") in panel.audit_actions("ana@acme.test")

    post(admin, f"{PAGE}/coverage", {"mode": "all", "confirmed": "1"})
    all_users = text(post(admin, f"{PAGE}/add", {"address": "bo@acme.test"}))
    post(admin, f"{PAGE}/deactivate")
    inactive = text(post(admin, f"{PAGE}/add", {"address": "bo@acme.test"}))
    assert "This domain covers all users: choose “Only selected users” first." in all_users
    assert "Continuity Service is not active for this domain: activate it first." in inactive
    assert listed(panel) == []


def test_suggestions_need_three_characters_stay_in_the_domain_and_are_few(
    panel: Portal,
) -> None:
    for number in range(12):
        panel.add_person(f"sam{number:02}", password=None, display_name=f"Sam {number}")
    panel.add_person("samuel", "samuel@other.test", password=None)
    panel.sync()
    panel.set_domain(active=True, mode="selected")
    panel.list_person("sam00@acme.test")
    admin = admin_of(panel)

    def suggest(typed: str, domain: str = DOMAIN) -> Any:
        response = admin.get(f"/admin/domains/{domain}/suggest", query_string={"q": typed})
        return response.get_json() if response.status_code == 200 else response.status_code

    many = suggest("sam")

    assert isinstance(panel.app.extensions["roster_people_index"], PeopleIndex)
    assert len(many) == 10
    assert [item["mail"] for item in many] == [f"sam{n:02}@acme.test" for n in range(10)]
    assert many[0] == {
        "id": panel.person_id("sam00@acme.test"),
        "mail": "sam00@acme.test",
        "name": "Sam 0",
        "listed": True,
        "disabled": False,
    }
    assert not any(item["listed"] for item in many[1:])
    assert suggest("sa") == [] and suggest("") == []
    assert [item["mail"] for item in suggest("garc")] == ["ana@acme.test"]
    assert suggest("samuel") == [] and suggest("carl") == [] and suggest("other.test") == []
    assert suggest("carl", OTHER_DOMAIN) == 404
    assert suggest("sam", "nowhere.test") == 404


def test_remove_a_user_with_the_cross(panel: Portal) -> None:
    panel.set_domain(active=True, mode="selected")
    panel.list_person("ana@acme.test")
    panel.list_person("bo@acme.test")
    ana_id = panel.person_id("ana@acme.test")
    admin = admin_of(panel)
    page = text(admin.get(PAGE))
    remove = f"{PAGE}/people/{ana_id}/remove"
    assert f'<a class="cross" href="{remove}" aria-label="Remove ana@acme.test"' in page
    assert ">×</a>" in page
    assert "Quitar usuario" in text(admin.get(PAGE, headers=SPANISH))

    confirm = text(admin.get(remove))
    spanish_confirm = text(admin.get(remove, headers=SPANISH))
    removed = post(admin, remove)

    assert "Remove ana@acme.test from the Continuity Service users?" in confirm
    # Standby copies (issue #9) and the webmail (issue #11): what removal takes away.
    assert (
        "They will no longer be covered: no more standby copies of their mail, no standby"
        " webmail, no emergency password sign-in. What was copied so far stays in the"
        " archive until the retention period removes it." in confirm
    )
    assert "Lo copiado hasta ahora sigue en el archivo" in spanish_confirm
    assert location_path(removed) == PAGE
    page = text(admin.get(PAGE))
    assert "ana@acme.test was removed from the Continuity Service users." in flashes(page)
    assert table_addresses(page) == ["bo@acme.test"]
    assert admin.get(remove).status_code == 404  # no longer listed
    again = post(admin, remove)
    assert "ana@acme.test is not on the list." in flashes(text(admin.get(location_path(again))))
    carl = panel.person_id("carl@other.test")
    assert admin.get(f"{PAGE}/people/{carl}/remove").status_code == 404
    assert post(admin, f"{PAGE}/people/{carl}/remove").status_code == 404
    assert admin.get(f"{PAGE}/people/{2**40}/remove").status_code == 404
    assert ("coverage.removed", "admin@acme.test") in panel.audit_actions("ana@acme.test")


# Bulk: pasted or a CSV file, with a report line for each address.


def report_rows(page: str) -> list[tuple[str, str, str]]:
    """(line, address, result) for each row of a bulk report."""
    found = re.search(r'<table class="report">.*?</table>', page, re.DOTALL)
    assert found, page
    rows = re.findall(
        r"<tr class=\"\w+\">\s*<td>(.*?)</td>\s*<td>(.*?)</td>\s*<td>(.*?)</td>", found.group(0)
    )
    return [(line, address, result) for line, address, result in rows]


def test_bulk_paste_and_csv_report_each_line(panel: Portal) -> None:
    panel.set_domain(active=True, mode="selected")
    admin = admin_of(panel)
    pasted = "ana@acme.test\nnobody@acme.test, carl@other.test\n\nana@acme.test"

    response = post(admin, f"{PAGE}/bulk", {"addresses": pasted, "action": "add"})

    assert response.status_code == 200
    assert report_rows(text(response)) == [
        ("1", "ana@acme.test", "Added"),
        (
            "2",
            "nobody@acme.test",
            "Refused: nobody@acme.test is not in the roster: nobody with this address came"
            " from the directory.",
        ),
        ("2", "carl@other.test", "Refused: carl@other.test is not an address of this domain."),
        ("4", "ana@acme.test", "Refused: ana@acme.test is repeated on an earlier line."),
    ]
    assert "1 done, 3 refused." in text(response)
    assert listed(panel) == ["ana@acme.test"]

    csv = "\ufeffName;E-mail\r\nBo Berg;bo@acme.test\r\nCy;cy@acme.test\r\nZed;zed@acme.test\r\n"
    uploaded = upload(admin, csv.encode(), "people.csv", "add")
    assert [row[:2] for row in report_rows(text(uploaded))] == [
        ("2", "bo@acme.test"),
        ("3", "cy@acme.test"),
        ("4", "zed@acme.test"),
    ]
    assert listed(panel) == ["ana@acme.test", "bo@acme.test", "cy@acme.test"]
    spanish = upload(admin, csv.encode(), "people.csv", "add", headers=SPANISH)
    assert "Rechazado: bo@acme.test ya está en la lista." in text(spanish)

    removed = post(
        admin, f"{PAGE}/bulk", {"addresses": "ana@acme.test bo@acme.test", "action": "remove"}
    )
    assert report_rows(text(removed)) == [
        ("1", "ana@acme.test", "Removed"),
        ("1", "bo@acme.test", "Removed"),
    ]
    assert listed(panel) == ["cy@acme.test"]

    latin1 = upload(admin, "address\nnoël@acme.test\n".encode("latin-1"), "old.csv", "add")
    too_big = upload(admin, b"a@acme.test\n" * 90_000, "big.csv", "add")
    both = upload(admin, b"bo@acme.test\n", "x.csv", "add", pasted="cy@acme.test")
    nothing = post(admin, f"{PAGE}/bulk", {"addresses": " ", "action": "add"})
    too_many = post(
        admin,
        f"{PAGE}/bulk",
        {"addresses": "\n".join(f"p{n}@acme.test" for n in range(10_001)), "action": "add"},
    )
    errors = {
        name: re.findall(r'id="bulk-error" role="alert">(.*?)</p>', text(response))
        for name, response in (
            ("latin1", latin1),
            ("too big", too_big),
            ("both", both),
            ("nothing", nothing),
            ("too many", too_many),
        )
    }
    assert errors == {
        "latin1": [
            "The file is not UTF-8 text. Save it from your spreadsheet as “CSV UTF-8” and try"
            " again."
        ],
        "too big": ["The file is larger than 1 MB: split it and send the parts one by one."],
        "both": ["Paste addresses or choose a file, not both."],
        "nothing": ["Paste addresses or choose a CSV file."],
        "too many": ["10001 addresses: at most 10000 at a time. Nothing was changed."],
    }
    assert listed(panel) == ["cy@acme.test"]


def upload(
    client: FlaskClient,
    content: bytes,
    filename: str,
    action: str,
    *,
    pasted: str = "",
    headers: dict[str, str] | None = None,
) -> TestResponse:
    """Send a CSV file through the bulk form."""
    token = csrf_token(text(client.get("/admin")))
    fields = {"csrf_token": token, "action": action, "addresses": pasted}
    # Encoded here, in memory: the test client spools a large body to a temporary file
    # that it never closes.
    boundary, body = encode_multipart(
        {**fields, "csv_file": FileStorage(io.BytesIO(content), filename, content_type="text/csv")}
    )
    return client.post(
        f"{PAGE}/bulk",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
        headers=headers,
    )


# The emergency password: the switch, the count, and reminders by mail.


def test_emergency_password_switch_and_the_count(panel: Portal) -> None:
    panel.set_domain(active=True, mode="all", emergency=False)
    panel.set_emergency_password("ana@acme.test")
    admin = admin_of(panel)
    page = text(admin.get(PAGE))
    # Regression: while switched off, the page counted the people without one.
    assert "have not set an emergency password" not in page
    assert 'id="without-emergency-password"' not in page and 'id="remind"' not in page
    assert "The emergency password is switched off: nobody can set one" in page
    assert "Activar la contraseña de emergencia" in text(admin.get(PAGE, headers=SPANISH))
    assert sign_in(panel.client(), "ana@acme.test", EMERGENCY).status_code == 401

    switched = post(admin, f"{PAGE}/emergency-password", {"enabled": "y"})

    assert location_path(switched) == PAGE
    page = text(admin.get(PAGE))
    assert "2 covered people have not set an emergency password yet." in page
    assert '<dd id="without-emergency-password">2</dd>' in page
    assert "The emergency password is now switched on for this domain." in flashes(page)
    assert re.search(r'<input checked id="emergency-enabled"', page)
    assert sign_in(panel.client(), "ana@acme.test", EMERGENCY).status_code == 302
    post(admin, f"{PAGE}/emergency-password", {})
    assert domain_row(panel).emergency_password_enabled is False
    post(admin, f"{PAGE}/deactivate")
    # With the service off the section is greyed out and says why.
    page = text(admin.get(PAGE))
    assert re.search(r'<fieldset class="greyed" disabled[^>]*>', page)
    assert "activate it to use the emergency password" in page
    assert 'action="/admin/domains/acme.test/emergency-password"' not in page
    refused = post(admin, f"{PAGE}/emergency-password", {"enabled": "y"})
    assert "Continuity Service is not active for this domain: activate it first." in flashes(
        text(admin.get(location_path(refused)))
    )
    assert domain_row(panel).emergency_password_enabled is False


def test_reminders_go_through_the_relay_to_those_without_an_emergency_password(
    panel: Portal,
) -> None:
    panel.set_domain(active=True, mode="selected")
    for address in ("ana@acme.test", "bo@acme.test", "cy@acme.test"):
        panel.list_person(address)
    panel.set_emergency_password("ana@acme.test")
    panel.set_domain(OTHER_DOMAIN, active=True, mode="all")
    without_relay = admin_of(panel)
    page = text(without_relay.get(PAGE))
    assert re.search(r'<button type="submit" id="remind" disabled>', page)
    assert "Ask your Continuity operator to set one up." in page
    assert "[outbound]" not in page
    refused = post(without_relay, f"{PAGE}/remind")
    assert "The outbound relay is not configured: no reminder can be sent." in flashes(
        text(without_relay.get(location_path(refused)))
    )
    sink = Collect()

    # With the emergency password switched off, nobody is asked to set one.
    panel.set_domain(active=True, mode="selected", emergency=False)
    with smtp_server(sink) as port, app_with_relay(panel, f"127.0.0.1:{port}") as app:
        admin = admin_of(panel, app=app)
        refused = post(admin, f"{PAGE}/remind")
        assert "The emergency password is switched off for this domain" in " ".join(
            flashes(text(admin.get(location_path(refused))))
        )
    assert sink.envelopes == []
    panel.set_domain(active=True, mode="selected")

    # Without [portal] base_url there is no link to send: the request's Host header,
    # which whoever sends the request chooses, is never put in a mail.
    with smtp_server(sink) as port, app_with_relay(panel, f"127.0.0.1:{port}", None) as app:
        admin = admin_of(panel, app=app)
        refused = post(admin, f"{PAGE}/remind")
        assert "The portal's public address is not configured" in " ".join(
            flashes(text(admin.get(location_path(refused))))
        )
    assert sink.envelopes == []

    with smtp_server(sink) as port, app_with_relay(panel, f"127.0.0.1:{port}") as app:
        admin = admin_of(panel, app=app)
        assert re.search(r'<button type="submit" id="remind">', text(admin.get(PAGE)))
        response = post(admin, f"{PAGE}/remind")
        page = text(admin.get(location_path(response)))
        # Read inside the block: its app's engine is disposed at the end of it, and a
        # request after that would open a connection nothing closes.
        trail = text(admin.get(f"{PAGE}/audit"))

    assert "2 reminders sent." in flashes(page)
    assert sorted(tuple(envelope.rcpt_tos) for envelope in sink.envelopes) == [
        ("bo@acme.test",),
        ("cy@acme.test",),
    ]
    message = email.message_from_bytes(sink.envelopes[0].original_content, policy=default_policy)
    assert isinstance(message, EmailMessage)
    body = message.get_content()
    assert message["From"] == "Continuity <continuity@continuity.example>"
    assert message["Subject"] == (
        "Set your emergency password / Establecer la contraseña de emergencia"
    )
    assert "https://continuity.example/me" in body
    assert "set an emergency password" in body and "contraseña de emergencia" in body
    with Session(panel.engine) as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "emergency_password.reminders_sent")
        ).one()
    assert (event.actor, event.after) == ("admin@acme.test", {"sent": 2, "failed": 0})
    assert "Reminders to set an emergency password sent</span><br>" in trail
    assert "2 reminders sent." in trail

    with app_with_relay(panel, f"127.0.0.1:{free_port()}") as app:
        admin = admin_of(panel, app=app)
        failed = text(admin.get(location_path(post(admin, f"{PAGE}/remind"))))
    assert "0 reminders sent." in flashes(failed)
    assert "2 reminders could not be sent." in flashes(failed)

    # A relay login is never sent in clear: this relay offers no STARTTLS.
    with (
        smtp_server(sink) as port,
        app_with_relay(panel, f"127.0.0.1:{port}", login=("continuity", "relay-secret")) as app,
    ):
        admin = admin_of(panel, app=app)
        failed = text(admin.get(location_path(post(admin, f"{PAGE}/remind"))))
    assert "2 reminders could not be sent." in flashes(failed)
    assert len(sink.envelopes) == 2  # the two of the first round, nothing more


# The primary mail server.


def test_primary_settings_are_checked_in_both_languages_and_saved(panel: Portal) -> None:
    admin = admin_of(panel)
    good = {
        "host": "mx1.acme.test",
        "port": "2525",
        "tls": "none",
        "automatic": "y",
        "probe_interval": "30",
        "failures_before_failover": "4",
    }
    cases = {
        "primary-host": (
            {"host": "not a host!"},
            "“not a host!” is not a host name or IP address.",
        ),
        "primary-port": ({"port": "99999"}, "The port must be a whole number from 1 to 65535."),
        "primary-tls": ({"tls": "ssl3"}, "Choose one of the encryption options."),
        "primary-probe-interval": (
            {"probe_interval": "5"},
            "The seconds between probes must be a whole number from 10 to 3600.",
        ),
        "primary-failures": (
            {"failures_before_failover": "x"},
            "The failed probes before failover must be a whole number from 1 to 20.",
        ),
    }
    shown = {}
    for field_id, (change, _message) in cases.items():
        response = post(admin, f"{PAGE}/primary", {**good, **change})
        assert response.status_code == 400
        shown[field_id] = field_error(text(response), field_id)
    spanish = post(admin, f"{PAGE}/primary", {**good, "port": "0"}, headers=SPANISH)
    kept = text(post(admin, f"{PAGE}/primary", {**good, "port": "99999"}))

    assert shown == {field_id: message for field_id, (_change, message) in cases.items()}
    assert field_error(text(spanish), "primary-port") == (
        "El puerto debe ser un número entero entre 1 y 65535."
    )
    assert re.search(r'id="primary-port"[^>]*value="99999"', kept)
    assert re.search(r'id="primary-host"[^>]*value="mx1.acme.test"', kept)
    assert domain_row(panel).primary_host is None

    saved = post(admin, f"{PAGE}/primary", good)

    assert location_path(saved) == PAGE
    page = text(admin.get(PAGE))
    assert "The primary mail server settings are saved." in flashes(page)
    row = domain_row(panel)
    assert (row.primary_host, row.primary_port, row.primary_tls) == ("mx1.acme.test", 2525, "none")
    assert (row.failover_automatic, row.probe_interval_seconds) == (True, 30)
    assert row.failures_before_failover == 4
    assert re.search(r'id="primary-port"[^>]*value="2525"', page)
    unchanged = post(admin, f"{PAGE}/primary", good)
    assert "Nothing changed." in flashes(text(admin.get(location_path(unchanged))))
    assert [a for a in panel.audit_actions() if a[0] == "primary.changed"] == [
        ("primary.changed", "admin@acme.test")
    ]


def test_the_primary_form_names_every_wrong_field_at_once(panel: Portal) -> None:
    """Regression: the form showed the first wrong field's error only, with no notice in
    view; an impossible address (999.999.999.999) was saved."""
    admin = admin_of(panel)
    typed = {"host": "999.999.999.999", "port": "0", "tls": "starttls", "automatic": "y"}
    typed |= {"probe_interval": "5", "failures_before_failover": "3"}

    page = text(post(admin, f"{PAGE}/primary", typed))
    spanish = text(post(admin, f"{PAGE}/primary", typed, headers=SPANISH))

    assert field_error(page, "primary-host") == (
        "“999.999.999.999” is not a valid IP address (four numbers from 0 to 255, or IPv6)."
    )
    assert field_error(page, "primary-port") == ("The port must be a whole number from 1 to 65535.")
    assert field_error(page, "primary-probe-interval") == (
        "The seconds between probes must be a whole number from 10 to 3600."
    )
    assert 'id="primary-failures-error"' not in page
    notice = re.search(r'<p class="flash error" role="alert" id="primary-notice">([^<]+)</p>', page)
    assert notice and notice.group(1) == "3 fields need correcting: see the message under each."
    # The form is sent to the section's own anchor: the browser shows it, not the top.
    assert f'action="{PAGE}/primary#primary"' in page
    assert f'formaction="{PAGE}/primary/test#primary"' in page
    assert "3 campos necesitan corrección" in spanish
    assert "no es una dirección IP válida" in field_error(spanish, "primary-host")
    assert domain_row(panel).primary_host is None


def test_test_connection_against_a_real_server_and_a_closed_port(panel: Portal) -> None:
    # The test servers run on this host: a primary here is allowed only when configured.
    admin = admin_of(panel, app=panel.build(gateway={"allow_local_primary": True}))
    typed = {"host": "127.0.0.1", "tls": "none", "probe_interval": "60"}
    typed |= {"failures_before_failover": "3"}

    with smtp_server() as port:
        works = post(admin, f"{PAGE}/primary/test", {**typed, "port": str(port)})
    closed = post(admin, f"{PAGE}/primary/test", {**typed, "port": str(free_port())})
    wrong = post(admin, f"{PAGE}/primary/test", {**typed, "port": "http"})
    spanish = post(
        admin, f"{PAGE}/primary/test", {**typed, "port": str(free_port())}, headers=SPANISH
    )

    page = text(works)
    assert works.status_code == 200 and "The connection works." in page
    answers = re.search(r'<pre class="answers" id="probe-answers">(.*?)</pre>', page, re.DOTALL)
    assert answers and answers.group(1).startswith("220 ")
    assert "\n250" in answers.group(1)
    assert '<dd id="probe-stage">done</dd>' in page
    assert re.search(rf'id="primary-port"[^>]*value="{port}"', page)
    assert domain_row(panel).primary_host is None  # testing saves nothing
    page = text(closed)
    assert "The connection failed." in page
    assert '<dd id="probe-stage">connecting</dd>' in page
    # Regression: the reason was the system's English ("Connection refused") in Spanish too.
    assert re.search(r'<dd id="probe-error">Connection refused: nothing listens on that port', page)
    assert "Conexión rechazada" in text(spanish) and "Connection refused" not in text(spanish)
    assert wrong.status_code == 400 and 'id="probe"' not in text(wrong)
    assert "La conexión ha fallado." in text(spanish)


# The audit trail.


def test_the_audit_page_says_each_change_in_sentences(panel: Portal) -> None:
    """Regression: the audit trail showed raw keys (`coverage_mode: selected`,
    `listed: true`, "4 listed user(s) removed") in English whatever the reader's
    language, in a table 1,545 px wide."""
    panel.add_staff("admin@other.test", "admin", OTHER_DOMAIN)
    admin = admin_of(panel)
    post(admin, f"{PAGE}/activate")
    post(admin, f"{PAGE}/coverage", {"mode": "selected", "confirmed": "1"})
    post(admin, f"{PAGE}/add", {"address": "bo@acme.test"})
    post(admin, f"{PAGE}/add", {"address": "ana@acme.test"})
    post(admin, f"{PAGE}/coverage", {"mode": "all", "confirmed": "1"})
    form = {"host": "mx.acme.test", "port": "2525", "tls": "tls", "automatic": "y"}
    form |= {"probe_interval": "60", "failures_before_failover": "3"}
    post(admin, f"{PAGE}/primary", form)
    other = admin_of(panel, OTHER_DOMAIN)
    post(other, f"/admin/domains/{OTHER_DOMAIN}/activate")

    page = text(admin.get(f"{PAGE}/audit"))
    spanish = text(admin.get(f"{PAGE}/audit", headers=SPANISH))

    def rows(shown: str) -> list[tuple[str, str, str]]:
        found = re.findall(
            r"<tr>\s*<td class=\"nowrap\">[^<]+</td>\s*<td class=\"address\">([^<]*)</td>"
            r"\s*<td>(.*?)</td>\s*<td class=\"address\">([^<]*)</td>",
            shown,
            re.DOTALL,
        )
        return [(who, re.sub(r"<[^>]+>", "|", what), person) for who, what, person in found]

    assert rows(page)[:6] == [
        (
            "admin@acme.test",
            "|Primary mail server settings changed|||Host name or IP address: from none to"
            " mx.acme.test.|||Port: from 25 to 2525.|||Encryption: from STARTTLS to TLS from"
            " the start.|",
            "",
        ),
        (
            "admin@acme.test",
            "|Coverage changed between all users and only selected users|||Who is covered:"
            " from only selected users to all users.|||2 individually added users were"
            " removed from the list.|",
            "",
        ),
        ("admin@acme.test", "|Added to the Continuity Service users|", "ana@acme.test"),
        ("admin@acme.test", "|Added to the Continuity Service users|", "bo@acme.test"),
        (
            "admin@acme.test",
            "|Coverage changed between all users and only selected users|||Who is covered:"
            " from all users to only selected users.|",
            "",
        ),
        ("admin@acme.test", "|Continuity Service activated|", ""),
    ]
    assert [row[1] for row in rows(page)[6:]] == [
        "|Staff account added|||Address: admin@acme.test.|||Role: domain admin.|",
        "|Domain added|",
    ]
    tables = [re.search(r"<table.*</table>", shown, re.DOTALL) for shown in (page, spanish)]
    for raw in ("coverage_mode", "listed:", "true", "false", "user(s)", "primary_port"):
        assert all(table and raw not in table.group(0) for table in tables), raw
    assert "Continuity Service activado" in spanish
    assert "Quién está cubierto: de todos los usuarios a solo los usuarios seleccionados." in (
        spanish
    )
    assert admin.get(f"/admin/domains/{OTHER_DOMAIN}/audit").status_code == 404


def test_spanish_pages_keep_registro_for_the_audit_trail_and_name_no_configuration(
    panel: Portal,
) -> None:
    """Regression: in Spanish the roster was "el registro", the same word as the audit
    trail's "Registro de auditoría"; and a domain admin was told about the
    configuration's [outbound] table, which only the operator can change."""
    panel.set_domain(active=True, mode="selected", emergency=True)
    admin = admin_of(panel)
    refused = text(post(admin, f"{PAGE}/add", {"address": "nobody@acme.test"}, headers=SPANISH))
    pages = [
        text(admin.get(PAGE, headers=SPANISH)),
        text(admin.get(f"{PAGE}/audit", headers=SPANISH)),
        refused,
    ]

    assert "nobody@acme.test no está en el censo de Continuity" in refused
    assert "Pídaselo a su operador de Continuity." in pages[0]
    for page in pages:
        words = re.findall(r"\bregistro\b.{0,14}", page, re.IGNORECASE)
        assert all(found.startswith("Registro de auditoría") for found in words), words
        assert "[outbound]" not in page and "tabla" not in page


def test_the_continuity_state_says_only_what_is_known(panel: Portal) -> None:
    """Regression: the overview said "Normal: the primary mail server is working" though
    nothing had ever checked the primary."""
    panel.set_domain(active=True, mode="all")
    admin = admin_of(panel)

    def state() -> str:
        found = re.search(r'<dd id="continuity-state">(.*?)</dd>', text(admin.get(PAGE)), re.S)
        assert found
        return found.group(1).strip()

    assert state() == "Not checked yet: nothing has checked the primary mail server so far."
    with Session(panel.engine) as session, session.begin():
        domain = session.scalars(select(Domain).where(Domain.name == DOMAIN)).one()
        domain.last_check_at = datetime(2026, 11, 30, 4, 5, tzinfo=UTC)
        domain.last_check_ok = True
    assert state() == (
        "Normal: the last check of the primary mail server succeeded (2026-11-30 04:05 UTC)."
    )
    with Session(panel.engine) as session, session.begin():
        domain = session.scalars(select(Domain).where(Domain.name == DOMAIN)).one()
        domain.last_check_ok = False
    assert state() == (
        "Failing: the last check of the primary mail server failed (2026-11-30 04:05 UTC)."
    )


def test_failover_settings_are_checked_saved_and_audited(panel: Portal) -> None:
    """Checks before the hand-back, failover codes, language, the certificate check and
    the callout: refused with a message under each field in both languages, saved,
    audited; switching the certificate check off is said on the form and in the trail."""
    admin = admin_of(panel)
    good = {"host": "mx1.acme.test", "port": "25", "tls": "starttls", "automatic": "y"}
    good |= {"probe_interval": "60", "failures_before_failover": "3", "recover_after": "3"}
    good |= {"failover_codes": "", "language": "en", "tls_verify": "on"}
    good |= {"verify_recipients": "on"}
    page = text(admin.get(PAGE))
    assert re.search(r'id="primary-recover-after"[^>]*value="3"', page)
    assert '<option selected value="on">Check it (recommended)</option>' in page
    assert "Not checking the certificate is a security decision" in page
    assert 'id="tls-verify-off"' not in page

    wrong = {
        "recover_after": "21",
        "failover_codes": "452, 250",
        "language": "fr",
        "tls_verify": "maybe",
        "verify_recipients": "",
    }
    refused = post(admin, f"{PAGE}/primary", {**good, **wrong})
    spanish = text(post(admin, f"{PAGE}/primary", {**good, **wrong}, headers=SPANISH))
    assert refused.status_code == 400
    shown = text(refused)
    assert {
        field: field_error(shown, f"primary-{field}")
        for field in ("recover-after", "failover-codes", "language", "tls-verify")
    } == {
        "recover-after": "The good checks before the hand-back must be a whole number from 1"
        " to 20.",
        "failover-codes": "“250” is not the reply code of a failure: give three digits"
        " starting with 4 or 5, such as 452 or 552.",
        "language": "Choose English or Spanish.",
        "tls-verify": "Choose whether the certificate is checked.",
    }
    assert field_error(shown, "primary-verify-recipients") == (
        "Choose what happens to unknown recipients."
    )
    assert field_error(spanish, "primary-failover-codes").startswith(
        "«250» no es el código de respuesta de una avería"
    )
    assert domain_row(panel).primary_host is None  # nothing saved

    saved = post(
        admin,
        f"{PAGE}/primary",
        {**good, "recover_after": "5", "failover_codes": "552 452,452", "language": "es"}
        | {"tls_verify": "off", "verify_recipients": "off"},
    )
    assert location_path(saved) == PAGE
    row = domain_row(panel)
    assert (row.recover_after, row.failover_codes, row.language) == (5, "552,452", "es")
    assert (row.primary_tls_verify, row.verify_recipients) == (False, False)
    page = text(admin.get(PAGE))
    assert "The certificate of the primary mail server is not checked." in page
    assert '<option selected value="es">Español</option>' in page

    # A post of the form as an older page had it (without these fields) keeps them.
    post(admin, f"{PAGE}/primary", {k: good[k] for k in list(good)[:6]} | {"port": "2525"})
    row = domain_row(panel)
    assert (row.primary_port, row.recover_after, row.primary_tls_verify) == (2525, 5, False)

    with Session(panel.engine) as session:
        changed = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "primary.changed").order_by(AuditEvent.id)
        ).all()
    assert [event.before for event in changed] == [
        {
            "primary_host": None,
            "recover_after": 3,
            "failover_codes": "",
            "language": "en",
            "primary_tls_verify": True,
            "verify_recipients": True,
        },
        {"primary_port": 25},
    ]
    assert [event.detail for event in changed] == [
        "the primary server's certificate is no longer checked",
        "",
    ]
    trail = text(admin.get(f"{PAGE}/audit"))
    assert "Security decision: the primary server's certificate is no longer checked." in trail
    assert "Check the primary server's certificate: from on to off." in trail
    assert "Language of the mail Continuity writes to your people: from English to Spanish." in (
        trail
    )
    assert "Reply codes that count as a failure: from none to 552,452." in trail
    spanish_trail = text(admin.get(f"{PAGE}/audit", headers=SPANISH))
    assert "Decisión de seguridad: el certificado del servidor principal ya no se comprueba." in (
        spanish_trail
    )


def test_the_overview_counts_todays_mail(panel: Portal) -> None:
    """Issue #9: the overview shows today's mail of the domain from the queue's records."""
    from roster.models import MailMessage, MailRecipient, StandbyCopy, utcnow

    panel.set_domain(active=True)
    now = utcnow()
    yesterday = now - timedelta(days=1, hours=1)
    with Session(panel.engine) as session, session.begin():
        domain_id = session.scalar(select(Domain.id).where(Domain.name == DOMAIN))
        other_id = session.scalar(select(Domain.id).where(Domain.name == OTHER_DOMAIN))
        outcomes = [
            ("delivered", now, domain_id),
            ("delivered", now, domain_id),
            ("deferred", now, domain_id),
            ("bounced", now, domain_id),
            ("queued", now, domain_id),  # not tried yet: not deferred
            ("held", now, domain_id),  # held by a continuity event: deferred, as tracking says
            ("delivered", yesterday, domain_id),  # not today
            ("delivered", now, other_id),  # another domain
        ]
        for number, (status, when, owner) in enumerate(outcomes):
            queue_id = f"Q{number:019d}"
            session.add(
                MailMessage(
                    queue_id=queue_id, received_at=when, sender="s@x.test", size=1, body=b""
                )
            )
            session.add(
                MailRecipient(
                    queue_id=queue_id,
                    domain_id=owner,
                    address=f"r{number}@acme.test",
                    status="queued" if status == "held" else status,
                    via_continuity=status == "held",
                    next_attempt_at=when,
                    delivered_at=when if status == "delivered" else None,
                )
            )
            session.flush()
            session.add(
                StandbyCopy(
                    queue_id=queue_id,
                    domain_id=owner,
                    mailbox=f"r{number}@acme.test",
                    status="copied" if number < 3 else "pending",
                    next_attempt_at=when,
                    copied_at=when if number < 3 else None,
                )
            )
    admin = admin_of(panel)
    page = text(admin.get(PAGE))
    spanish = text(admin.get(PAGE, headers=SPANISH))

    def count(shown: str, name: str) -> str:
        found = re.search(rf'<dd id="mail-{name}">(.*?)</dd>', shown)
        assert found, name
        return found.group(1)

    names = ("received", "delivered", "deferred", "bounced", "copied", "copies-pending")
    assert {n: count(page, n) for n in names} == {
        "received": "6",
        "delivered": "2",
        "deferred": "2",
        "bounced": "1",
        "copied": "3",
        "copies-pending": "4",
    }
    assert f"Mail today (since {now:%Y-%m-%d} 00:00 UTC)" in page
    assert "<dt>Aplazado</dt>" in spanish and "Correo de hoy" in spanish
