"""Control Panel "Test connection" is no port scanner (issue #8 A3): the Continuity host's
own addresses are refused by default, typed or through a name, and the probes are
bounded (one at a time per domain, a few per admin per minute); over the real portal
and roster, against real servers on loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPServer
from flask.testing import FlaskClient
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from continuity.localslapd import free_port
from roster.models import Domain, utcnow
from roster.probe_bounds import PER_ADMIN_PER_MINUTE, start_probe
from tests.portal_support import (
    DOMAIN,
    STAFF_PASSWORD,
    Portal,
    sign_in,
    signed_in_client,
    submit,
    text,
)
from tests.servers.smtp import smtp_server as serving

PAGE = f"/admin/domains/{DOMAIN}"
TYPED = {"tls": "none", "probe_interval": "60", "failures_before_failover": "3"}


class Counting:
    """An aiosmtpd handler that counts the clients that reached the server."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle_EHLO(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTPServer, session: Any, envelope: Any, hostname: str, responses: Any
    ) -> Any:
        self.connections += 1
        session.host_name = hostname
        return responses


@contextmanager
def smtp_server() -> Iterator[tuple[int, Counting]]:
    """A real SMTP server on 127.0.0.1; yields its port and its handler."""
    handler = Counting()
    with serving(handler) as port:
        yield port, handler


def admin(portal: Portal, **gateway: Any) -> FlaskClient:
    """The admin of acme.test signed in, on a portal with these [gateway] settings."""
    portal.add_staff("admin@acme.test", "admin")
    if not gateway:
        return signed_in_client(portal, "admin@acme.test", STAFF_PASSWORD)
    client = portal.build(gateway=gateway).test_client()
    assert sign_in(client, "admin@acme.test", STAFF_PASSWORD).status_code == 302
    return client


def probe(client: FlaskClient, host: str, port: int, **headers: str) -> TestResponse:
    """Press "Test connection" with this host and port."""
    data = {**TYPED, "host": host, "port": str(port)}
    return submit(client, "/admin", data, action=f"{PAGE}/primary/test", headers=headers)


def host_error(page: str) -> str:
    """The message shown at the host field, as a person reads it."""
    found = re.search(r'id="primary-host-error"[^>]*>(.*?)<', page, re.DOTALL)
    return found.group(1).strip() if found else ""


def test_this_host_is_not_a_primary_by_default(portal: Portal) -> None:
    """Regression (issue #8 A3): "Test connection" to 127.0.0.1:5432 answered "got as far
    as the greeting": an admin could reach the services that listen only for the
    Continuity host. Typed or through a name resolving to it, it is refused, worded in
    the admin's language, and nothing connects."""
    client = admin(portal)
    with smtp_server() as (port, server):
        typed = probe(client, "127.0.0.1", port)
        named = probe(client, "localhost", port)
        spanish = probe(client, "127.0.0.1", port, **{"Accept-Language": "es"})

    assert typed.status_code == 400 and 'id="probe"' not in text(typed)
    assert host_error(text(typed)) == (
        "127.0.0.1 is an address of the Continuity server itself (127.0.0.1): the primary"
        " mail server cannot be there, so it was not tried."
    )
    assert named.status_code == 400
    assert host_error(text(named)).startswith("localhost is an address of the Continuity")
    assert "(127.0.0.1)" in host_error(text(named))
    assert host_error(text(spanish)).startswith(
        "127.0.0.1 es una dirección del propio servidor de Continuity"
    )
    assert server.connections == 0


def test_a_denied_network_is_refused_with_its_reason(portal: Portal) -> None:
    client = admin(portal, allow_local_primary=True, deny_primary_networks=["127.0.0.0/8"])
    with smtp_server() as (port, server):
        response = probe(client, "127.0.0.1", port)

    assert response.status_code == 400
    assert host_error(text(response)) == (
        "127.0.0.1 (127.0.0.1) is in a network your operator does not allow for a primary"
        " mail server, so it was not tried."
    )
    assert server.connections == 0


def test_allowed_where_the_operator_says_a_primary_runs_here(portal: Portal) -> None:
    client = admin(portal, allow_local_primary=True)
    with smtp_server() as (port, server):
        response = probe(client, "localhost", port)

    assert response.status_code == 200 and "The connection works." in text(response)
    assert server.connections == 1


def test_an_admin_probes_a_few_times_a_minute(portal: Portal) -> None:
    client = admin(portal, allow_local_primary=True)
    closed = free_port()
    answers = [probe(client, "127.0.0.1", closed) for _ in range(PER_ADMIN_PER_MINUTE + 1)]

    assert [a.status_code for a in answers] == [200] * PER_ADMIN_PER_MINUTE + [429]
    last = text(answers[-1])
    assert f"You have tested connections {PER_ADMIN_PER_MINUTE} times in the last minute." in last
    assert 'id="probe"' not in last


def test_one_probe_of_a_domain_at_a_time(portal: Portal) -> None:
    client = admin(portal, allow_local_primary=True)
    with Session(portal.engine) as session, session.begin():
        domain = session.query(Domain).filter_by(name=DOMAIN).one()
        # Another worker's probe of this domain, running now.
        start_probe(session, domain_id=domain.id, actor="other@acme.test", places=4, now=utcnow())

    response = probe(client, "127.0.0.1", free_port())

    assert response.status_code == 429
    assert "A connection test of this domain is running already." in text(response)
