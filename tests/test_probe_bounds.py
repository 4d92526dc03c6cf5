"""Bounds on "test connection" kept in the roster (issue #8 A3): one probe at a time per
domain, a few per admin per minute, and fewer probes at once than a portal server has
workers; on SQLite and PostgreSQL, with parallel transactions as several workers make."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from roster.db import session_factory, transaction
from roster.models import utcnow
from roster.probe_bounds import (
    DOMAIN_BUSY,
    LEASE,
    NO_PLACES,
    PER_ADMIN_PER_MINUTE,
    PORTAL_BUSY,
    TOO_OFTEN,
    ProbeRefused,
    ProbeTicket,
    finish_probe,
    start_probe,
)

SERVER = "portal-1.test"


def start(
    engine: Engine, domain_id: int, actor: str, now: datetime, places: int = 3
) -> ProbeTicket:
    """Start a probe in a write transaction of its own, as a portal worker does."""
    with transaction(session_factory(engine), writing=True) as write:
        return start_probe(
            write, domain_id=domain_id, actor=actor, places=places, now=now, server=SERVER
        )


def finish(engine: Engine, ticket: ProbeTicket) -> None:
    """Give the probe's places back."""
    with transaction(session_factory(engine), writing=True) as write:
        finish_probe(write, ticket)


def refusal(engine: Engine, domain_id: int, actor: str, now: datetime, places: int = 3) -> str:
    """The code of the refusal a probe meets."""
    with pytest.raises(ProbeRefused) as refused:
        start(engine, domain_id, actor, now, places)
    assert refused.value.wait_seconds >= (0 if refused.value.code == NO_PLACES else 1)
    return refused.value.code


def test_one_probe_at_a_time_per_domain(engine: Engine) -> None:
    now = utcnow()
    ticket = start(engine, 1, "ana@acme.test", now)

    assert refusal(engine, 1, "bo@acme.test", now) == DOMAIN_BUSY
    other = start(engine, 2, "bo@acme.test", now)  # another domain is not held
    finish(engine, ticket)
    again = start(engine, 1, "bo@acme.test", now)

    assert again.keys[0] == "probe-domain:1" and other.keys[0] == "probe-domain:2"


def test_a_few_probes_per_admin_per_minute(engine: Engine) -> None:
    now = utcnow()
    for number in range(PER_ADMIN_PER_MINUTE):
        finish(engine, start(engine, number, "Ana@acme.test", now))

    assert refusal(engine, 99, "ana@acme.test", now + timedelta(seconds=30)) == TOO_OFTEN
    finish(engine, start(engine, 99, "bo@acme.test", now))  # another admin may
    finish(engine, start(engine, 99, "ana@acme.test", now + timedelta(seconds=61)))


def test_probes_at_once_are_fewer_than_the_workers(engine: Engine) -> None:
    """With two workers a server has one probe place: a second probe, of any domain and
    any admin, is refused at once instead of taking the worker a sign-in needs."""
    now = utcnow()
    ticket = start(engine, 1, "ana@acme.test", now, places=1)

    assert refusal(engine, 2, "bo@other.test", now, places=1) == PORTAL_BUSY
    assert refusal(engine, 3, "cy@third.test", now, places=0) == NO_PLACES  # one worker
    finish(engine, ticket)
    finish(engine, start(engine, 2, "bo@other.test", now, places=1))


def test_a_killed_workers_probe_frees_its_places_when_its_lease_ends(engine: Engine) -> None:
    now = utcnow()
    start(engine, 1, "ana@acme.test", now, places=1)  # never finished: the worker died

    assert refusal(engine, 1, "bo@acme.test", now + LEASE - timedelta(seconds=1)) == DOMAIN_BUSY
    later = start(engine, 1, "bo@acme.test", now + LEASE + timedelta(seconds=1), places=1)
    assert later.keys == ("probe-domain:1", f"probe-place:{SERVER}:0")


def test_a_lapsed_lease_given_back_late_does_not_free_the_next_probe(engine: Engine) -> None:
    now = utcnow()
    slow = start(engine, 1, "ana@acme.test", now, places=1)
    later = now + LEASE + timedelta(seconds=1)
    start(engine, 1, "bo@acme.test", later, places=1)

    finish(engine, slow)  # the first probe ends at last

    assert refusal(engine, 1, "cy@acme.test", later) == DOMAIN_BUSY


def test_parallel_probes_of_one_domain_start_only_once(engine: Engine) -> None:
    """Eight workers asking at the same moment: the claim is atomic in the database."""
    now = utcnow()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def worker(number: int) -> None:
        barrier.wait()
        try:
            start(engine, 1, f"admin{number}@acme.test", now, places=8)
            outcomes.append("started")
        except ProbeRefused as refused:
            outcomes.append(refused.code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == ["domain_busy"] * 7 + ["started"]
