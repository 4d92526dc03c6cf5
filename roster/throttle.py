"""Brute-force throttling of sign-ins: growing delays, then a temporary lock.

Failures are counted per account (the address typed, known or not, so that the
answer never tells the two apart) and per client address, in a one-hour window.
After a few free failures each new attempt must wait longer (1 s, 2 s, 4 s ... up to a
minute); after ACCOUNT_LOCK_AFTER failures an account is locked for LOCK_MINUTES, so it
can never see more than about 40 failures an hour (OWASP ASVS 2.2.1 asks for no more
than 100). A person is counted once whichever of their addresses is typed. A client
address gets no delays (an office behind one NAT address shares it) but is locked after
CLIENT_LOCK_AFTER failures, whatever the accounts it tries. Helpdesk can lift a lock.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, case, delete, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from roster.addresses import printable
from roster.db import connection_of
from roster.models import SignInThrottle

WINDOW = timedelta(hours=1)
FREE_FAILURES = 3
MAX_DELAY_SECONDS = 60
ACCOUNT_LOCK_AFTER = 10
CLIENT_LOCK_AFTER = 200
LOCK_MINUTES = 15


TABLE = cast(Table, SignInThrottle.__table__)
_COUNT = (
    update(TABLE)
    .where(TABLE.c.key == bindparam("k"))
    .values(
        failures=bindparam("f"),
        window_start=bindparam("w"),
        last_failure_at=bindparam("n"),
        locked_until=bindparam("l"),
    )
)
_COLUMNS = (
    TABLE.c.key,
    TABLE.c.failures,
    TABLE.c.window_start,
    TABLE.c.last_failure_at,
    TABLE.c.locked_until,
)
# A successful attempt takes its count back, in one statement for all its keys: an
# account's (or person's) failures are forgotten; a client's count of the attempt is
# taken back, and its lock goes once the count is under the limit again (a client
# address may be a whole office). The SET expressions see the row as it was.
_SHARED = TABLE.c.key.startswith("client:", autoescape=True)
_SUCCEEDED = (
    update(TABLE)
    .where(TABLE.c.key.in_(bindparam("keys", expanding=True)))
    .values(
        failures=case(
            (_SHARED & (TABLE.c.failures > 0), TABLE.c.failures - 1),
            else_=0,
        ),
        locked_until=case(
            (_SHARED & (TABLE.c.failures - 1 >= CLIENT_LOCK_AFTER), TABLE.c.locked_until),
            else_=None,
        ),
    )
)


def account_key(address: str) -> str:
    """The throttle key of an address typed at sign-in.

    Hashed: whatever was typed (a password in the address field) is not kept.
    """
    typed = address.strip().lower().encode("utf-8", "replace")
    return "account:" + hashlib.sha256(typed).hexdigest()


def person_key(person_id: int) -> str:
    """The throttle key of a person, shared by all their addresses."""
    return f"person:{person_id}"


def client_key(client: str) -> str:
    """The throttle key of a client address; IPv6 clients by their /64, which one
    attacker usually holds whole."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return "client:" + printable(client, 64)
    if address.version == 6:
        return "client:" + str(ipaddress.ip_network(f"{address}/64", strict=False))
    return "client:" + str(address)


@dataclass(frozen=True)
class Verdict:
    """Whether an attempt may go ahead now; if not, for how long it must wait."""

    wait_seconds: int
    locked: bool

    @property
    def allowed(self) -> bool:
        """True when the attempt may be checked at all."""
        return self.wait_seconds <= 0


def _delay(key: str, failures: int) -> int:
    # Client addresses get no delays, only a high lock: people behind one office NAT
    # must not wait for each other's typos.
    if failures < FREE_FAILURES or key.startswith("client:"):
        return 0
    return int(min(2 ** (failures - FREE_FAILURES), MAX_DELAY_SECONDS))


def _judge(rows: Iterable[Any], now: datetime) -> Verdict:
    """The verdict the throttle rows of an attempt call for."""
    wait, locked = 0, False
    for row in rows:
        if row.locked_until is not None and row.locked_until > now:
            wait = max(wait, int((row.locked_until - now).total_seconds()) + 1)
            locked = True
            continue
        if now - row.window_start > WINDOW:
            continue
        ready = row.last_failure_at + timedelta(seconds=_delay(row.key, row.failures))
        if ready > now:
            wait = max(wait, int((ready - now).total_seconds()) + 1)
    return Verdict(wait, locked)


