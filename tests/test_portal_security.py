"""Regressions from the security review of the portal: each test names the hole it pins."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import func, select

from roster.models import AuditEvent, SignInThrottle
from roster.throttle import FREE_FAILURES, client_key
from tests.directory import DirectoryTree
from tests.portal_support import (
    EMERGENCY,
    PASSWORD,
    STAFF_PASSWORD,
    Portal,
    csrf_token,
    issue_reset_code,
    sign_in,
    signed_in_client,
    text,
)


def test_helpdesk_cannot_take_over_a_staff_member_with_a_reset_code(
    tmp_path: Path, database_url: str, directory: DirectoryTree
) -> None:
    """Regression: helpdesk issued itself a code for a directory admin, redeemed it and
    signed in as the admin, gaining domains it did not serve."""
    admins = directory.add_group("admins", directory.dn("ana"))
    portal = Portal.on(tmp_path, database_url, directory, source_options={"admin_group": admins})
    try:
        portal.add_person("ana", display_name="Ana Admin")
        portal.add_person("bo")
        portal.sync()
        portal.set_domain(active=True, mode="all", emergency=True)
        portal.add_staff("helpdesk@acme.test", "helpdesk")
        helpdesk = signed_in_client(portal, "helpdesk@acme.test", STAFF_PASSWORD)

        refused = issue_reset_code(helpdesk, portal.person_id("ana@acme.test"))
        assert "issued by an administrator" in text(helpdesk.get(refused.headers["Location"]))
        allowed = issue_reset_code(helpdesk, portal.person_id("bo@acme.test"))
        assert allowed.status_code == 200 and "Reset code for bo@acme.test" in text(allowed)
    finally:
        portal.close()


def test_an_emergency_session_carries_no_staff_powers(
    tmp_path: Path, database_url: str, directory: DirectoryTree
) -> None:
    admins = directory.add_group("admins", directory.dn("ana"))
    portal = Portal.on(tmp_path, database_url, directory, source_options={"admin_group": admins})
    try:
        portal.add_person("ana")
        portal.sync()
        portal.set_domain(active=True, mode="all", emergency=True)
        portal.set_emergency_password("ana@acme.test", EMERGENCY)
        with_directory = signed_in_client(portal, "ana@acme.test")
        with_emergency = signed_in_client(portal, "ana@acme.test", EMERGENCY)
        assert with_directory.get("/helpdesk").status_code == 200
        assert with_emergency.get("/helpdesk").status_code == 403
    finally:
        portal.close()


def test_an_emergency_session_ends_when_the_domain_switches_it_off(portal: Portal) -> None:
    """Regression: a session opened with the emergency password outlived the switch-off."""
    portal.add_person("ana")
    portal.sync()
    portal.set_domain(active=True, mode="all", emergency=True)
    portal.set_emergency_password("ana@acme.test", EMERGENCY)
    client = signed_in_client(portal, "ana@acme.test", EMERGENCY)
    assert client.get("/me").status_code == 200

    portal.set_domain(active=True, mode="all", emergency=False)

    response = client.get("/me")
    assert response.status_code == 302 and "/sign-in" in response.headers["Location"]


def test_parallel_guesses_cannot_pass_the_throttle_together(portal: Portal) -> None:
    """Regression: 40 simultaneous wrong passwords got 39 password checks, because each
    request read the throttle before any had recorded its failure."""
    portal.add_person("ana")
    portal.sync()
    count = 20
    clients = [portal.client() for _ in range(count)]
    tokens = [csrf_token(c.get("/sign-in").get_data(as_text=True)) for c in clients]
    barrier = threading.Barrier(count)

    def guess(number: int) -> None:
        barrier.wait()
        clients[number].post(
            "/sign-in",
            data={"csrf_token": tokens[number], "address": "ana@acme.test", "password": "x" * 12},
            environ_base={"REMOTE_ADDR": f"10.9.0.{number}"},
        )

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with portal.engine.connect() as connection:
        checked = connection.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "sign_in.failed")
        )
    assert checked == FREE_FAILURES
    assert sign_in(portal.client(), "ana@acme.test", "y" * 12).status_code == 401


def test_successful_sign_ins_do_not_count_against_the_client_address(portal: Portal) -> None:
    """Regression: counting attempts first left every success on the client's count, so
    an office behind one address was locked after 200 good sign-ins."""
    portal.add_person("ana")
    portal.sync()
    for _ in range(3):
        response = sign_in(portal.client(), "ana@acme.test", PASSWORD, client_address="10.7.0.1")
        assert response.status_code == 302
    with portal.engine.connect() as connection:
        counts = connection.scalars(
            select(SignInThrottle.failures).where(SignInThrottle.key == client_key("10.7.0.1"))
        ).all()
    assert counts in ([], [0])
