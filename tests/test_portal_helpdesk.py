"""Staff: local accounts from `continuity staff add`, the helpdesk's search, reset codes and
lifting locks, each only over the domains served."""

from __future__ import annotations

import base64
import re
import zlib
from pathlib import Path

import ldap3
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from roster.models import Person, ResetCode
from tests.directory import DirectoryTree
from tests.portal_support import (
    OTHER_DOMAIN,
    PASSWORD,
    RESET_CODE,
    STAFF_PASSWORD,
    WRONG,
    Portal,
    issue_reset_code,
    location_path,
    lock_out,
    set_directory_password,
    shown_code,
    sign_in,
    signed_in_client,
    submit,
    text,
)

LOCKED = "this account is locked for a while"


@pytest.fixture
def staffed(portal: Portal) -> Portal:
    """Ana and Bo at acme.test, Carl at other.test, and a local helpdesk for each domain."""
    portal.add_person("ana", display_name="Ana García")
    portal.add_person("bo", display_name="Bo Berg")
    portal.add_person("carl", "carl@other.test", display_name="Carl Ortega")
    portal.sync()
    portal.add_staff("helpdesk@acme.test", "helpdesk")
    portal.add_staff("helpdesk@other.test", "helpdesk", OTHER_DOMAIN)
    return portal


def helpdesk_of(portal: Portal, domain: str = "acme.test") -> FlaskClient:
    """A browser signed in as the local helpdesk account of ``domain``."""
    return signed_in_client(portal, f"helpdesk@{domain}", STAFF_PASSWORD)


def found(client: FlaskClient, query: str) -> list[str]:
    """The addresses a helpdesk search lists."""
    response = client.get("/helpdesk", query_string={"q": query})
    assert response.status_code == 200, response.status_code
    return re.findall(r'<a href="/helpdesk/people/\d+">([^<]+)</a>', text(response))


def test_staff_add_then_sign_in_with_the_local_account(portal: Portal) -> None:
    portal.add_staff("Helpdesk@acme.test", "helpdesk")
    client = portal.client()

    response = sign_in(client, "helpdesk@acme.test", STAFF_PASSWORD)

    assert response.status_code == 302 and location_path(response) == "/me"
    page = text(client.get("/me"))
    assert "You are signed in with a local staff account." in page
    assert 'href="/helpdesk"' in page
    assert client.get("/helpdesk").status_code == 200
    refused = sign_in(portal.client(), "helpdesk@acme.test", "Not-The-Staff-Key-1")
    assert refused.status_code == 401 and WRONG in text(refused)


def test_staff_add_refuses_a_short_password(portal: Portal) -> None:
    secret = portal.tool.path.with_name("short.txt")
    secret.write_text("short\n", encoding="utf-8")

    result = portal.tool.run(
        "staff", "add", "hd@acme.test", "--role", "helpdesk", "--domain", "acme.test",
        "--password-file", str(secret),
    )  # fmt: skip

    assert result.exit_code != 0
    assert sign_in(portal.client(), "hd@acme.test", "short").status_code == 401


def test_helpdesk_search_shows_only_their_domains_people(staffed: Portal) -> None:
    staffed.add_staff("admin@acme.test", "admin")
    staffed.add_staff("root@example.net", "global-admin", None)
    acme = helpdesk_of(staffed)
    other = helpdesk_of(staffed, OTHER_DOMAIN)
    admin = signed_in_client(staffed, "admin@acme.test", STAFF_PASSWORD)
    root = signed_in_client(staffed, "root@example.net", STAFF_PASSWORD)

    assert found(acme, "test") == ["ana@acme.test", "bo@acme.test"]
    assert found(acme, "Garc") == ["ana@acme.test"]
    assert found(acme, "carl") == [] and "Nobody found." in text(acme.get("/helpdesk?q=carl"))
    assert found(acme, "Ortega") == []
    assert found(other, "test") == ["carl@other.test"]
    assert found(admin, "test") == ["ana@acme.test", "bo@acme.test"]
    assert found(root, "test") == ["ana@acme.test", "bo@acme.test", "carl@other.test"]


def test_search_text_is_only_text(staffed: Portal) -> None:
    acme = helpdesk_of(staffed)
    answers = {
        query: acme.get("/helpdesk", query_string={"q": query}).status_code
        for query in ("%", "_", "\\", "*", "' OR 1=1 --", "\x00", "a\x00b")
    }

    assert answers == dict.fromkeys(answers, 200)
    assert found(acme, "%") == [] and found(acme, "_") == []


