"""Shared helpers for the portal tests: a portal built on a real configuration and a real
directory, sign-in through the real form, and roster set-up through the models.

Its fixtures (portal, own_slapd, own_portal) are in tests/conftest.py. PYTEST_DONT_REWRITE:
conftest imports this module before any test, so pytest could not rewrite its asserts
anyway (their messages are written out), and must not warn about it if a module still
names this file in ``pytest_plugins``.
"""

from __future__ import annotations

import html
import itertools
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import ldap3
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from continuity.localslapd import Slapd
from portal import create_app
from roster.config import load_config
from roster.db import make_engine
from roster.identity import find_person, set_person_emergency_password
from roster.models import (
    AuditEvent,
    Base,
    ContinuityEvent,
    CoverageEntry,
    Domain,
    MailMessage,
    MailRecipient,
    Person,
    SignInThrottle,
    utcnow,
)
from roster.throttle import ACCOUNT_LOCK_AFTER
from tests.directory import Continuity, DirectoryTree, source_toml

DOMAIN = "acme.test"
OTHER_DOMAIN = "other.test"
PASSWORD = "Dir-Secret-4821x"
EMERGENCY = "Tide-Harbour-Lantern-62"
STAFF_PASSWORD = "Staff-Key-9931-Quartz"
SECRET_KEY = "portal-test-secret-key-0123456789abcdef"
DIRECTORY_DOWN = "directory cannot be reached right now"
WRONG = "The address or password is not right."

RESET_CODE = re.compile(r"\b[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}\b")

_client_numbers = itertools.count(1)
_CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]*)"')


def new_client_address() -> str:
    """A client address no earlier request used, so per-client throttling stays out of the way."""
    number = next(_client_numbers)
    return f"10.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"


