"""The run lease: one holder at a time, stale holders replaced, on both databases."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from roster.locks import Lease, LockHeld, lease, lease_alive
from roster.models import RunLock, utcnow


def test_a_second_holder_is_refused_until_release(engine: Engine) -> None:
    with (
        lease(engine, "sync", 60),
        pytest.raises(LockHeld, match="another sync run holds the lock"),
    ):
        Lease(engine, "sync", 60).acquire()
    second = Lease(engine, "sync", 60)
    second.acquire()
    second.release()


def test_an_expired_lease_is_taken_over(engine: Engine) -> None:
    first = Lease(engine, "sync", 60)
    first.acquire()
    with engine.begin() as connection:
        connection.execute(update(RunLock).values(expires_at=utcnow() - timedelta(seconds=1)))
    second = Lease(engine, "sync", 60)
    second.acquire()
    with pytest.raises(LockHeld):
        Lease(engine, "sync", 60).acquire()
    first.release()  # the old holder's release must not free the new holder's lease
    with pytest.raises(LockHeld):
        Lease(engine, "sync", 60).acquire()


def test_a_lease_left_by_a_dead_process_is_taken_over(engine: Engine, database_url: str) -> None:
    code = (
        "from roster.db import make_engine; from roster.locks import Lease; "
        f"Lease(make_engine({database_url!r}), 'sync', 3600).acquire()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with Session(engine) as session:
        assert not lease_alive(session, "sync")  # unexpired, but its holder is gone
    taken = Lease(engine, "sync", 60)
    taken.acquire()
    with engine.connect() as connection:
        assert connection.scalar(select(RunLock.holder)) == taken.holder
    with Session(engine) as session:
        assert lease_alive(session, "sync")
    taken.release()
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(RunLock)) == 0