def test_reset_code_is_shown_once_and_stored_only_hashed(staffed: Portal) -> None:
    ana_id = staffed.person_id("ana@acme.test")
    ana = signed_in_client(staffed, "ana@acme.test")
    helpdesk = helpdesk_of(staffed)

    response = issue_reset_code(helpdesk, ana_id)

    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]
    code = shown_code(response)
    assert re.fullmatch(r"[0-9A-Z]{4}(-[0-9A-Z]{4}){3}", code)
    assert "It works once, for 24 hours" in text(response)
    assert code not in text(helpdesk.get(f"/helpdesk/people/{ana_id}"))
    stored = staffed.dump()
    assert code not in stored and code.replace("-", "") not in stored
    assert ("reset_code.issued", "helpdesk@acme.test") in staffed.audit_actions("ana@acme.test")
    assert location_path(ana.get("/me")) == "/sign-in"  # her sessions ended


def test_each_code_is_new_and_the_earlier_one_stops_working(staffed: Portal) -> None:
    ana_id = staffed.person_id("ana@acme.test")
    helpdesk = helpdesk_of(staffed)
    first = shown_code(issue_reset_code(helpdesk, ana_id))
    second = shown_code(issue_reset_code(helpdesk, ana_id, replacing=current_code_id(staffed)))
    assert first != second

    def redeem(code: str) -> int:
        data = {"address": "ana@acme.test", "code": code}
        data |= {"password": "New-Lantern-7702", "confirmation": "New-Lantern-7702"}
        return submit(staffed.client(), "/reset", data).status_code

    assert redeem(first) == 401
    assert redeem(second) == 302


def current_code_id(portal: Portal) -> str:
    """The id of the newest reset code (the one a "replace" button names)."""
    with Session(portal.engine) as session:
        return str(session.scalar(select(func.max(ResetCode.id))))


def test_a_reload_neither_shows_the_code_again_nor_issues_another(staffed: Portal) -> None:
    """Regression (issue #8 B9): reloading the code page silently issued a new code and
    voided the one just read to the caller. A code is issued by a POST and shown by the
    page it redirects to, once; a new POST while a code still works asks first."""
    ana_id = staffed.person_id("ana@acme.test")
    helpdesk = helpdesk_of(staffed)
    page = f"/helpdesk/people/{ana_id}"

    issued = submit(helpdesk, page, {}, action=f"{page}/reset-code")
    assert issued.status_code == 303 and location_path(issued) == f"{page}/reset-code"
    cookie = helpdesk.get_cookie("continuity_session")
    assert cookie is not None
    shown = helpdesk.get(location_path(issued))
    code = shown_code(shown)
    # Between the two the code waits in the (signed, readable) session cookie, sealed.
    payload = cookie.value.lstrip(".").split(".")[0]
    readable = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    if cookie.value.startswith("."):  # compressed
        readable = zlib.decompress(readable)
    assert b"reset_code_to_show" in readable
    assert code.encode() not in readable and code.replace("-", "").encode() not in readable
    assert "no-store" in shown.headers["Cache-Control"]
    reload = helpdesk.get(location_path(issued))
    resent = submit(helpdesk, page, {}, action=f"{page}/reset-code")  # the POST again

    assert reload.status_code == 200 and not RESET_CODE.search(text(reload))
    assert "The code has been shown already" in text(reload)
    assert resent.status_code == 200 and not RESET_CODE.search(text(resent))
    assert "still works" in text(resent)
    assert "Replace it with a new code" in text(resent)
    issued_events = [a for a, _ in staffed.audit_actions("ana@acme.test")]
    assert issued_events.count("reset_code.issued") == 1
    assert redeem(staffed, code) == 302  # the code read to the caller works

    # Replacing needs the question's answer, naming the code it replaces: a stale
    # answer (the form sent again after the replacement) asks again.
    second = shown_code(issue_reset_code(helpdesk, ana_id))
    replaced_id = current_code_id(staffed)
    third = shown_code(issue_reset_code(helpdesk, ana_id, replacing=replaced_id))
    stale = issue_reset_code(helpdesk, ana_id, replacing=replaced_id)
    assert second != third and not RESET_CODE.search(text(stale))
    assert "Replace it with a new code" in text(stale)
    assert redeem(staffed, second) == 401 and redeem(staffed, third) == 302


def redeem(portal: Portal, code: str) -> int:
    """The answer to Ana's new emergency password with ``code``."""
    data = {"address": "ana@acme.test", "code": code}
    data |= {"password": "New-Lantern-7702", "confirmation": "New-Lantern-7702"}
    return submit(portal.client(), "/reset", data).status_code


