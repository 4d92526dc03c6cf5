"""Email Live Tracking benchmark: the list page on a million recipient rows.

One command (``.venv/bin/python -m bench.tracking_bench``, or ``scripts/bench tracking``)
fills a roster (SQLite, or PostgreSQL with ``--postgres URL``) with generated mail by
bulk inserts, not through SMTP: 800,000 messages over 90 days, one in four to two
people, so 1,000,000 recipient rows; 98 % for acme.test and 2 % for small.test; about
1 % bounced, 0.5 % deferred, two days held in a continuity event and handed back
(delivered via Continuity Service, shown Deferred), the newest few hundred queued.

It then times, through the real app (``create_app`` and its test client, signed in as
an admin of both domains through the sign-in form), the tracking page: the first page
and a page deep in the past (80 days back, reached by its key), with and without
filters, and the small domain's;
and next to them the bare indexed read of the same 50 rows (one SELECT on the
connection, no ORM, no template). Each figure is the median of ``--rounds`` requests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select, text

ADMIN = "admin@acme.test"
ADMIN_PASSWORD = "Bench-Admin-5521-Pine"
DOMAINS = ("acme.test", "small.test")
DAYS = 90
CHUNK = 20_000
CSRF = re.compile(rb'name="csrf_token"[^>]*?value="([^"]*)"')


def _database(postgres: str | None, workdir: Path) -> str:
    """A SQLite file in the work directory, or a new PostgreSQL database."""
    if not postgres:
        return f"sqlite:///{workdir}/roster.db"
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"continuity_tracking_bench_{os.getpid()}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(postgres).set(database=name).render_as_string(hide_password=False)


def _drop_database(postgres: str, url: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def fill(engine: Engine, recipients: int, seed: int = 10) -> dict[str, Any]:
    """The domains, acme.test's admin and the generated mail; what was made and how fast."""
    from roster.db import session_factory, transaction
    from roster.domains import add_domain
    from roster.identity import ROLE_ADMIN, add_local_staff
    from roster.models import (
        BOUNCED,
        DEFERRED,
        DELIVERED,
        QUEUED,
        ContinuityEvent,
        MailMessage,
        MailRecipient,
        utcnow,
    )
    from roster.queue import new_queue_id

    with transaction(session_factory(engine), writing=True) as session:
        ids = {}
        for name in DOMAINS:
            domain = add_domain(session, name, "bench")
            domain.continuity_active = True
            session.flush()
            ids[name] = domain.id
        for name in DOMAINS:
            found = session.get(type(domain), ids[name])
            add_local_staff(session, ADMIN, ADMIN_PASSWORD, ROLE_ADMIN, found, "bench")
    rng = random.Random(seed)
    now = utcnow()
    start = now - timedelta(days=DAYS)
    messages = recipients * 4 // 5  # one in four has two recipients
    step = (now - start) / messages
    held_from, held_until = now - timedelta(days=30), now - timedelta(days=28)
    handed_back_at = held_until + timedelta(minutes=20)
    with engine.begin() as connection:
        connection.execute(
            insert(ContinuityEvent).values(
                domain_id=ids["acme.test"],
                started_at=held_from,
                ended_at=handed_back_at,
                reason="451 4.3.0 the primary mail server did not answer",
                started_by="monitor",
                ended_by="monitor",
                recovery_started_at=held_until,
            )
        )
    began = time.perf_counter()
    made = 0
    for first in range(0, messages, CHUNK):
        message_rows: list[dict[str, Any]] = []
        recipient_rows: list[dict[str, Any]] = []
        for number in range(first, min(first + CHUNK, messages)):
            received = start + step * number
            queue_id = new_queue_id(received.timestamp())
            small = number % 50 == 7
            domain = "small.test" if small else "acme.test"
            sender = f"sender{rng.randrange(5000)}@outside{rng.randrange(40)}.test"
            message_rows.append(
                {
                    "queue_id": queue_id,
                    "received_at": received,
                    "sender": sender,
                    "size": 4000 + rng.randrange(60000),
                    "message_id": f"<{queue_id}@outside.test>",
                    "client_address": "192.0.2.10",
                    "client_name": "mx.outside.test",
                    "helo": "mx.outside.test",
                    "protocol": "ESMTP",
                    "origin": "smtp",
                    "body": b"",
                }
            )
            held = not small and held_from <= received < held_until
            for extra in range(2 if number % 4 == 0 else 1):
                roll = rng.random()
                status = DELIVERED
                if now - received < timedelta(minutes=10):
                    status = QUEUED
                elif roll < 0.01:
                    status = BOUNCED
                elif roll < 0.015:
                    status = DEFERRED
                delivered_at = received + timedelta(seconds=2) if status == DELIVERED else None
                if held and status == DELIVERED:
                    delivered_at = handed_back_at
                recipient_rows.append(
                    {
                        "queue_id": queue_id,
                        "domain_id": ids[domain],
                        "address": f"person{rng.randrange(20000)}.{extra}@{domain}",
                        "route": "primary",
                        "status": status,
                        "attempts": 0 if status == QUEUED else 1,
                        "next_attempt_at": received,
                        "last_attempt_at": delivered_at or (received if status != QUEUED else None),
                        "last_reply": "250 2.0.0 Ok" if status == DELIVERED else "",
                        "delivered_at": delivered_at,
                        "via_continuity": held,
                    }
                )
        with engine.begin() as connection:
            connection.execute(insert(MailMessage), message_rows)
            connection.execute(insert(MailRecipient), recipient_rows)
        made += len(recipient_rows)
        print(f"  {made:,} recipient rows", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    seconds = time.perf_counter() - began
    with engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.commit()
    return {"messages": messages, "recipients": made, "fill_seconds": round(seconds, 1)}


def _median_ms(action: Callable[[], Any], rounds: int) -> float:
    action()  # warm the caches once
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return round(1000 * statistics.median(times), 2)


def measure(url: str, workdir: Path, rounds: int) -> dict[str, Any]:
    """Time the tracking page through the app, and the bare read beside it."""
    from portal import create_app
    from roster.config import load_config
    from roster.models import MailMessage
    from roster.tracking import Key

    config = workdir / "continuity.toml"
    config.write_text(
        f"[database]\nurl = {json.dumps(url)}\n\n[portal]\n"
        'secret_key = "continuity tracking benchmark, not a secret"\nsecure_cookies = false\n',
        encoding="utf-8",
    )
    app = create_app(config=load_config(str(config)))
    client = app.test_client()
    page = client.get("/sign-in").data
    token = CSRF.search(page)
    assert token is not None
    signed = client.post(
        "/sign-in",
        data={"csrf_token": token.group(1).decode(), "address": ADMIN, "password": ADMIN_PASSWORD},
    )
    assert signed.status_code == 302, signed.status_code
    engine: Engine = app.extensions["roster_engine"]
    m = MailMessage
    with engine.connect() as connection:
        deep_at = connection.scalar(select(m.received_at).order_by(m.received_at.desc()).limit(1))
        assert deep_at is not None
        deep_row = connection.execute(
            select(m.received_at, m.queue_id)
            .where(m.received_at <= deep_at - timedelta(days=80))
            .order_by(m.received_at.desc(), m.queue_id.desc())
            .limit(1)
        ).one()
    deep = Key(deep_row.received_at, deep_row.queue_id).text()

    def get(query: str, domain: str = "acme.test") -> Callable[[], None]:
        def run() -> None:
            response = client.get(f"/admin/domains/{domain}/tracking{query}")
            assert response.status_code == 200, (query, response.status_code)
            assert b'id="tracking"' in response.data or b'id="no-messages"' in response.data

        return run

    cases = {
        "first page": "",
        "page 80 days back (by key)": f"?older={deep}",
        "first page, status Bounced": "?status=bounced",
        "page 80 days back, status Bounced": f"?status=bounced&older={deep}",
        "first page, via Continuity Service": "?continuity=1",
        "first page, one recipient": "?recipient=person123.0@acme.test",
        "first page, one sender": "?sender=sender42@outside7.test",
        "first page, last 24 hours": "?since=24h",
    }
    figures: dict[str, Any] = {
        name: _median_ms(get(query), rounds) for name, query in cases.items()
    }
    # small.test: 2 % of the mail, so its pages reach further back in the time index.
    figures["small.test: first page"] = _median_ms(get("", "small.test"), rounds)
    figures["small.test: first page, status Bounced"] = _median_ms(
        get("?status=bounced", "small.test"), rounds
    )

    deep_key = Key(deep_row.received_at, deep_row.queue_id)

    def bare(older: Key | None) -> Callable[[], None]:
        query = select(m.queue_id, m.received_at, m.sender, m.size, m.message_id)
        if older is not None:
            query = query.where(
                m.received_at <= older.received_at,
                (m.received_at < older.received_at) | (m.queue_id < older.queue_id),
            )
        query = query.order_by(m.received_at.desc(), m.queue_id.desc()).limit(50)

        def run() -> None:
            with engine.connect() as connection:
                assert len(connection.execute(query).all()) == 50

        return run

    figures["bare read of 50 rows, first page"] = _median_ms(bare(None), rounds)
    figures["bare read of 50 rows, 80 days back"] = _median_ms(bare(deep_key), rounds)
    return figures


def main() -> None:
    """Fill a roster, measure, print the figures as JSON (and a table on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run on PostgreSQL: a database of the run's own is made (and dropped) there",
    )
    args = parser.parse_args()

    from roster.db import make_engine, upgrade

    with tempfile.TemporaryDirectory(prefix="continuity-tracking-bench-") as tmp:
        workdir = Path(tmp)
        url = _database(args.postgres, workdir)
        try:
            engine = make_engine(url, create=True)
            upgrade(engine)
            made = fill(engine, args.recipients)
            engine.dispose()
            figures = measure(url, workdir, args.rounds)
        finally:
            if args.postgres:
                _drop_database(args.postgres, url)
    result = {"database": "postgresql" if args.postgres else "sqlite", **made, "ms": figures}
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:>9.2f} ms", file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
