"""Signing in: the directory password (OpenLDAP and Active Directory), the emergency password
with the directory stopped, throttling and locks, no enumeration, LDAP injection."""

from __future__ import annotations

import functools
import html
import re
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from continuity.localslapd import Slapd
from roster.models import Person, SignInThrottle, utcnow
from roster.throttle import ACCOUNT_LOCK_AFTER, FREE_FAILURES
from tests.directory import DirectoryTree, source_toml
from tests.portal_support import (
    DIRECTORY_DOWN,
    EMERGENCY,
    PASSWORD,
    WRONG,
    Portal,
    csrf_token,
    location_path,
    lock_out,
    sign_in,
    submit,
    text,
    without_csrf,
)
from tests.servers.samba import SambaDC

LOCKED = "this account is locked for a while"


def messages(page: str) -> list[str]:
    """The flashed messages of a page, as a person reads them."""
    found = re.findall(r'<p class="flash[^"]*"[^>]*>(.*?)</p>', page, re.DOTALL)
    return [html.unescape(" ".join(message.split())) for message in found]


def signed_in(portal: Portal, address: str, password: str) -> bool:
    """Whether a new browser that signs in with these gets to the person's own page."""
    client = portal.client()
    response = sign_in(client, address, password)
    if response.status_code != 302 or location_path(response) != "/me":
        return False
    return client.get("/me").status_code == 200


# Directory passwords against the real slapd.


def test_directory_password_signs_in(portal: Portal) -> None:
    portal.add_person("ana", display_name="Ana García")
    portal.sync()
    client = portal.client()

    response = sign_in(client, "Ana@Acme.test ", PASSWORD)

    assert response.status_code == 302 and location_path(response) == "/me"
    page = client.get("/me")
    assert page.status_code == 200 and "ana@acme.test" in text(page)
    assert ("sign_in", "ana@acme.test") in portal.audit_actions("ana@acme.test")


def test_an_alias_signs_in_as_the_person(portal: Portal) -> None:
    portal.add_person("ana", aliases=("ana.garcia@acme.test",))
    portal.sync()
    client = portal.client()

    assert sign_in(client, "ana.garcia@acme.test", PASSWORD).status_code == 302
    assert "ana@acme.test" in text(client.get("/me"))


