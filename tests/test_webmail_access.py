"""Who may open the standby webmail, against the real Dovecot store: people who are not
covered, disabled, of an inactive domain, and staff reach none of its endpoints; a
domain that opens it only during an outage; one person never reaches another's
mailbox; and the pool of IMAP connections behind it."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session
from werkzeug.routing import Rule

from portal.webmail.imap import (
    GREETERS,
    StorePool,
    StoreSettings,
    StoreUnavailable,
    folder_token,
)
from roster.models import WEBMAIL_OUTAGE, ContinuityEvent, Domain, Person
from tests.portal_support import (
    DOMAIN,
    EMERGENCY,
    OTHER_DOMAIN,
    PASSWORD,
    STAFF_PASSWORD,
    Portal,
    csrf_token,
    location_path,
    sign_in,
    text,
)
from tests.servers.dovecot import DovecotServer
from tests.test_webmail import page_of, subjects, uid_of
from tests.webmail_support import (  # noqa: F401
    Webmail,
    mail,
    standby_store,
    webmail,
    webmail_world,
)

INBOX = folder_token("INBOX")
T = TypeVar("T")
CLOSED = "The standby webmail is not open to you"


def webmail_rules(client: FlaskClient) -> list[Rule]:
    app = client.application
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("webmail.")]
    assert len(rules) >= 8, rules
    return rules


def url_of(rule: Rule) -> str:
    """The rule's address with real-looking values (a folder, a message, a part)."""
    values = {"token": INBOX, "uid": "1", "part": "1"}
    path = rule.rule
    for name in rule.arguments:
        path = path.replace(f"<{name}>", values[name])
    return path


def every_endpoint_refuses(client: FlaskClient, reason: str) -> None:
    """Every webmail endpoint answers 403 (POSTs with a valid CSRF token); the front
    page says why."""
    token = csrf_token(page_of(client.get("/me")))
    for rule in webmail_rules(client):
        url = url_of(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):  # type: ignore[operator]
            data: dict[str, Any] = {"csrf_token": token, "action": "read", "uid": "1"}
            answer = client.open(url, method=method, data=data if method == "POST" else None)
            assert answer.status_code == 403, (method, url, answer.status_code)
    front = client.get("/webmail")
    assert front.status_code == 403
    assert CLOSED in text(front) and reason in text(front)


def set_domain_webmail(webmail: Webmail, **values: Any) -> None:  # noqa: F811
    with Session(webmail.portal.engine) as session, session.begin():
        session.execute(update(Domain).where(Domain.name == DOMAIN).values(**values))


def test_people_the_webmail_is_not_for_reach_none_of_it(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, mail("Private"))
    bob = webmail.person("bob")
    client = webmail.client(ana)
    assert "Private" in text(client.get("/webmail", follow_redirects=True))
    bob_client = webmail.client(bob)
    assert '/webmail"' in page_of(bob_client.get("/me"))  # /me links to it

    # Not covered: the domain covers only selected people, and ana is not one.
    webmail.portal.set_domain(mode="selected")
    every_endpoint_refuses(client, "You are not covered by Continuity Service")
    assert '/webmail"' not in page_of(client.get("/me"))
    webmail.portal.list_person(ana)
    assert client.get("/webmail", follow_redirects=True).status_code == 200
    webmail.portal.set_domain(mode="all")

    # An inactive domain.
    webmail.portal.set_domain(active=False)
    every_endpoint_refuses(client, "Continuity Service is not active for your domain.")
    webmail.portal.set_domain(active=True)
    assert client.get("/webmail", follow_redirects=True).status_code == 200

    # A disabled person: their session ends, they cannot sign in again, and no
    # webmail endpoint serves them.
    webmail.portal.disable(bob.partition("@")[0])
    webmail.portal.sync()
    every_endpoint_sends_to_sign_in(bob_client)
    again = sign_in(webmail.portal.client(), bob, PASSWORD)
    assert again.status_code != 302 or location_path(again) != "/me"
    # Disabled in the roster while the session still stands (the directory not yet read).
    with Session(webmail.portal.engine) as session, session.begin():
        session.execute(update(Person).where(Person.mail == ana).values(disabled=True))
    every_endpoint_sends_to_sign_in(client)

    # Not signed in: sent to sign in, never served.
    every_endpoint_sends_to_sign_in(webmail.portal.client())