def _counted(row: Any, now: datetime) -> tuple[int, datetime, datetime | None, bool]:
    """A row's (failures, window start, lock, locked now) after one more failure."""
    failures, window_start, locked_until = row.failures, row.window_start, row.locked_until
    if now - window_start > WINDOW or (locked_until is not None and locked_until <= now):
        failures, window_start, locked_until = 0, now, None
    failures += 1
    limit = CLIENT_LOCK_AFTER if row.key.startswith("client:") else ACCOUNT_LOCK_AFTER
    if failures >= limit and locked_until is None:
        return failures, window_start, now + timedelta(minutes=LOCK_MINUTES), True
    return failures, window_start, locked_until, False


def attempt(session: Session | Connection, keys: list[str], now: datetime) -> Verdict:
    """Count an attempt before its password is checked, in the caller's write
    transaction; the attempt may go ahead only if the verdict allows it.

    Counting first means that parallel requests cannot all pass a check that none of
    them has recorded yet: every key gets its row, the rows are locked (SQLite's write
    lock does the same), judged, then counted. A successful sign-in takes the count
    back (``succeeded``).
    """
    connection = connection_of(session)
    rows = claim(connection, keys, now)
    verdict = _judge(rows, now)
    if not verdict.allowed:
        return verdict
    locked = False
    changes = []
    for row in rows:
        failures, window_start, locked_until, locked_now = _counted(row, now)
        locked = locked or locked_now
        changes.append(
            {"k": row.key, "f": failures, "w": window_start, "n": now, "l": locked_until}
        )
    connection.execute(_COUNT, changes)
    if secrets.randbelow(256) == 0:
        sweep(session, now)
    return Verdict(0, locked)


def claim(connection: Connection, keys: Iterable[str], now: datetime) -> list[Any]:
    """The rows of ``keys`` (new ones at zero), locked until the caller's transaction
    ends; in one order everywhere, so that no two claims deadlock."""
    ordered = sorted(set(keys))
    statement = _claim(connection.dialect.name)
    return list(connection.execute(statement, [{"key": key, "now": now} for key in ordered]))


@functools.cache
def _claim(dialect: str) -> Any:
    """A statement that, run once for several keys (one round trip: SQLAlchemy's
    "insertmanyvalues"), gives each key its row (a new one at zero) and returns the rows,
    locked: PostgreSQL locks a row that ON CONFLICT updates, and SQLite's write
    transaction already holds its one lock."""
    make_insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = make_insert(TABLE).values(
        key=bindparam("key"),
        failures=0,
        window_start=bindparam("now"),
        last_failure_at=bindparam("now"),
    )
    return statement.on_conflict_do_update(
        index_elements=["key"], set_={"failures": TABLE.c.failures}
    ).returning(*_COLUMNS)


def sweep(session: Session | Connection, now: datetime) -> None:
    """Forget counts whose window has passed and that hold no lock."""
    session.execute(
        delete(SignInThrottle).where(
            SignInThrottle.window_start < now - WINDOW,
            (SignInThrottle.locked_until.is_(None)) | (SignInThrottle.locked_until < now),
        )
    )


def succeeded(session: Session | Connection, keys: list[str]) -> None:
    """A counted attempt succeeded: the account's failures are forgotten, the client's
    count of it is taken back (see _SUCCEEDED). Rows left at zero go with the sweep."""
    connection_of(session).execute(_SUCCEEDED, {"keys": sorted(set(keys))})


def clear(session: Session, key: str) -> bool:
    """Forget a key's failures and lift its lock; returns True if there was anything."""
    row = session.get(SignInThrottle, key)
    if row is None:
        return False
    session.delete(row)
    return bool(row.failures or row.locked_until)


def is_locked(session: Session, key: str, now: datetime) -> bool:
    """True when ``key`` is locked now."""
    row = session.get(SignInThrottle, key)
    return bool(row and row.locked_until and row.locked_until > now)
