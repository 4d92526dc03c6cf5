"""Self-service: a person's Continuity status, setting the emergency password and its
policy, and a new emergency password with a helpdesk reset code."""

from __future__ import annotations

from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from roster.models import ResetCode, utcnow
from roster.throttle import ACCOUNT_LOCK_AFTER
from tests.portal_support import (
    EMERGENCY,
    PASSWORD,
    STAFF_PASSWORD,
    Portal,
    issue_reset_code,
    location_path,
    shown_code,
    sign_in,
    signed_in_client,
    submit,
    text,
    without_csrf,
)

SAVED = "Your emergency password is set."
CODE_REFUSED = "The address or the code is not right, or the code has expired."


def save_emergency_password(
    client: FlaskClient,
    password: str,
    confirmation: str | None = None,
    directory_password: str = PASSWORD,
) -> str:
    """Fill in the form on the status page; returns the page shown afterwards."""
    response = submit(
        client,
        "/me",
        {
            "directory_password": directory_password,
            "password": password,
            "confirmation": password if confirmation is None else confirmation,
        },
        action="/me/emergency-password",
    )
    assert response.status_code == 302, response.status_code
    return text(client.get(location_path(response)))


def test_status_page_shows_coverage_and_the_emergency_password(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = signed_in_client(portal, "ana@acme.test")

    before = text(client.get("/me"))
    portal.set_domain(active=True, mode="all", emergency=True)
    covered = text(client.get("/me"))
    after = save_emergency_password(client, EMERGENCY)

    assert "You are not covered by Continuity Service." in before
    assert "Not set yet." in before and "It cannot be used for signing in now" in before
    assert "You are covered by Continuity Service." in covered
    assert "It cannot be used for signing in now" not in covered
    assert SAVED in after and "Set on 20" in after and "Not set yet." not in after
    assert "Change your emergency password" in after


def test_emergency_password_session_cannot_change_it(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    portal.set_domain()
    save_emergency_password(signed_in_client(portal, "ana@acme.test"), EMERGENCY)

    client = signed_in_client(portal, "ana@acme.test", EMERGENCY)
    page = text(client.get("/me"))
    attempt = submit(
        client,
        "/me",
        {"directory_password": PASSWORD, "password": "Other-Lantern-8841", "confirmation": ""},
        action="/me/emergency-password",
    )

    assert "You signed in with your emergency password." in page
    assert 'action="/me/emergency-password"' not in page
    assert attempt.status_code == 403


def test_setting_it_needs_the_directory_password(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = signed_in_client(portal, "ana@acme.test")

    page = save_emergency_password(client, EMERGENCY, directory_password="Not-My-Password-9")

    assert "Your directory password is not right." in page
    assert "Not set yet." in page


def test_password_policy_messages(portal: Portal) -> None:
    portal.add_person("marta", cn="Marta Lopez", display_name="Marta López")
    portal.sync()
    client = signed_in_client(portal, "marta@acme.test")
    cases = {
        "Short-9x!": ("Short-9x!", "Use at least 12 characters."),
        "mismatch": ("Harbour-Lantern-4471", "The two new passwords are not the same."),
        "Marta-Harbour-4471": (None, "Do not use your address or your name in the password."),
        "Harbour-lópez-4471": (None, "Do not use your address or your name in the password."),
        "correcthorsebatterystaple": (None, "This password is too common; choose another."),
        PASSWORD: (None, "Do not use your directory password as emergency password."),
    }
    messages = {message for _, message in cases.values()}
    shown = {}
    for password, (confirmation, _message) in cases.items():
        if password == "mismatch":
            page = save_emergency_password(client, "Harbour-Lantern-4470", confirmation)
        else:
            page = save_emergency_password(client, password, confirmation)
        shown[password] = {message for message in messages if message in page}
        assert "Not set yet." in page, password

    assert shown == {password: {message} for password, (_, message) in cases.items()}


def test_a_name_written_without_its_accents_is_still_the_name(portal: Portal) -> None:
    """Regression (issue #8 B11): "not your name" compared the name as written, so
    SofiaFernandez2026! was accepted for Sofía Fernández."""
    portal.add_person("sofia", cn="Sofia Fernandez", display_name="Sofía Fernández")
    portal.sync()
    client = signed_in_client(portal, "sofia@acme.test")
    refused = {}
    for password in ("SofiaFernandez2026!", "FERNANDEZ-harbour-77", "Harbour-SOFÍA-4471"):
        page = save_emergency_password(client, password)
        refused[password] = "Do not use your address or your name in the password." in page
        assert "Not set yet." in page, password

    assert refused == dict.fromkeys(refused, True)
    assert SAVED in save_emergency_password(client, "Quiet-Harbour-Lantern-7")


def test_a_new_emergency_password_ends_other_sessions_but_not_this_one(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    portal.set_domain()
    laptop = signed_in_client(portal, "ana@acme.test")
    save_emergency_password(laptop, EMERGENCY)
    phone = signed_in_client(portal, "ana@acme.test")
    kiosk = signed_in_client(portal, "ana@acme.test", EMERGENCY)

    page = save_emergency_password(laptop, "Second-Lantern-5512")

    assert SAVED in page
    assert laptop.get("/me").status_code == 200
    assert location_path(phone.get("/me")) == "/sign-in"
    assert location_path(kiosk.get("/me")) == "/sign-in"
    assert sign_in(portal.client(), "ana@acme.test", EMERGENCY).status_code == 401
    assert signed_in_client(portal, "ana@acme.test", "Second-Lantern-5512")
    actions = [action for action, _ in portal.audit_actions("ana@acme.test")]
    assert actions.count("emergency_password.set") == 1
    assert actions.count("emergency_password.changed") == 1


def test_the_form_is_throttled_like_the_sign_in(portal: Portal) -> None:
    """Regression: the form bound without asking the throttle, so a session could guess."""
    portal.add_person("ana")
    portal.sync()
    client = signed_in_client(portal, "ana@acme.test")
    for _ in range(ACCOUNT_LOCK_AFTER):
        portal.age_throttle()
        page = save_emergency_password(client, EMERGENCY, directory_password="Guess-000000")
        assert "Your directory password is not right." in page
    portal.age_throttle()
    assert "locked" in text(sign_in(portal.client(), "ana@acme.test", PASSWORD))

    page = save_emergency_password(client, EMERGENCY)

    assert SAVED not in page
    assert "Not set yet." in page


# Reset codes from the helpdesk.


def helpdesk_code(portal: Portal, address: str) -> str:
    """A reset code a helpdesk of acme.test issues for ``address``."""
    portal.add_staff("helpdesk@acme.test", "helpdesk")
    helpdesk = signed_in_client(portal, "helpdesk@acme.test", STAFF_PASSWORD)
    response = issue_reset_code(helpdesk, portal.person_id(address))
    assert response.status_code == 200, response.status_code
    return shown_code(response)


def reset(
    client: FlaskClient, address: str, code: str, password: str, confirmation: str | None = None
) -> TestResponse:
    """Fill in the reset page."""
    return submit(
        client,
        "/reset",
        {
            "address": address,
            "code": code,
            "password": password,
            "confirmation": password if confirmation is None else confirmation,
        },
    )


def test_reset_code_sets_a_new_emergency_password_once(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    portal.set_domain()
    portal.set_emergency_password("ana@acme.test", EMERGENCY)
    code = helpdesk_code(portal, "ana@acme.test")
    client = portal.client()

    mismatch = reset(client, "ana@acme.test", code, "New-Lantern-7702", "New-Lantern-7703")
    assert mismatch.status_code == 400
    assert "The two new passwords are not the same." in text(mismatch)

    # As read aloud on the phone: lower case, spaces for dashes.
    spoken = code.lower().replace("-", " ")
    done = reset(client, "ANA@acme.test", spoken, "New-Lantern-7702")
    assert location_path(done) == "/sign-in"
    assert "Your new emergency password is set." in text(client.get("/sign-in"))
    assert sign_in(portal.client(), "ana@acme.test", EMERGENCY).status_code == 401
    assert signed_in_client(portal, "ana@acme.test", "New-Lantern-7702")

    again = reset(portal.client(), "ana@acme.test", code, "Third-Lantern-9903")
    assert again.status_code == 401
    assert CODE_REFUSED in text(again)
    assert signed_in_client(portal, "ana@acme.test", "New-Lantern-7702")


def test_an_expired_reset_code_is_refused(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    portal.set_domain()
    code = helpdesk_code(portal, "ana@acme.test")
    with Session(portal.engine) as session, session.begin():
        session.execute(update(ResetCode).values(expires_at=utcnow() - timedelta(minutes=1)))

    response = reset(portal.client(), "ana@acme.test", code, "New-Lantern-7702")

    assert response.status_code == 401
    assert CODE_REFUSED in text(response)
    assert sign_in(portal.client(), "ana@acme.test", "New-Lantern-7702").status_code == 401


def test_a_code_works_only_for_its_own_person(portal: Portal) -> None:
    portal.add_person("ana")
    portal.add_person("bo")
    portal.sync()
    code = helpdesk_code(portal, "ana@acme.test")

    response = reset(portal.client(), "bo@acme.test", code, "New-Lantern-7702")

    assert response.status_code == 401 and CODE_REFUSED in text(response)


def test_reset_codes_are_counted_per_person_across_their_addresses(portal: Portal) -> None:
    """Regression (issue #8 A7): reset code guesses were counted per address typed, so
    a person with three addresses gave three allowances of guesses."""
    portal.add_person("ana", aliases=("ana.garcia@acme.test", "a.garcia@acme.test"))
    portal.sync()
    portal.set_domain()
    code = helpdesk_code(portal, "ana@acme.test")
    addresses = ["ana@acme.test", "ana.garcia@acme.test", "a.garcia@acme.test"]
    for number in range(ACCOUNT_LOCK_AFTER):  # 4, 3 and 3 guesses: none alone is enough
        portal.age_throttle()
        guess = reset(portal.client(), addresses[number % 3], "ABCD-EFGH-JKMN-PQRS", "x")
        assert guess.status_code == 401, number
    portal.age_throttle()

    right = reset(portal.client(), "a.garcia@acme.test", code, "New-Lantern-7702")

    assert right.status_code == 429 and "Too many attempts. Try again later." in text(right)
    assert sign_in(portal.client(), "ana@acme.test", "New-Lantern-7702").status_code == 401


def test_reset_page_answers_alike_for_unknown_and_known_addresses(portal: Portal) -> None:
    """Regression: a weak password got 400 and the policy if known, 401 for nobody."""
    portal.add_person("ana")
    portal.sync()
    answers = {}
    for address in ("ana@acme.test", "nobody@acme.test"):
        for password in ("short", "New-Lantern-7702"):
            response = reset(portal.client(), address, "ABCD-EFGH-JKMN-PQRS", password)
            body = without_csrf(text(response)).replace(address, "ADDRESS")
            answers[(address, password)] = (response.status_code, body)

    for password in ("short", "New-Lantern-7702"):
        known = answers[("ana@acme.test", password)]
        unknown = answers[("nobody@acme.test", password)]
        assert known == unknown, password