def every_endpoint_sends_to_sign_in(client: FlaskClient) -> None:
    for rule in webmail_rules(client):
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):  # type: ignore[operator]
            answer = client.open(url_of(rule), method=method)
            if method == "POST" and answer.status_code == 400:  # no CSRF token to give
                continue
            assert answer.status_code in (302, 403), (method, rule.rule, answer.status_code)
            if answer.status_code == 302:
                assert location_path(answer) == "/sign-in", rule.rule


def test_the_emergency_password_opens_it(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, mail("Read with the emergency password"))
    webmail.portal.set_emergency_password(ana)
    client = webmail.portal.client()
    signed_in = sign_in(client, ana, EMERGENCY)
    assert signed_in.status_code == 302 and location_path(signed_in) == "/me"
    assert "Read with the emergency password" in text(client.get("/webmail", follow_redirects=True))


def test_staff_accounts_reach_none_of_it(webmail: Webmail) -> None:  # noqa: F811
    webmail.portal.add_staff("admin@acme.test", "admin")
    client = webmail.portal.client()
    assert sign_in(client, "admin@acme.test", STAFF_PASSWORD).status_code == 302
    every_endpoint_refuses(client, "Only people covered by Continuity Service")


def test_a_domain_may_open_it_only_during_an_outage(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, mail("During the outage"))
    client = webmail.client(ana)
    calm = text(client.get("/webmail", follow_redirects=True))
    assert "Your mail server is working." in calm and "During the outage" in calm

    set_domain_webmail(webmail, webmail_access=WEBMAIL_OUTAGE)
    every_endpoint_refuses(client, "opens the standby webmail only while your mail server is down")

    with Session(webmail.portal.engine) as session, session.begin():
        other_id = session.query(Domain.id).filter(Domain.name == OTHER_DOMAIN).scalar()
        session.add(ContinuityEvent(domain_id=other_id, reason="another domain's outage"))
    assert client.get("/webmail").status_code == 403  # not this domain's event
    with Session(webmail.portal.engine) as session, session.begin():
        domain_id = session.query(Domain.id).filter(Domain.name == DOMAIN).scalar()
        session.add(ContinuityEvent(domain_id=domain_id, reason="primary does not answer"))
    opened = client.get("/webmail", follow_redirects=True)
    page = text(opened)
    assert opened.status_code == 200
    assert "Your mail server is down; mail arriving now is kept here" in page
    assert "During the outage" in page

    with Session(webmail.portal.engine) as session, session.begin():
        session.execute(
            update(ContinuityEvent)
            .where(ContinuityEvent.domain_id == domain_id)
            .values(recovery_started_at=ContinuityEvent.started_at)
        )
    assert "Your mail server is back." in text(client.get("/webmail", follow_redirects=True))
    with Session(webmail.portal.engine) as session, session.begin():
        session.execute(update(ContinuityEvent).values(ended_at=ContinuityEvent.started_at))
    assert client.get("/webmail", follow_redirects=True).status_code == 403


