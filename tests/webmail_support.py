"""The webmail's test world: the portal on the session's real Dovecot (the standby
store) and a real aiosmtpd relay that keeps what it is given; people with mailboxes of
their own (fresh addresses: the store is shared by the whole test session).

Its fixture is ``webmail``.
"""

from __future__ import annotations

import itertools
import secrets
import smtplib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from flask.testing import FlaskClient
from imapclient import IMAPClient

from gateway.standby_users import users_file_content, write_users_file
from tests.portal_support import DOMAIN, Portal, signed_in_client
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import Collect, smtp_server
from tests.standby_fixtures import next_second, standby_store  # noqa: F401 - the fixture, by name

PREFIX = "wm"
PREPARED = 5000  # more people than the whole suite makes
_numbers = itertools.count()


def prepare(store: DovecotServer) -> None:
    """The session store's users file lists every address ``Webmail.person`` will hand
    out, written once (again only after another test wrote its own): Dovecot looks at
    the file at most once a second, and a person need not wait for it."""
    wanted = [f"{PREFIX}{n:04d}@{DOMAIN}" for n in range(PREPARED)]
    expected, _left_out = users_file_content(wanted)
    try:
        current = store.users_file.read_bytes()
    except FileNotFoundError:
        current = b""
    if current != expected:
        write_users_file(store.users_file, wanted)
        next_second()


def mail(
    subject: str,
    body: str = "Hello.\n",
    *,
    sender: str = "Carla Pérez <carla@sender.test>",
    to: str = "someone@acme.test",
    html: str | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
) -> bytes:
    """A message as a sender's mail program makes it."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{secrets.token_hex(8)}@sender.test>"
    message["Date"] = "Mon, 30 Nov 2026 08:00:00 +0000"
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for name, ctype, data in attachments:
        main, _slash, sub = ctype.partition("/")
        message.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return message.as_bytes()


@dataclass
class Webmail:
    """The portal with its webmail, the store, the relay, and who is covered."""

    portal: Portal
    store: DovecotServer
    relay: Collect
    relay_port: int
    covered: list[str] = field(default_factory=list)

    def person(self, label: str = "ana", **options: Any) -> str:
        """A covered person of acme.test with a mailbox of their own; their address.

        The address is the next one of the store's prepared users file (``prepare``),
        so nothing waits for Dovecot to read the file again; ``label`` is their name.
        """
        uid = f"{PREFIX}{next(_numbers):04d}"
        options.setdefault("display_name", label.capitalize())
        self.portal.add_person(uid, **options)
        self.portal.sync()
        address = f"{uid}@{DOMAIN}"
        self.covered.append(address)
        return address

    def deliver(self, address: str, *messages: bytes) -> None:
        """Messages into ``address``'s INBOX over LMTP, as the gateway's standby copies."""
        with smtplib.LMTP(self.store.lmtp[0], self.store.lmtp[1], timeout=20) as lmtp:
            for message in messages:
                lmtp.sendmail("sender@sender.test", [address], message)

    def imap(self, address: str) -> IMAPClient:
        """A master-user IMAP connection as ``address`` (the caller logs out)."""
        client = IMAPClient(self.store.imap[0], port=self.store.imap[1], ssl=False, timeout=20)
        client.plain_login(
            self.store.master_user, self.store.master_password, authorization_identity=address
        )
        return client

    def folder(self, address: str, name: str) -> list[bytes]:
        """Every message of one of ``address``'s folders, oldest first."""
        client = self.imap(address)
        try:
            client.select_folder(name, readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [fetched[uid][b"BODY[]"] for uid in sorted(fetched)]
        finally:
            client.logout()

    def client(self, address: str) -> FlaskClient:
        """A browser signed in as ``address`` with the directory password."""
        return signed_in_client(self.portal, address)


def webmail_world(
    portal: Portal,
    store: DovecotServer,
    *,
    relay_port: int | None = None,
    standby: dict[str, Any] | None = None,
    **webmail: Any,
) -> Iterator[Webmail]:
    """The generator behind the fixture (a test that needs other [webmail] settings, or
    a relay of its own on ``relay_port``, or more [standby] settings, calls it)."""
    relay = Collect()
    with ExitStack() as stack:
        port = relay_port or stack.enter_context(smtp_server(relay))
        prepare(store)
        portal.set_domain(active=True, emergency=True)
        portal.app = portal.build(
            tables={
                "standby": {
                    "imap": f"{store.imap[0]}:{store.imap[1]}",
                    "lmtp": f"{store.lmtp[0]}:{store.lmtp[1]}",
                    "master_user": store.master_user,
                    "master_password_file": str(store.master_password_file),
                    **(standby or {}),
                },
                "outbound": {"relay": f"127.0.0.1:{port}"},
                "webmail": webmail,
            }
        )
        world = Webmail(portal, store, relay, port)
        yield world
        pool = portal.app.extensions.get("webmail_pool")
        if pool is not None:
            pool.close()


@pytest.fixture
def webmail(portal: Portal, standby_store: DovecotServer) -> Iterator[Webmail]:  # noqa: F811
    """The portal with its webmail on the session's Dovecot and a relay of the test's own.

    A test module takes it by name with the store's fixture:
    ``from tests.webmail_support import standby_store, webmail  # noqa: F401``.
    """
    yield from webmail_world(portal, standby_store)
