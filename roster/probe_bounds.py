"""Bounds on "test connection": one probe at a time per domain, a few per admin per
minute, and never so many at once that a portal server has no worker left for a
sign-in.

A probe holds a portal worker for up to its deadline while it waits for a server, so
the bounds must hold across every worker process and every portal host: they are kept
as rows of the sign-in throttle table (keys of their own, beside the sign-in's), claimed
and judged in one short write transaction like a sign-in attempt, on SQLite and
PostgreSQL alike. Held places are leases: a worker killed in the middle of a probe
frees them when the lease ends.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Table, and_, bindparam, update
from sqlalchemy.orm import Session

from roster import throttle
from roster.db import connection_of

PROBE_SECONDS = 5.0
"""The deadline of one probe: name resolution, then the SMTP conversation, each within it."""
LEASE = timedelta(seconds=2 * PROBE_SECONDS + 5)
"""How long a probe's places are held at most (both parts of the deadline, and a margin)."""
PER_ADMIN_PER_MINUTE = 5
_MINUTE = timedelta(minutes=1)

DOMAIN_BUSY = "domain_busy"
TOO_OFTEN = "too_often"
PORTAL_BUSY = "portal_busy"
NO_PLACES = "no_places"

_TABLE: Table = throttle.TABLE
_RELEASE = (
    update(_TABLE)
    .where(and_(_TABLE.c.key == bindparam("k"), _TABLE.c.locked_until == bindparam("held")))
    .values(locked_until=None)
)
_HOLD = (
    update(_TABLE)
    .where(_TABLE.c.key == bindparam("k"))
    .values(
        failures=bindparam("f"),
        window_start=bindparam("w"),
        last_failure_at=bindparam("n"),
        locked_until=bindparam("l"),
    )
)


class ProbeRefused(Exception):
    """A probe that may not start now; ``code`` says why, ``wait_seconds`` for how long.

    Codes: DOMAIN_BUSY (another probe of this domain is running), TOO_OFTEN (this admin
    has probed PER_ADMIN_PER_MINUTE times in the last minute), PORTAL_BUSY (every probe
    place of this portal server is taken) or NO_PLACES (the server has none: it runs a
    single worker, which a probe would take from everyone else).
    """

    def __init__(self, code: str, wait_seconds: int) -> None:
        self.code, self.wait_seconds = code, wait_seconds
        super().__init__(f"{code}: try again in {wait_seconds} s")


@dataclass(frozen=True)
class ProbeTicket:
    """The places a running probe holds, and until when."""

    keys: tuple[str, ...]
    held_until: datetime


def domain_key(domain_id: int) -> str:
    """The key of a domain's one probe at a time."""
    return f"probe-domain:{domain_id}"


def admin_key(actor: str) -> str:
    """The key of an admin's probes of the last minute (hashed like an account's)."""
    return "probe-admin:" + hashlib.sha256(actor.strip().lower().encode()).hexdigest()


def place_keys(places: int, server: str | None = None) -> list[str]:
    """The keys of a portal server's probe places (one per worker it may give up)."""
    server = server or socket.gethostname()
    return [f"probe-place:{server[:200]}:{number}" for number in range(places)]


def start_probe(
    session: Session | Connection,
    *,
    domain_id: int,
    actor: str,
    places: int,
    now: datetime,
    server: str | None = None,
) -> ProbeTicket:
    """Take a domain's probe, a count of the admin's minute and a place of this server,
    in the caller's write transaction; raises ProbeRefused if one of them is not free.

    ``places`` is how many probes this portal server may run at once: fewer than its
    workers, so that a sign-in always finds a worker that waits for no server.
    """
    if places < 1:
        raise ProbeRefused(NO_PLACES, 0)
    connection = connection_of(session)
    mine, counted = domain_key(domain_id), admin_key(actor)
    free = place_keys(places, server)
    rows = {row.key: row for row in throttle.claim(connection, [mine, counted, *free], now)}
    held_until = now + LEASE

    domain = rows[mine]
    if domain.locked_until is not None and domain.locked_until > now:
        raise ProbeRefused(DOMAIN_BUSY, _seconds(domain.locked_until - now))
    admin = rows[counted]
    fresh = now - admin.window_start > _MINUTE
    probes, window_start = (0, now) if fresh else (admin.failures, admin.window_start)
    if probes >= PER_ADMIN_PER_MINUTE:
        raise ProbeRefused(TOO_OFTEN, _seconds(window_start + _MINUTE - now))
    open_places = [key for key in free if not _held(rows[key], now)]
    if not open_places:
        soonest = min((rows[key].locked_until for key in free), default=held_until)
        raise ProbeRefused(PORTAL_BUSY, _seconds((soonest or held_until) - now))

    place = open_places[0]
    connection.execute(
        _HOLD,
        [
            {"k": mine, "f": 0, "w": now, "n": now, "l": held_until},
            {"k": counted, "f": probes + 1, "w": window_start, "n": now, "l": None},
            {"k": place, "f": 0, "w": now, "n": now, "l": held_until},
        ],
    )
    return ProbeTicket((mine, place), held_until)


def finish_probe(session: Session | Connection, ticket: ProbeTicket) -> None:
    """Give a probe's places back (those its lease still holds: a lapsed lease may
    already be another probe's)."""
    connection_of(session).execute(
        _RELEASE, [{"k": key, "held": ticket.held_until} for key in ticket.keys]
    )


def _held(row: object, now: datetime) -> bool:
    locked_until = getattr(row, "locked_until", None)
    return locked_until is not None and locked_until > now


def _seconds(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() + 0.999))
