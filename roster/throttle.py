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

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from roster.addresses import printable
from roster.models import SignInThrottle

WINDOW = timedelta(hours=1)
FREE_FAILURES = 3
MAX_DELAY_SECONDS = 60
ACCOUNT_LOCK_AFTER = 10
CLIENT_LOCK_AFTER = 200
LOCK_MINUTES = 15


_CHECK = select(
    SignInThrottle.key,
    SignInThrottle.failures,
    SignInThrottle.window_start,
    SignInThrottle.last_failure_at,
    SignInThrottle.locked_until,
).where(SignInThrottle.key.in_(bindparam("keys", expanding=True)))


def account_key(address: str) -> str:
    """The throttle key of an address typed at sign-in (whatever was typed)."""
    return "account:" + printable(address.strip().lower(), 320)


def person_key(person_id: int) -> str:
    """The throttle key of a person, shared by all their addresses."""
    return f"person:{person_id}"


def client_key(client: str) -> str:
    """The throttle key of a client address."""
    return "client:" + printable(client, 64)


@dataclass(frozen=True)
class Verdict:
    """Whether an attempt may go ahead now; if not, for how long it must wait."""

    wait_seconds: int
    locked: bool
    seen: frozenset[str] = frozenset()

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


def check(session: Session, keys: list[str], now: datetime) -> Verdict:
    """May an attempt on these keys be checked now?"""
    wait, locked = 0, False
    seen = set()
    rows = session.connection().execute(_CHECK, {"keys": keys})
    for row in rows:
        seen.add(row.key)
        if row.locked_until is not None and row.locked_until > now:
            wait = max(wait, int((row.locked_until - now).total_seconds()) + 1)
            locked = True
            continue
        if now - row.window_start > WINDOW:
            continue
        ready = row.last_failure_at + timedelta(seconds=_delay(row.key, row.failures))
        if ready > now:
            wait = max(wait, int((ready - now).total_seconds()) + 1)
    return Verdict(wait, locked, frozenset(seen))


def record_failure(session: Session, key: str, now: datetime) -> bool:
    """Count one failure; returns True when this failure locked the key."""
    row = session.get(SignInThrottle, key, with_for_update=True)
    if row is None:
        row = SignInThrottle(key=key, failures=0, window_start=now, last_failure_at=now)
        session.add(row)
    if now - row.window_start > WINDOW or (row.locked_until and row.locked_until <= now):
        row.failures, row.window_start, row.locked_until = 0, now, None
    row.failures += 1
    row.last_failure_at = now
    limit = CLIENT_LOCK_AFTER if key.startswith("client:") else ACCOUNT_LOCK_AFTER
    if row.failures >= limit and row.locked_until is None:
        row.locked_until = now + timedelta(minutes=LOCK_MINUTES)
        session.flush()
        return True
    session.flush()
    return False


def clear(session: Session, key: str) -> bool:
    """Forget a key's failures and lift its lock; returns True if there was anything."""
    result = session.execute(delete(SignInThrottle).where(SignInThrottle.key == key))
    return bool(getattr(result, "rowcount", 0))


def is_locked(session: Session, key: str, now: datetime) -> bool:
    """True when ``key`` is locked now."""
    row = session.get(SignInThrottle, key)
    return bool(row and row.locked_until and row.locked_until > now)