def test_helpdesk_of_another_domain_gets_404(staffed: Portal) -> None:
    ana_id = staffed.person_id("ana@acme.test")
    carl_id = staffed.person_id("carl@other.test")
    ana = signed_in_client(staffed, "ana@acme.test")
    other = helpdesk_of(staffed, OTHER_DOMAIN)
    person_page = f"/helpdesk/people/{carl_id}"

    by_page = other.get(f"/helpdesk/people/{ana_id}")
    by_code = submit(other, person_page, {}, action=f"/helpdesk/people/{ana_id}/reset-code")
    by_unlock = submit(other, person_page, {}, action=f"/helpdesk/people/{ana_id}/unlock")
    with Session(staffed.engine) as session:
        highest = session.scalar(select(func.max(Person.id)))
        codes = session.scalar(select(func.count()).select_from(ResetCode))
    assert highest is not None
    guessed = {
        number: other.get(f"/helpdesk/people/{number}").status_code
        for number in range(0, highest + 4)
    }

    assert (by_page.status_code, by_code.status_code, by_unlock.status_code) == (404, 404, 404)
    assert "Ana" not in text(by_page) and "ana@acme.test" not in text(by_page)
    assert codes == 0
    assert guessed == {number: 200 if number == carl_id else 404 for number in guessed}
    assert ana.get("/me").status_code == 200  # nothing happened to her


def test_a_person_id_beyond_the_database_integers_is_not_found(staffed: Portal) -> None:
    helpdesk = helpdesk_of(staffed)
    page = f"/helpdesk/people/{staffed.person_id('ana@acme.test')}"
    huge = 2**63

    answers = {
        "page": helpdesk.get(f"/helpdesk/people/{huge}").status_code,
        "code": submit(
            helpdesk, page, {}, action=f"/helpdesk/people/{huge}/reset-code"
        ).status_code,
        "unlock": submit(helpdesk, page, {}, action=f"/helpdesk/people/{huge}/unlock").status_code,
    }

    assert answers == {"page": 404, "code": 404, "unlock": 404}


def test_directory_group_gives_and_takes_the_helpdesk_role(
    tmp_path: Path, database_url: str, directory: DirectoryTree
) -> None:
    """A member of helpdesk_group serves the source's domains until a sync takes it away."""
    dn = directory.add_person("hd", "hd@acme.test")
    set_directory_password(directory.slapd, dn, PASSWORD)
    group = directory.add_group("Helpdesk", dn)
    portal = Portal.on(tmp_path, database_url, directory, source_options={"helpdesk_group": group})
    try:
        portal.add_person("ana")
        portal.add_person("carl", "carl@other.test")
        portal.sync()
        helpdesk = signed_in_client(portal, "hd@acme.test")
        before = found(helpdesk, "test")

        directory.slapd.modify(group, {"member": [(ldap3.MODIFY_REPLACE, [group])]})
        portal.sync()
        after = helpdesk.get("/helpdesk?q=test").status_code
    finally:
        portal.close()

    assert before == ["ana@acme.test", "carl@other.test", "hd@acme.test"]
    assert after == 403


def test_helpdesk_lifts_a_lock(staffed: Portal) -> None:
    ana_id = staffed.person_id("ana@acme.test")
    lock_out(staffed, "ana@acme.test")
    staffed.age_throttle()
    assert LOCKED in text(sign_in(staffed.client(), "ana@acme.test", PASSWORD))
    helpdesk = helpdesk_of(staffed)
    page = f"/helpdesk/people/{ana_id}"
    assert '<dd id="lock">locked</dd>' in text(helpdesk.get(page))

    response = submit(helpdesk, page, {}, action=f"{page}/unlock")

    assert location_path(response) == page
    after = text(helpdesk.get(page))
    assert "The sign-in lock is lifted." in after
    assert '<dd id="lock">not locked</dd>' in after
    assert ("account.unlocked", "helpdesk@acme.test") in staffed.audit_actions("ana@acme.test")
    assert signed_in_client(staffed, "ana@acme.test")


def test_person_page_shows_the_audit_trail(staffed: Portal) -> None:
    ana_id = staffed.person_id("ana@acme.test")
    signed_in_client(staffed, "ana@acme.test")
    sign_in(staffed.client(), "ana@acme.test", "Not-Her-Password-1")
    helpdesk = helpdesk_of(staffed)
    issue_reset_code(helpdesk, ana_id)

    page = text(helpdesk.get(f"/helpdesk/people/{ana_id}"))

    for action in ("sign_in", "sign_in.failed", "reset_code.issued"):
        assert f'title="{action}"' in page, action
    assert "helpdesk@acme.test" in page