def test_wrong_password_is_refused(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    client = portal.client()

    response = sign_in(client, "ana@acme.test", "Not-Her-Password-1")

    assert response.status_code == 401
    assert WRONG in text(response)
    assert DIRECTORY_DOWN not in text(response)
    assert location_path(client.get("/me")) == "/sign-in"
    assert ("sign_in.failed", "ana@acme.test") in portal.audit_actions("ana@acme.test")


def test_empty_password_is_refused(portal: Portal) -> None:
    """LDAP takes a bind with an empty password for an anonymous one and says "success"."""
    portal.add_person("ana")
    portal.sync()
    for address in ("ana@acme.test", "nobody@acme.test"):
        client = portal.client()
        response = sign_in(client, address, "")
        assert response.status_code == 401, address
        assert WRONG in text(response)
        assert location_path(client.get("/me")) == "/sign-in"


def test_disabled_person_cannot_sign_in(portal: Portal) -> None:
    """The directory still takes the password; the roster says the person is disabled."""
    portal.add_person("ana")
    portal.sync()
    assert signed_in(portal, "ana@acme.test", PASSWORD)

    portal.disable("ana")
    portal.sync()

    response = sign_in(portal.client(), "ana@acme.test", PASSWORD)
    assert response.status_code == 401 and WRONG in text(response)


def test_person_removed_from_the_directory_cannot_sign_in(portal: Portal) -> None:
    portal.add_person("ana")
    portal.add_person("bo")  # a directory with nobody left would stop the sync
    portal.sync()
    portal.tree.delete("ana")
    portal.sync("--allow-mass-removal")

    response = sign_in(portal.client(), "ana@acme.test", PASSWORD)
    assert response.status_code == 401 and WRONG in text(response)


def test_person_the_roster_marks_removed_cannot_sign_in(portal: Portal) -> None:
    """The entry is still in the directory and its password still binds."""
    portal.add_person("ana")
    portal.sync()
    with Session(portal.engine) as session, session.begin():
        session.execute(update(Person).values(removed_at=utcnow()))

    response = sign_in(portal.client(), "ana@acme.test", PASSWORD)
    assert response.status_code == 401 and WRONG in text(response)


# The emergency password, with a directory of the test's own that it stops.


def test_emergency_password_set_on_a_normal_day_works_with_the_directory_stopped(
    own_portal: Portal, own_slapd: Slapd
) -> None:
    own_portal.add_person("ana")
    own_portal.sync()
    own_portal.set_domain(active=True, mode="all", emergency=True)
    client = own_portal.client()
    assert sign_in(client, "ana@acme.test", PASSWORD).status_code == 302
    saved = submit(
        client,
        "/me",
        {"directory_password": PASSWORD, "password": EMERGENCY, "confirmation": EMERGENCY},
        action="/me/emergency-password",
    )
    assert "Your emergency password is set." in text(client.get(location_path(saved)))
    assert submit(client, "/me", {}, action="/sign-out").status_code == 302

    own_slapd.stop()

    refused = sign_in(client, "ana@acme.test", PASSWORD)
    assert refused.status_code == 401
    assert DIRECTORY_DOWN in text(refused)
    accepted = sign_in(client, "ana@acme.test", EMERGENCY)
    assert accepted.status_code == 302 and location_path(accepted) == "/me"
    page = text(client.get("/me"))
    assert "You signed in with your emergency password." in page
    assert ("sign_in", "ana@acme.test") in own_portal.audit_actions("ana@acme.test")


@dataclass(frozen=True)
class Rule:
    """One situation of a person and their domain, and whether the emergency password works."""

    active: bool = True
    mode: str = "all"
    emergency: bool = True
    listed: bool = False
    has_password: bool = True
    disabled: bool = False
    removed: bool = False
    works: bool = False


RULES = {
    "covered, all users": Rule(works=True),
    "service inactive": Rule(active=False),
    "emergency password switched off": Rule(emergency=False),
    "selected users, not listed": Rule(mode="selected"),
    "selected users, listed": Rule(mode="selected", listed=True, works=True),
    "disabled": Rule(disabled=True),
    "removed": Rule(removed=True),
    "no emergency password set": Rule(has_password=False),
}


def test_who_may_use_the_emergency_password(
    tmp_path: Path, database_url: str, own_slapd: Slapd
) -> None:
    """Each case is a person alone in a domain of its own, all on one stopped directory."""
    cases = {name: (f"rule{n}", f"rule{n}.test") for n, name in enumerate(RULES)}
    portal = Portal.on(
        tmp_path,
        database_url,
        DirectoryTree.create(own_slapd),
        domains=tuple(domain for _, domain in cases.values()),
    )
    try:
        for uid, domain in cases.values():
            portal.add_person(uid, f"{uid}@{domain}")
        portal.sync()
        for name, rule in RULES.items():
            uid, domain = cases[name]
            portal.set_domain(domain, active=rule.active, mode=rule.mode, emergency=rule.emergency)
            if rule.listed:
                portal.list_person(f"{uid}@{domain}")
            if rule.has_password:
                portal.set_emergency_password(f"{uid}@{domain}", EMERGENCY)
            if rule.disabled:
                portal.disable(uid)
            if rule.removed:
                portal.tree.delete(uid)
        portal.sync("--allow-mass-removal")
        own_slapd.stop()

        outcomes = {}
        for name, (uid, domain) in cases.items():
            client = portal.client()
            response = sign_in(client, f"{uid}@{domain}", EMERGENCY)
            page = text(response)
            if response.status_code == 302 and client.get("/me").status_code == 200:
                outcomes[name] = "signed in"
            elif response.status_code == 401 and DIRECTORY_DOWN in page:
                outcomes[name] = "refused, directory down"
            else:
                outcomes[name] = f"answered {response.status_code}"
    finally:
        portal.close()

    assert outcomes == {
        name: "signed in" if rule.works else "refused, directory down"
        for name, rule in RULES.items()
    }


def test_directory_down_notice_for_known_and_unknown_addresses(
    own_portal: Portal, own_slapd: Slapd
) -> None:
    """Regression (issue #8 B10): with the directory down, the page said "the address
    or password is not right" next to "the directory cannot be reached": the first may
    be false (nobody can tell). It says one true thing, the same for every address."""
    own_portal.add_person("ana")
    own_portal.sync()
    own_portal.set_domain()
    own_portal.set_emergency_password("ana@acme.test", EMERGENCY)
    own_slapd.stop()

    answers = {
        address: sign_in(own_portal.client(), address, "Some-Guess-12345")
        for address in ("ana@acme.test", "nobody@acme.test")
    }

    for address, response in answers.items():
        assert response.status_code == 401, address
        assert WRONG not in text(response), address
        assert messages(text(response)) == [
            "Your organisation's directory cannot be reached right now, so a directory"
            " password cannot be checked, and this password was not accepted. If you have"
            " set an emergency password, sign in with it."
        ], address
    known, unknown = (without_csrf(text(answers[a])).replace(a, "ADDRESS") for a in answers)
    assert known == unknown


def test_directory_down_notice_does_not_single_out_local_staff_accounts(
    own_portal: Portal, own_slapd: Slapd
) -> None:
    """Regression: unknown addresses got the notice, a staff account there did not."""
    own_portal.add_staff("helpdesk@acme.test", "helpdesk")
    own_slapd.stop()

    staff = sign_in(own_portal.client(), "helpdesk@acme.test", "Some-Guess-12345")
    nobody = sign_in(own_portal.client(), "nobody@acme.test", "Some-Guess-12345")

    assert staff.status_code == nobody.status_code == 401
    assert DIRECTORY_DOWN in text(nobody) and WRONG not in text(nobody)
    assert DIRECTORY_DOWN in text(staff) and WRONG not in text(staff)


# Active Directory binds against the session's Samba DC.

AD_DOMAIN = "corp.example.org"
AD_PASSWORD = "Pa55-word!x"


@dataclass
class AdUnit:
    """An OU of the test's own in the shared Samba DC."""

    samba: SambaDC
    name: str

    def user(self, name: str) -> str:
        """Create an enabled user with a mail address; returns the address."""
        account = f"{self.name}-{name}"
        address = f"{account}@{AD_DOMAIN}"
        self.samba.samba_tool(
            "user",
            "create",
            account,
            AD_PASSWORD,
            f"--userou=OU={self.name}",
            "--use-username-as-cn",
            f"--mail-address={address}",
        )
        return address


@pytest.fixture
def ad_portal(tmp_path: Path, database_url: str, samba: SambaDC) -> Iterator[tuple[Portal, AdUnit]]:
    """The portal on an OU of its own in the Samba DC, as the `ad` source."""
    unit = AdUnit(samba, f"p{secrets.token_hex(3)}")
    samba.samba_tool("ou", "add", f"OU={unit.name}")
    source = source_toml(
        "ad",
        samba.url,
        f"OU={unit.name},{samba.base_dn}",
        samba.admin_bind,
        samba.admin_password,
        profile="ad",
        domains=[AD_DOMAIN],
    )
    built = Portal(tmp_path, database_url, source, domains=(AD_DOMAIN,))
    yield built, unit
    built.close()


def test_active_directory_bind_and_a_disabled_account(
    ad_portal: tuple[Portal, AdUnit],
) -> None:
    portal, unit = ad_portal
    ana, bo = unit.user("ana"), unit.user("bo")
    portal.sync()
    assert signed_in(portal, ana, AD_PASSWORD)
    assert signed_in(portal, bo, AD_PASSWORD)
    assert sign_in(portal.client(), ana, "Wr0ng-password!").status_code == 401

    unit.samba.disable_user(f"{unit.name}-bo")
    # The roster does not know yet: Active Directory itself refuses the bind.
    refused = sign_in(portal.client(), bo, AD_PASSWORD)
    assert refused.status_code == 401 and WRONG in text(refused)
    assert DIRECTORY_DOWN not in text(refused)

    portal.sync()
    assert sign_in(portal.client(), bo, AD_PASSWORD).status_code == 401
    assert signed_in(portal, ana, AD_PASSWORD)


# Throttling and locks.


def wait_seconds(page: str) -> int:
    """The wait a throttled sign-in page asks for."""
    found = re.search(r"Too many attempts\. Try again in (\d+) seconds?\.", page)
    assert found, page
    return int(found.group(1))


def test_failures_bring_a_growing_wait(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    for _ in range(FREE_FAILURES):
        response = sign_in(portal.client(), "ana@acme.test", "Not-Her-Password-1")
        assert response.status_code == 401 and WRONG in text(response)

    waits = []
    for _ in range(3):
        # Even the right password waits its turn.
        throttled = sign_in(portal.client(), "ana@acme.test", PASSWORD)
        assert throttled.status_code == 401
        waits.append(wait_seconds(text(throttled)))
        portal.age_throttle()
        assert sign_in(portal.client(), "ana@acme.test", "Not-Her-Password-1").status_code == 401

    assert 1 <= waits[0] < waits[1] < waits[2], waits
    portal.age_throttle()
    assert signed_in(portal, "ana@acme.test", PASSWORD)


def test_ten_failures_lock_known_and_unknown_addresses_alike(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    answers = {}
    for address in ("ana@acme.test", "nobody@acme.test"):
        lock_out(portal, address)
        portal.age_throttle()
        answer = sign_in(portal.client(), address, PASSWORD)  # even the right password
        answers[address] = (answer.status_code, without_csrf(text(answer)).replace(address, "A"))

    assert answers["ana@acme.test"][0] == 401
    assert LOCKED in answers["ana@acme.test"][1]
    assert answers["nobody@acme.test"] == answers["ana@acme.test"]
    actions = [action for action, _ in portal.audit_actions("ana@acme.test")]
    assert actions.count("sign_in.failed") == ACCOUNT_LOCK_AFTER
    assert actions.count("account.locked") == 1
    assert "sign_in" not in actions


def test_a_lock_holds_for_every_address_of_the_person(portal: Portal) -> None:
    """Regression: each alias kept its own count, so every address gave ten more guesses."""
    portal.add_person("ana", aliases=("ana.garcia@acme.test",))
    portal.sync()

    lock_out(portal, "ana@acme.test")
    portal.age_throttle()

    response = sign_in(portal.client(), "ana.garcia@acme.test", PASSWORD)
    assert response.status_code == 401
    assert LOCKED in text(response)


def test_people_behind_one_address_are_not_slowed_by_each_others_typos(portal: Portal) -> None:
    """Regression: one office behind one NAT address waited on each other's typos."""
    for uid in ("ana", "bo", "carl", "dora"):
        portal.add_person(uid)
    portal.sync()
    office = "192.0.2.10"
    for uid in ("ana", "bo", "carl"):
        typo = sign_in(
            portal.client(), f"{uid}@acme.test", "Typo-In-Password-1", client_address=office
        )
        assert WRONG in text(typo)

    response = sign_in(portal.client(), "dora@acme.test", PASSWORD, client_address=office)

    assert response.status_code == 302, text(response)


# No enumeration.


def test_unknown_and_known_addresses_get_the_same_answer(portal: Portal) -> None:
    portal.add_person("ana")
    portal.sync()
    answers = {}
    for address in ("ana@acme.test", "nobody@acme.test", "nobody@other.test", "x@elsewhere.test"):
        response = sign_in(portal.client(), address, "Not-Her-Password-1")
        answers[address] = (
            response.status_code,
            without_csrf(text(response)).replace(address, "ADDRESS"),
        )

    known = answers.pop("ana@acme.test")
    assert known[0] == 401
    for address, answer in answers.items():
        assert answer == known, address


def timed(attempt: Callable[[], object]) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    attempt()
    return time.perf_counter() - start


def test_unknown_addresses_cost_the_same_time(portal: Portal) -> None:
    """Both pay one argon2 verification; medians of five attempts each within a factor 3."""
    portal.add_person("ana")
    portal.sync()
    times: dict[str, list[float]] = {"ana@acme.test": [], "nobody@acme.test": []}
    client = portal.client()
    for _ in range(5):
        for address, spent in times.items():
            token = csrf_token(client.get("/sign-in").get_data(as_text=True))
            data = {"csrf_token": token, "address": address, "password": "Guess-1234567"}
            spent.append(timed(functools.partial(client.post, "/sign-in", data=data)))
            with Session(portal.engine) as session, session.begin():
                session.execute(delete(SignInThrottle))

    known = statistics.median(times["ana@acme.test"])
    unknown = statistics.median(times["nobody@acme.test"])
    assert 1 / 3 <= known / unknown <= 3, (known, unknown)


# LDAP injection in the address field.

INJECTIONS = [
    "*",
    "*)(uid=*",
    "\\00",
    "\x00",
    "ana@acme.test\x00",
    "ana@acme.test)(|(uid=*",
    "*@acme.test",
    "ana*@acme.test",
    "*)(mail=*@acme.test",
    "*)(objectClass=*))(|(mail=*@acme.test",
    "ana\\2a@acme.test",
    "(uid=ana)@acme.test",
    "a" * 400 + "@acme.test",
]


def test_the_address_typed_is_shown_back_as_text(portal: Portal) -> None:
    typed = '"><script>alert(1)</script>@acme.test'

    page = sign_in(portal.client(), typed, "Some-Guess-12345").get_data(as_text=True)

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page or "&#34;&gt;&lt;script&gt;" in page


def test_ldap_injection_in_the_address_signs_nobody_in(portal: Portal) -> None:
    portal.add_person("ana")
    portal.add_person("bo")
    portal.sync()
    answers = {}
    for payload in INJECTIONS:
        for password in (PASSWORD, ""):
            client = portal.client()
            response = sign_in(client, payload, password)
            answers[(payload, password)] = (
                response.status_code,
                client.get("/me").status_code,
            )

    assert answers == {key: (401, 302) for key in answers}
