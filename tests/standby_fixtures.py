"""The standby store fixture: one real Dovecot for the test session."""

from __future__ import annotations

import time
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


def next_second() -> None:
    """Sleep into the next second of the clock: Dovecot looks at the users file at most
    once a second, so a change written before this is certainly seen after it (and one
    written in the same second as Dovecot's last look may not be, until then)."""
    time.sleep(1.02 - time.time() % 1)