def csrf_token(page: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _CSRF.search(page)
    assert found, "no csrf_token on the page"
    return html.unescape(found.group(1))


def field_value(page: str, field_id: str) -> str:
    """The value of the input with this id on a page."""
    found = re.search(rf'<input[^>]*id="{re.escape(field_id)}"[^>]*?value="([^"]*)"', page)
    return html.unescape(found.group(1)) if found else ""


def without_csrf(page: str) -> str:
    """A page with its CSRF tokens blanked, for comparing two answers."""
    return _CSRF.sub('name="csrf_token" value=""', page)


def text(response: TestResponse) -> str:
    """The body of a response as text, HTML entities resolved."""
    return html.unescape(response.get_data(as_text=True))


def location_path(response: TestResponse) -> str:
    """Where a redirect leads, asserting it stays on this site."""
    target = urlsplit(response.headers["Location"])
    assert not target.scheme and not target.netloc, response.headers["Location"]
    return target.path


def submit(
    client: FlaskClient,
    page: str,
    data: dict[str, str],
    *,
    action: str | None = None,
    client_address: str | None = None,
    headers: dict[str, str] | None = None,
) -> TestResponse:
    """Fetch ``page``, read its CSRF token and POST ``data`` to ``action`` (the page itself)."""
    shown = client.get(page, headers=headers)
    assert shown.status_code == 200, (page, shown.status_code)
    body = {"csrf_token": csrf_token(shown.get_data(as_text=True)), **data}
    return client.post(
        action or page,
        data=body,
        headers=headers,
        environ_base={"REMOTE_ADDR": client_address or new_client_address()},
    )


def sign_in(
    client: FlaskClient,
    address: str,
    password: str,
    *,
    next: str | None = None,
    client_address: str | None = None,
    headers: dict[str, str] | None = None,
) -> TestResponse:
    """Sign in through the real form, the way a browser does (the ``next`` a link carried)."""
    page = "/sign-in" + (f"?{urlencode({'next': next})}" if next is not None else "")
    shown = client.get(page, headers=headers)
    assert shown.status_code == 200
    form = shown.get_data(as_text=True)
    return client.post(
        "/sign-in",
        data={
            "csrf_token": csrf_token(form),
            "address": address,
            "password": password,
            "next": field_value(form, "next"),
        },
        headers=headers,
        environ_base={"REMOTE_ADDR": client_address or new_client_address()},
    )


def set_directory_password(slapd: Slapd, dn: str, password: str) -> None:
    """Give a directory entry a userPassword so that it can bind."""
    slapd.modify(dn, {"userPassword": [(ldap3.MODIFY_REPLACE, [password])]})


def portal_table(**settings: Any) -> str:
    """A [portal] table."""
    lines = ["[portal]"] + [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


class Portal:
    """The portal app on a real configuration file: a roster with two domains and one source.

    The roster is changed through the real command (domains, sync, staff) and the roster
    models (Continuity settings, coverage lists, emergency passwords).
    """

    def __init__(
        self,
        tmp_path: Path,
        database_url: str,
        source: str,
        domains: tuple[str, ...] = (DOMAIN, OTHER_DOMAIN),
        **settings: Any,
    ) -> None:
        self.tool = Continuity(tmp_path, database_url)
        self.tool.configure()
        for name in domains:
            assert self.tool.run("domain", "add", name).exit_code == 0
        self.source = source
        self.settings = {"secure_cookies": False, "secret_key": SECRET_KEY, **settings}
        self.tool.configure(source, portal_table(**self.settings))
        self.engine = make_engine(database_url)
        self._apps: list[Flask] = []
        self._tree: DirectoryTree | None = None
        self.app = self.build()

    @classmethod
    def on(
        cls,
        tmp_path: Path,
        database_url: str,
        tree: DirectoryTree,
        domains: tuple[str, ...] = (DOMAIN, OTHER_DOMAIN),
        source_options: dict[str, Any] | None = None,
        **settings: Any,
    ) -> Portal:
        """A portal whose source "corp" is the OpenLDAP subtree ``tree``."""
        source = source_toml(
            "corp",
            tree.slapd.url,
            tree.base_dn,
            tree.slapd.root_dn,
            tree.slapd.root_password,
            disabled_filter="(description=disabled)",
            domains=list(domains),
            **(source_options or {}),
        )
        portal = cls(tmp_path, database_url, source, domains, **settings)
        portal._tree = tree
        return portal

    @property
    def tree(self) -> DirectoryTree:
        """The OpenLDAP subtree this portal's source reads."""
        assert self._tree is not None, "this portal's source is not an OpenLDAP subtree"
        return self._tree

    def build(
        self,
        gateway: dict[str, Any] | None = None,
        tables: dict[str, dict[str, Any]] | None = None,
        **settings: Any,
    ) -> Flask:
        """A new app from the configuration file, with other [portal] settings, a
        [gateway] table (e.g. allow_local_primary, for test servers on this host) or
        other tables ([standby], [outbound], [webmail]) if given."""
        more = {**({"gateway": gateway} if gateway else {}), **(tables or {})}
        changed = bool(settings or more)
        if changed:
            written = [self.source, portal_table(**{**self.settings, **settings})]
            for name, values in more.items():
                lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
                written.append(f"[{name}]\n" + "\n".join(lines) + "\n")
            self.tool.configure(*written)
        app = create_app(config=load_config(self.tool.path, environ={}))
        if changed:
            self.tool.configure(self.source, portal_table(**self.settings))
        self._apps.append(app)
        return app

    def client(self) -> FlaskClient:
        """A new browser."""
        return self.app.test_client()

    def close(self) -> None:
        """Dispose of every engine opened."""
        for app in self._apps:
            app.extensions["roster_engine"].dispose()
        self.engine.dispose()

    # The directory (OpenLDAP) and the sync.

    def add_person(
        self,
        uid: str,
        mail: str | None = None,
        *,
        password: str | None = PASSWORD,
        cn: str | None = None,
        display_name: str | None = None,
        aliases: tuple[str, ...] = (),
    ) -> str:
        """A directory person (``uid@acme.test`` unless told) who can bind with ``password``."""
        dn = self.tree.add_person(
            uid,
            mail or f"{uid}@{DOMAIN}",
            cn=cn,
            display_name=display_name,
            aliases=aliases,
        )
        if password is not None:
            set_directory_password(self.tree.slapd, dn, password)
        return dn

    def disable(self, uid: str) -> None:
        """Mark a directory person disabled (the source's disabled_filter)."""
        self.tree.replace(uid, description="disabled")

    def sync(self, *options: str) -> dict[str, Any]:
        """A full run of the real `continuity sync`; returns its summary."""
        status, summary = self.tool.sync("--full", *options)
        assert status == 0, summary
        return summary

    # The roster.

    def set_domain(
        self,
        name: str = DOMAIN,
        *,
        active: bool = True,
        mode: str = "all",
        emergency: bool = True,
    ) -> None:
        """Set a domain's Continuity settings."""
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Domain)
                .where(Domain.name == name)
                .values(
                    continuity_active=active,
                    coverage_mode=mode,
                    emergency_password_enabled=emergency,
                )
            )

    def person(self, address: str) -> Person:
        """The live roster person with this address."""
        with Session(self.engine) as session:
            found = find_person(session, address)
            assert found is not None, address
            return found

    def person_id(self, address: str) -> int:
        """The roster id of a person, removed or not."""
        with Session(self.engine) as session:
            found = session.scalar(
                select(Person.id).where(Person.mail == address).order_by(Person.id.desc())
            )
        assert found is not None, address
        return found

    def list_person(self, address: str) -> None:
        """Put a person on their domain's "only selected users" list."""
        with Session(self.engine) as session, session.begin():
            person = find_person(session, address)
            assert person is not None
            session.add(
                CoverageEntry(
                    domain_id=person.domain_id, person_id=person.id, added_by="admin@acme.test"
                )
            )

    def set_emergency_password(self, address: str, password: str = EMERGENCY) -> None:
        """Store an emergency password for a person, as the self-service page does."""
        with Session(self.engine) as session, session.begin():
            person = find_person(session, address)
            assert person is not None
            set_person_emergency_password(session, person, password, address)

    def add_staff(
        self,
        address: str,
        role: str,
        domain: str | None = DOMAIN,
        password: str = STAFF_PASSWORD,
    ) -> None:
        """`continuity staff add` with a password file."""
        secret = self.tool.path.with_name(f"staff-{address}.txt")
        secret.write_text(password + "\n", encoding="utf-8")
        args = ["staff", "add", address, "--role", role, "--password-file", str(secret)]
        if domain is not None:
            args += ["--domain", domain]
        result = self.tool.run(*args)
        assert result.exit_code == 0, result.output

    def age_throttle(self, seconds: int = 120) -> None:
        """Move every recorded sign-in failure ``seconds`` into the past (no sleeping)."""
        with Session(self.engine) as session, session.begin():
            for row in session.scalars(select(SignInThrottle)):
                row.last_failure_at -= timedelta(seconds=seconds)
                row.window_start -= timedelta(seconds=seconds)
                if row.locked_until is not None:
                    row.locked_until -= timedelta(seconds=seconds)

    def audit_actions(self, address: str | None = None) -> list[tuple[str, str]]:
        """Every audit event as (action, actor), oldest first; a person's only, if given."""
        query = select(AuditEvent.action, AuditEvent.actor).order_by(AuditEvent.id)
        if address is not None:
            query = query.where(AuditEvent.person_id == self.person_id(address))
        with Session(self.engine) as session:
            return [(action, actor) for action, actor in session.execute(query)]

    def dump(self) -> str:
        """Every row of every table as text, to search for what must not be stored."""
        parts = []
        with self.engine.connect() as connection:
            for table in Base.metadata.sorted_tables:
                for row in connection.execute(table.select()):
                    parts.append(repr(tuple(row)))
        return "\n".join(parts)


