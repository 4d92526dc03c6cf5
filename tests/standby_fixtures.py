"""The standby store fixture: one real Dovecot for the test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.dovecot import DovecotServer


@pytest.fixture(scope="session")
def standby_store() -> Iterator[DovecotServer]:
    """A running Dovecot from deploy/dovecot/dovecot.conf, stopped at the session's end.

    Tests share it: each one writes the users file it needs and uses addresses of its own.
    """
    server = DovecotServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()
