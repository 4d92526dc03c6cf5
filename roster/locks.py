"""A lease in the roster that keeps two runs of one job apart, on SQLite and PostgreSQL.

The lease is a row keyed by the job name. Taking it is an INSERT (the primary key makes
one of two racing runs fail) or, when the holder's lease has expired or its process is
gone from this host, a conditional UPDATE that only one run can win.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from roster.models import RunLock, utcnow


class LockHeld(Exception):
    """Another run holds the lease."""

    def __init__(self, name: str, holder: str, since: str) -> None:
        super().__init__(f"another {name} run holds the lock ({holder}, since {since})")
        self.holder = holder


def _holder() -> str:
    """host:pid:token; the token tells apart two leases taken by one process."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _process_gone(holder: str) -> bool:
    """True when ``holder`` names a process of this host that no longer exists."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3:
        return False
    host, pid, _token = parts
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def lease_alive(session: Session, name: str) -> bool:
    """True while a run holds the lease ``name``: not expired, holder not gone from here."""
    row = session.execute(
        select(RunLock.holder, RunLock.expires_at).where(RunLock.name == name)
    ).first()
    return row is not None and holder_alive(row.holder, row.expires_at)


def holder_alive(holder: str, expires_at: datetime, now: datetime | None = None) -> bool:
    """True while a lease row read earlier is in force: not expired at ``now``, and its
    holder not a process gone from this host."""
    return expires_at > (now or utcnow()) and not _process_gone(holder)


class LeaseLost(Exception):
    """The lease expired and another run took it: this run must not write."""


class Lease:
    """A held lease; ``renew`` pushes its expiry forward during long runs."""

    def __init__(self, engine: Engine, name: str, seconds: int) -> None:
        self.engine, self.name, self.seconds, self.holder = engine, name, seconds, _holder()

    def acquire(self) -> None:
        """Take the lease or raise LockHeld."""
        now = utcnow()
        expires = now + timedelta(seconds=self.seconds)
        values = {"holder": self.holder, "acquired_at": now, "expires_at": expires}
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(RunLock).values(name=self.name, **values))
            return
        except IntegrityError:
            pass
        # Read and take in one write transaction that holds SQLite's write lock from its
        # start: a deferred one fails at once ("database is locked") when another writer
        # commits between the read and the update, as the gateways' monitors did.
        with (
            self.engine.connect().execution_options(begin_immediate=True) as connection,
            connection.begin(),
        ):
            row = connection.execute(select(RunLock).where(RunLock.name == self.name)).first()
            if row is None:
                connection.execute(insert(RunLock).values(name=self.name, **values))
                return
            if row.expires_at > now and not _process_gone(row.holder):
                raise LockHeld(self.name, row.holder, row.acquired_at.isoformat(timespec="seconds"))
            taken = connection.execute(
                update(RunLock)
                .where(RunLock.name == self.name, RunLock.holder == row.holder)
                .where(RunLock.acquired_at == row.acquired_at)
                .values(**values)
            )
            if taken.rowcount != 1:
                raise LockHeld(self.name, "another run", "just now")

    def renew(self) -> None:
        """Push the expiry forward; raise LeaseLost if another run holds it now."""
        with self.engine.begin() as connection:
            renewed = connection.execute(
                update(RunLock)
                .where(RunLock.name == self.name, RunLock.holder == self.holder)
                .values(expires_at=utcnow() + timedelta(seconds=self.seconds))
            )
        if renewed.rowcount != 1:
            raise LeaseLost(f"the {self.name} lock was taken over by another run")

    def confirm(self, session: Session) -> None:
        """Inside the caller's write transaction: raise LeaseLost unless still ours.

        The row is locked until that transaction ends (SQLite's write lock does the same),
        so no other run can take the lease between this check and the commit.
        """
        holder = session.scalar(
            select(RunLock.holder).where(RunLock.name == self.name).with_for_update()
        )
        if holder != self.holder:
            raise LeaseLost(f"the {self.name} lock was taken over by another run")

    def release(self) -> None:
        """Give the lease back."""
        with self.engine.begin() as connection:
            connection.execute(
                delete(RunLock).where(RunLock.name == self.name, RunLock.holder == self.holder)
            )


@contextmanager
def lease(engine: Engine, name: str, seconds: int) -> Iterator[Lease]:
    """Hold the lease ``name`` for the duration of the block."""
    held = Lease(engine, name, seconds)
    held.acquire()
    try:
        yield held
    finally:
        held.release()