def signed_in_client(portal: Portal, address: str, password: str = PASSWORD) -> FlaskClient:
    """A new browser signed in through the form."""
    client = portal.client()
    response = sign_in(client, address, password)
    assert response.status_code == 302, (response.status_code, text(response))
    assert location_path(response) == "/me", response.headers["Location"]
    return client


def issue_reset_code(
    helpdesk: FlaskClient, person_id: int, replacing: str | None = None
) -> TestResponse:
    """Press "Issue a reset code" on a person's helpdesk page (or, with ``replacing``,
    "Replace it with a new code" on the question that a code still works), and follow
    the browser to the page that shows the code. Refusals are returned as answered."""
    page = f"/helpdesk/people/{person_id}"
    data = {} if replacing is None else {"replacing": replacing}
    answer = submit(helpdesk, page, data, action=f"{page}/reset-code")
    if answer.status_code == 303 and location_path(answer) == f"{page}/reset-code":
        return helpdesk.get(location_path(answer))
    return answer


def shown_code(response: TestResponse) -> str:
    """The reset code a helpdesk page shows."""
    found = RESET_CODE.search(text(response))
    assert found, text(response)
    return found.group(0)


def lock_out(portal: Portal, address: str) -> None:
    """Fail to sign in as ``address`` until the account locks, without waiting out delays."""
    for attempt in range(ACCOUNT_LOCK_AFTER):
        if attempt:
            portal.age_throttle()
        response = sign_in(portal.client(), address, "not-the-password")
        assert response.status_code == 401, response.status_code
        assert WRONG in text(response), text(response)


def in_hand_back(
    engine: Any,
    domain: str,
    queue_id: str,
    recipients: list[tuple[str, bool, int, str]],
    *,
    started_ago: timedelta = timedelta(hours=2),
    size: int = 1024,
    message_id: str = "<held@sender.test>",
) -> None:
    """``domain`` in a continuity event's hand-back (started ``started_ago``, handing
    back for 5 minutes), with one held message ``queue_id`` whose ``recipients`` are
    (address, handed back yet, attempts, last reply)."""
    now = utcnow()
    with Session(engine) as session, session.begin():
        domain_id = session.scalar(select(Domain.id).where(Domain.name == domain))
        assert domain_id is not None
        session.add(
            ContinuityEvent(
                domain_id=domain_id,
                started_at=now - started_ago,
                recovery_started_at=now - timedelta(minutes=5),
                reason="Primary mail server unreachable",
                started_by="monitor",
            )
        )
        session.add(
            MailMessage(
                queue_id=queue_id,
                received_at=now - timedelta(hours=1),
                sender="carla@sender.test",
                size=size,
                message_id=message_id,
                client_address="192.0.2.7",
                helo="mx.sender.test",
                body=b"",
            )
        )
        session.flush()
        for address, done, attempts, reply in recipients:
            session.add(
                MailRecipient(
                    queue_id=queue_id,
                    domain_id=domain_id,
                    address=address,
                    status="delivered" if done else "deferred",
                    attempts=attempts,
                    next_attempt_at=now,
                    last_attempt_at=now - timedelta(minutes=1),
                    last_reply=reply,
                    delivered_at=now - timedelta(minutes=1) if done else None,
                    via_continuity=True,
                )
            )
