"""The webmail to a standby store on another host: IMAP with STARTTLS, the store's
certificate checked ([standby] imap_tls, ca_file), against a real Dovecot that takes
TLS required (deploy/dovecot/dovecot.conf's setup for a portal on another host)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from continuity.localslapd import make_test_ca
from gateway.retention import StandbyIMAP
from gateway.standby_users import write_users_file
from roster.config import Config
from tests.portal_support import Portal, text
from tests.servers.dovecot import DovecotServer
from tests.standby_fixtures import next_second
from tests.webmail_support import mail, webmail_world


def logins_of(store: DovecotServer, address: str, wait: float = 5.0) -> list[str]:
    """Dovecot's log lines of sign-ins as ``address``, once there is one (or ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        log = store.log_file.read_text(encoding="utf-8", errors="replace")
        found = [line for line in log.splitlines() if f"Login: user=<{address}>" in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tls_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DovecotServer, Path]]:
    """A Dovecot of this module's own with STARTTLS required, and its CA."""
    ca, cert, key = make_test_ca(tmp_path_factory.mktemp("dovecot-tls"))
    server = DovecotServer(tls=(cert, key))
    try:
        server.start()
        yield server, ca
    finally:
        server.remove()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # IMAP only: once
def test_the_webmail_reads_the_store_over_tls_and_checks_its_certificate(
    portal: Portal, tls_store: tuple[DovecotServer, Path]
) -> None:
    store, ca = tls_store
    for world in webmail_world(portal, store, standby={"imap_tls": True, "ca_file": str(ca)}):
        ana = world.person("ana")
        world.deliver(ana, mail("Over TLS"))
        page = world.client(ana).get("/webmail", follow_redirects=True)
        assert page.status_code == 200
        assert "Over TLS" in text(page)
    # Dovecot's own word for it: the portal's sign-in came over TLS (its log process
    # writes the line a moment later).
    assert any(", TLS," in line for line in logins_of(store, ana)), logins_of(store, ana)

    for world in webmail_world(portal, store, standby={"imap_tls": True}):
        # The system's CAs do not know the store's certificate: nothing is shown, and
        # the page says the mailbox cannot be opened now.
        page = world.client(ana).get("/webmail", follow_redirects=True)
        assert page.status_code == 503
        assert "Over TLS" not in text(page)
        assert "cannot be opened right now" in text(page)


def test_retention_reads_the_store_with_the_webmails_tls_settings(
    tls_store: tuple[DovecotServer, Path],
) -> None:
    """The daily retention signs in to the store as the webmail does: over TLS, the
    certificate checked against [standby] ca_file. [gateway] ca_file (the primaries'
    CA) is not the store's: it used to be the one read, and the store was refused."""
    store, ca = tls_store
    write_users_file(store.users_file, ["keeper@acme.test"])
    next_second()
    standby = {
        "imap": f"{store.imap[0]}:{store.imap[1]}",
        "master_user": store.master_user,
        "master_password": store.master_password,
        "imap_tls": True,
    }
    reading = StandbyIMAP.from_config(
        Config(database_url="sqlite://", standby={**standby, "ca_file": str(ca)})
    )
    assert reading is not None
    with reading.mailbox("keeper@acme.test") as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    assert any(", TLS," in line for line in logins_of(store, "keeper@acme.test"))

    primaries_ca = StandbyIMAP.from_config(
        Config(database_url="sqlite://", standby=standby, gateway={"ca_file": str(ca)})
    )
    assert primaries_ca is not None
    with pytest.raises(ssl.SSLCertVerificationError), primaries_ca.mailbox("keeper@acme.test"):
        pass