def test_one_person_never_reaches_another_mailbox(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    bob = webmail.person("bob")
    webmail.deliver(ana, mail("Ana's own"))
    webmail.deliver(bob, mail("Bob 1"), mail("Bob 2"), mail("Bob's secret"))
    with webmail.imap(bob) as imap:
        imap.create_folder("Secret")
        imap.select_folder("INBOX")
        imap.copy(imap.search(["SUBJECT", "secret"]), "Secret")
    ana_client, bob_client = webmail.client(ana), webmail.client(bob)
    bob_inbox = page_of(bob_client.get(f"/webmail/f/{INBOX}"))
    secret_uid = uid_of(bob_inbox, "Bob's secret")
    own_uid = uid_of(page_of(ana_client.get(f"/webmail/f/{INBOX}")), "Ana's own")
    assert secret_uid > own_uid
    secret = folder_token("Secret")
    assert page_of(bob_client.get(f"/webmail/f/{secret}"))

    # Bob's message numbers and folders, in ana's browser: not found, or ana's own mail.
    for url in (
        f"/webmail/m/{INBOX}/{secret_uid}",
        f"/webmail/m/{INBOX}/{secret_uid}/body",
        f"/webmail/m/{INBOX}/{secret_uid}/part/1",
        f"/webmail/f/{secret}",
        f"/webmail/m/{secret}/1",
        f"/webmail/compose?mode=reply&source={INBOX}/{secret_uid}",
        f"/webmail/compose?mode=forward&source={secret}/1",
    ):
        answer = ana_client.get(url)
        assert answer.status_code == 404, (url, answer.status_code)
        assert "secret" not in text(answer)
    assert "Ana's own" in text(ana_client.get(f"/webmail/m/{INBOX}/{own_uid}"))
    # Other people's mailboxes by name (Dovecot's shared and user namespaces, paths).
    for name in (
        f"user/{bob}/INBOX",
        f"shared/{bob}/INBOX",
        f"../{bob.partition('@')[0]}/Maildir",
        "Nothing",
        "INBOX/../../etc",
    ):
        assert ana_client.get(f"/webmail/f/{folder_token(name)}").status_code == 404, name
        assert ana_client.get(f"/webmail/m/{folder_token(name)}/1").status_code == 404, name
    # Tokens and numbers that are not what they should be.
    for url in (
        "/webmail/f/not*a*token",
        "/webmail/f/AAAA",  # three NUL bytes
        f"/webmail/f/{'A' * 500}",
        f"/webmail/m/{INBOX}/abc",
        f"/webmail/m/{INBOX}/0",
        f"/webmail/m/{INBOX}/-1",
        f"/webmail/m/{INBOX}/1.5",
        f"/webmail/m/{INBOX}/4294967296",
        f"/webmail/m/{INBOX}/99999999999999999999999",
        f"/webmail/m/{INBOX}/{'9' * 5000}",
        f"/webmail/m/{INBOX}/١",  # an Arabic-Indic one
        f"/webmail/m/{INBOX}/4294967295",
    ):
        assert ana_client.get(url).status_code == 404, url
    listing = page_of(ana_client.get(f"/webmail/f/{INBOX}"))
    answer = ana_client.post(
        f"/webmail/f/{INBOX}/act",
        data={"csrf_token": csrf_token(listing), "action": "delete", "uid": str(secret_uid)},
    )
    assert answer.status_code in (302, 404)
    assert sorted(subjects(page_of(bob_client.get(f"/webmail/f/{INBOX}")))) == [
        "Bob 1",
        "Bob 2",
        "Bob's secret",
    ]
    assert subjects(page_of(ana_client.get(f"/webmail/f/{INBOX}"))) == ["Ana's own"]


# -- the pool -----------------------------------------------------------------------


def logins(webmail: Webmail, address: str) -> int:  # noqa: F811
    """How many times the store let the portal in as ``address`` (Dovecot's log)."""
    return webmail.store.log_file.read_text(errors="replace").count(f"Login: user=<{address}>")


def test_connections_are_reused_and_a_dead_one_replaced(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, mail("Kept"), mail("Also kept"))
    client = webmail.client(ana)
    before = logins(webmail, ana)
    for _ in range(5):
        listing = page_of(client.get(f"/webmail/f/{INBOX}"))
    page_of(client.get(f"/webmail/m/{INBOX}/{uid_of(listing, 'Kept')}"))
    pool = webmail.portal.app.extensions["webmail_pool"]
    assert pool.open_connections() == 1
    assert logins(webmail, ana) == before + 1

    # The store drops the portal's connection: the next page works all the same.
    subprocess.run(
        ["doveadm", "-c", str(webmail.store.config_file), "kick", ana],
        check=True,
        capture_output=True,
        timeout=20,
    )
    again = client.get(f"/webmail/f/{INBOX}")
    assert sorted(subjects(page_of(again))) == ["Also kept", "Kept"]
    assert logins(webmail, ana) == before + 2
    assert pool.open_connections() == 1

    # The socket closed under the pool: the same.
    (connection,) = pool._idle[ana.lower()]
    connection.client._imap.sock.close()
    assert "Kept" in text(client.get(f"/webmail/m/{INBOX}/{uid_of(listing, 'Kept')}"))
    assert pool.open_connections() == 1


def settled(read: Callable[[], T]) -> T:
    """``read()`` once two readings a moment apart agree."""
    last = read()
    while True:
        time.sleep(0.3)
        again = read()
        if again == last:
            return again
        last = again


def unused_connections(webmail: Webmail) -> int:  # noqa: F811
    """How many connections to the store closed without signing in (Dovecot's log)."""
    return webmail.store.log_file.read_text(errors="replace").count("no auth attempts")


def test_a_first_page_opens_one_connection_ahead_and_a_refused_person_none(
    webmail: Webmail,  # noqa: F811
) -> None:
    """The first page of a visit opens its connection while the portal checks who may
    come in (one connection, signed in, none wasted); later pages reuse it and open
    nothing; a person refused the webmail opens nothing ahead more than once."""
    ana = webmail.person("ana")
    webmail.deliver(ana, mail("Ahead"))
    client = webmail.client(ana)
    pool = webmail.portal.app.extensions.get("webmail_pool")
    if pool is not None:
        pool.close()
    # The store's log is shared with earlier tests: counted once it stopped moving.
    before = settled(lambda: (logins(webmail, ana), unused_connections(webmail)))
    for _ in range(3):
        assert subjects(page_of(client.get(f"/webmail/f/{INBOX}"))) == ["Ahead"]
    pool = webmail.portal.app.extensions["webmail_pool"]
    assert pool.open_connections() == 1
    assert logins(webmail, ana) == before[0] + 1

    set_domain_webmail(webmail, webmail_access=WEBMAIL_OUTAGE)
    pool.close()
    begun = pool.greetings
    for _ in range(4):
        assert client.get(f"/webmail/f/{INBOX}").status_code == 403
    assert pool.open_connections() == 0
    # Only the first refused page began one ahead (closed unused, or not even opened
    # when the refusal came before a thread took it up).
    assert pool.greetings - begun == 1
    assert settled(lambda: unused_connections(webmail)) - before[1] <= 1
    assert logins(webmail, ana) == before[0] + 1


class SlowStore:
    """A stand-in for opening a connection that takes a while, counting the openings."""

    def __init__(self) -> None:
        self.opened = 0
        self.lock = threading.Lock()

    def open(self) -> Any:
        time.sleep(0.2)
        with self.lock:
            self.opened += 1
        return SimpleNamespace(logout=lambda: None, shutdown=lambda: None)


def test_a_flood_of_requests_opens_no_queue_of_connections_ahead() -> None:
    """Requests that open a connection ahead and then need none (a flood of them from
    one session) open at most a few, never a queue that the next person's first page
    would wait behind: that page's connection comes at once."""
    # A store named by a host name (resolving it may wait): a thread opens its connections.
    pool = StorePool(
        StoreSettings("store.invalid", 1, False, None, "portal", "secret", timeout=1.0)
    )
    slow = SlowStore()
    pool._open = slow.open  # type: ignore[method-assign]  # no store needed for this
    for _ in range(40):
        greeting = pool.greet("person:1")
        if greeting is not None:
            greeting.discard()
    began = time.monotonic()
    greeting = pool.greet("person:2")
    client = greeting.take(1.0) if greeting is not None else None
    if client is None:
        client = slow.open()
    assert time.monotonic() - began < 0.6
    time.sleep(0.5)
    assert slow.opened <= GREETERS + 1


def test_a_store_on_loopback_is_greeted_without_a_thread_and_a_store_down_is_told() -> None:
    """On loopback the request itself starts the connection (the store greets it in the
    socket while the portal checks access): no thread is involved. A store that is down
    is told when the request needs the connection, as opening one then would; a
    greeting not needed is closed; nothing is left open either way."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free again once closed: nobody listens there
    pool = StorePool(StoreSettings("127.0.0.1", port, False, None, "portal", "secret", timeout=1.0))
    greeting = pool.greet("person:1")
    assert greeting is not None
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        greeting.take(1.0)
    assert greeting.take(1.0) is None  # taken once
    unused = pool.greet("person:1")
    assert unused is not None and unused.discard()
    assert pool._greeters is None  # noqa: SLF001 - no thread was started for either
    assert pool.greetings == 2
    # A flood of requests at once opens no more than a few ahead; each one done (taken
    # or closed) makes room again.
    held = [pool.greet(f"person:{n}") for n in range(40)]
    begun = [greeting for greeting in held if greeting is not None]
    assert len(begun) == GREETERS
    for greeting in begun:
        greeting.discard()
    again = pool.greet("person:1")
    assert again is not None and again.discard()


def test_many_pages_at_once_share_a_few_connections(webmail: Webmail) -> None:  # noqa: F811
    ana = webmail.person("ana")
    webmail.deliver(ana, mail("Busy"))
    browsers = [webmail.client(ana) for _ in range(3)]
    uid = uid_of(page_of(browsers[0].get(f"/webmail/f/{INBOX}")), "Busy")
    before = logins(webmail, ana)
    pages = [f"/webmail/f/{INBOX}", f"/webmail/m/{INBOX}/{uid}", f"/webmail/m/{INBOX}/{uid}/body"]

    def browse(browser: FlaskClient) -> list[int]:
        return [browser.get(page).status_code for page in pages * 3]

    with ThreadPoolExecutor(len(browsers) * 2) as pool_of_threads:
        answers = list(pool_of_threads.map(browse, browsers * 2))
    assert all(code == 200 for codes in answers for code in codes), answers
    pool = webmail.portal.app.extensions["webmail_pool"]
    assert pool.open_connections() <= 2
    assert logins(webmail, ana) - before <= 1  # at most the second connection

    # A message gone meanwhile (deleted elsewhere): not found, and the list goes on.
    with webmail.imap(ana) as imap:
        imap.select_folder("INBOX")
        imap.delete_messages([uid])
        imap.expunge()
    assert browsers[0].get(f"/webmail/m/{INBOX}/{uid}").status_code == 404
    assert browsers[0].get(f"/webmail/m/{INBOX}/{uid}/body").status_code == 404
    assert subjects(page_of(browsers[0].get(f"/webmail/f/{INBOX}"))) == []


def test_the_pool_is_bounded_and_idle_connections_expire(
    portal: Portal,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    world = webmail_world(portal, standby_store, connections=1, idle_seconds=60)
    small = next(world)
    try:
        ana, bob = small.person("ana"), small.person("bob")
        small.deliver(ana, mail("For ana"))
        small.deliver(bob, mail("For bob"))
        ana_client, bob_client = small.client(ana), small.client(bob)
        before = {who: logins(small, who) for who in (ana, bob)}
        # One connection in all: each person's page closes the other's idle one.
        for _ in range(2):
            assert subjects(page_of(ana_client.get(f"/webmail/f/{INBOX}"))) == ["For ana"]
            assert subjects(page_of(bob_client.get(f"/webmail/f/{INBOX}"))) == ["For bob"]
            assert small.portal.app.extensions["webmail_pool"].open_connections() == 1
        assert logins(small, ana) - before[ana] == 2
        assert logins(small, bob) - before[bob] == 2
        # Unused for longer than idle_seconds: closed, and a new one made when needed.
        page_of(bob_client.get(f"/webmail/f/{INBOX}"))
        pool = small.portal.app.extensions["webmail_pool"]
        for connection in pool._idle[bob.lower()]:  # a minute passes, without waiting it
            connection.last_used -= 61
        assert subjects(page_of(bob_client.get(f"/webmail/f/{INBOX}"))) == ["For bob"]
        assert logins(small, bob) - before[bob] == 3
    finally:
        for _rest in world:  # the fixture's own clean-up
            pass
