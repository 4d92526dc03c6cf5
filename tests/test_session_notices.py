"""No notice is ever lost: a request that does not change the session never writes the
session cookie back (a suggestion request in flight could put back a session without the
notice another request had just set)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.portal_support import STAFF_PASSWORD, Portal, csrf_token, signed_in_client

DOMAIN = "acme.test"
PAGE = f"/admin/domains/{DOMAIN}"
COOKIE = "continuity_session"


@pytest.fixture
def panel(portal: Portal) -> Portal:
    """Ana and Bo at acme.test, and its admin."""
    portal.add_person("ana", display_name="Ana García")
    portal.add_person("bo", display_name="Bo Berg")
    portal.sync()
    portal.add_staff(f"admin@{DOMAIN}", "admin")
    return portal


def session_cookie(client: FlaskClient) -> str:
    """The session cookie the browser holds now."""
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def test_a_suggestion_in_flight_does_not_undo_the_was_added_notice(panel: Portal) -> None:
    """Regression: `.ci/run` failed once on the Control Panel walk: the "was added" notice
    was missing. A suggestion request of the same browser, sent before the notice was set
    and answered after, wrote back the session cookie it had read (without the notice),
    and the browser kept that one. The race, made deterministic: the suggestion request
    carries the cookie of before the notice."""
    panel.set_domain(active=True, mode="selected")
    admin = signed_in_client(panel, f"admin@{DOMAIN}", STAFF_PASSWORD)
    add_page = admin.get(f"{PAGE}/add").get_data(as_text=True)
    before_notice = session_cookie(admin)

    added = admin.post(
        f"{PAGE}/add", data={"csrf_token": csrf_token(add_page), "address": "ana@acme.test"}
    )
    assert added.status_code == 302
    assert session_cookie(admin) != before_notice  # the notice is in the new cookie

    # The suggestion request that was already on its way: it carries the old cookie.
    in_flight = panel.app.test_client()
    in_flight.set_cookie(COOKIE, before_notice)
    answer = in_flight.get(f"{PAGE}/suggest?q=bo@")
    assert answer.status_code == 200 and answer.is_json
    assert "Set-Cookie" not in answer.headers  # nothing for the browser to overwrite with

    page = admin.get(PAGE).get_data(as_text=True)
    assert "ana@acme.test was added to the Continuity Service users." in page


def test_pages_that_change_nothing_leave_the_cookie_alone(panel: Portal) -> None:
    """Reading a page sets no cookie once the session holds its CSRF token; signing in
    and out still do."""
    admin = signed_in_client(panel, f"admin@{DOMAIN}", STAFF_PASSWORD)
    admin.get(PAGE)  # the first page puts the form token in the session
    for url in (PAGE, f"{PAGE}/audit", f"{PAGE}/suggest?q=ana", "/admin"):
        response = admin.get(url)
        assert response.status_code == 200, url
        assert "Set-Cookie" not in response.headers, url
