"""/metrics, /healthz and /readyz against a running stack: a real gateway takes mail over
SMTP, delivers it to an aiosmtpd primary, holds it while that primary is down and hands
it back, and the portal's /metrics (parsed with prometheus_client's own parser) shows
what a person watching would expect; sign-ins through the real form and a real sync are
counted; nobody but a monitor reads it; /readyz follows the roster. On SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, event, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from gateway.monitor import LEASE_NAME
from gateway.service import Gateway
from portal import create_app
from portal import metrics as portal_metrics
from roster.config import Config, load_config
from roster.identity import add_local_staff
from roster.metrics import MONITOR_LEASE, AppendOnlyTally, sign_in_tally
from roster.models import AuditEvent, ContinuityEvent, Domain
from roster.queue import new_queue_id, queue_id_floor
from tests.directory import Continuity, DirectoryTree, source_toml
from tests.portal_support import sign_in
from tests.servers.smtp import Primary
from tests.test_gateway import Mail, gateway_config, people

TOKEN = "metrics-token-0123456789abcdef-xyz"  # noqa: S105 - a test's token
STAFF = "ops@acme.test"
STAFF_PASSWORD = "Staff-Key-9931-Quartz"


# ---------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------
def portal_app(database_url: str, **portal: Any) -> Flask:
    """The portal on the test's roster, as `continuity serve` builds it, with the
    metrics token (a setting given as None is left out)."""
    settings = {"secret_key": "s" * 40, "secure_cookies": False, "metrics_token": TOKEN}
    settings.update(portal)
    config = Config(
        database_url=database_url,
        portal={key: setting for key, setting in settings.items() if setting is not None},
    )
    return create_app({"TESTING": True}, config=config)


def file_app(path: Path) -> Flask:
    """The portal as `continuity serve` builds it from a configuration file, with the
    metrics token added."""
    config = load_config(path, environ={})
    config.portal["metrics_token"] = TOKEN
    return create_app({"TESTING": True}, config=config)


def scrape(
    client: FlaskClient, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed (asked with the token): (sample name, sorted labels) -> value."""
    headers = {"Authorization": "Bearer " + TOKEN, **headers}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    """One sample's value, or None when the scrape does not have it."""
    return found.get((name, tuple(sorted(labels.items()))))


def steady(found: dict[Any, float]) -> dict[Any, float]:
    """A scrape without the figures that move with the clock (ages, read time)."""
    return {key: number for key, number in found.items() if "seconds" not in key[0]}


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``condition`` holds (the gateway and its monitor work in threads)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


@dataclass
class Stack:
    """A gateway with its primary and relay, and the portal, on one roster."""

    mail: Mail
    app: Flask
    stopped: bool = False

    def stop_gateway(self) -> None:
        """Stop the gateway (as its host going down would, less abruptly)."""
        if not self.stopped:
            self.stopped = True
            self.mail.gateway.stop()

    @property
    def engine(self) -> Engine:
        """The roster's engine."""
        return self.mail.engine

    def domain(self, name: str = "acme.test") -> Domain:
        """A domain as the roster holds it now."""
        with Session(self.engine) as session:
            found = session.scalar(select(Domain).where(Domain.name == name))
            assert found is not None
            return found

    def event(self, name: str = "acme.test") -> ContinuityEvent | None:
        """The domain's newest continuity event."""
        with Session(self.engine) as session:
            return session.scalar(
                select(ContinuityEvent)
                .join(Domain, Domain.id == ContinuityEvent.domain_id)
                .where(Domain.name == name)
                .order_by(ContinuityEvent.id.desc())
            )


@pytest.fixture
def stack(engine: Engine, database_url: str) -> Iterator[Stack]:
    """A running gateway (its monitor checking acme.test's primary every second, one
    failure starting an event and one success the hand-back) and the portal."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    with Session(engine) as session, session.begin():
        session.execute(
            update(Domain)
            .where(Domain.name == "acme.test")
            .values(probe_interval_seconds=1, failures_before_failover=1, recover_after=1)
        )
    running = Gateway(
        gateway_config(database_url, relay.port), engine=engine, idle=0.05, retention_check=None
    )
    running.start()
    app = portal_app(database_url)
    made = Stack(Mail(engine, running, primary, relay), app)
    try:
        yield made
    finally:
        made.stop_gateway()
        primary.stop()
        relay.stop()
        app.extensions["roster_engine"].dispose()


# ---------------------------------------------------------------------------
# Mail
# ---------------------------------------------------------------------------
def test_metrics_follow_mail_through_an_outage_and_its_hand_back(stack: Stack) -> None:
    """Three messages delivered, the primary goes down (an event starts by itself), two
    more are held, it comes back and they are handed back: /metrics says so at each step,
    the same from two portal workers."""
    client = stack.app.test_client()
    for number in range(3):
        stack.mail.send(["ana@acme.test"], subject=f"before {number}")
    stack.mail.primary.handler.wait_for(3)
    wait_for(lambda: all(r.status == "delivered" for r in stack.mail.recipients()))

    found = scrape(client)
    assert value(found, "continuity_roster_up") == 1
    assert value(found, "continuity_gateway_monitor_up") == 1
    assert value(found, "continuity_mail_messages_last_hour") == 3
    assert (
        value(found, "continuity_mail_recipients_last_hour", domain="acme.test", status="delivered")
        == 3
    )
    assert value(found, "continuity_queue_recipients", domain="acme.test", state="queued") == 0
    assert value(found, "continuity_domain_active", domain="acme.test") == 1
    assert value(found, "continuity_domain_active", domain="beta.test") == 0

    stack.mail.primary.stop()
    wait_for(lambda: stack.event() is not None)
    stack.mail.send(["ana@acme.test"], subject="during 1")
    stack.mail.send(["ana@acme.test", "sales@acme.test"], subject="during 2")

    found = scrape(client)
    assert value(found, "continuity_event_open", domain="acme.test") == 1
    assert value(found, "continuity_event_recovering", domain="acme.test") == 0
    assert value(found, "continuity_primary_up", domain="acme.test") == 0
    assert (value(found, "continuity_primary_failures_in_a_row", domain="acme.test") or 0) >= 1
    assert value(found, "continuity_queue_recipients", domain="acme.test", state="held") == 3
    assert value(found, "continuity_queue_overdue_recipients", domain="acme.test") == 0
    held_age = value(found, "continuity_queue_oldest_age_seconds", domain="acme.test", state="held")
    assert held_age is not None and 0 <= held_age < 60
    assert value(found, "continuity_mail_messages_last_hour") == 5
    assert (
        value(found, "continuity_mail_recipients_last_hour", domain="acme.test", status="held") == 3
    )
    started = value(found, "continuity_event_started_timestamp_seconds", domain="acme.test")
    assert started is not None and abs(started - time.time()) < 60
    # Another worker (another process, another host) reads the same roster.
    other = portal_app(stack.mail.engine.url.render_as_string(hide_password=False))
    try:
        assert steady(scrape(other.test_client())) == steady(found)
    finally:
        other.extensions["roster_engine"].dispose()

    stack.mail.primary.start()
    wait_for(lambda: (event := stack.event()) is not None and event.ended_at is not None)
    stack.mail.primary.handler.wait_for(5)

    found = scrape(client)
    assert value(found, "continuity_event_open", domain="acme.test") == 0
    assert value(found, "continuity_primary_up", domain="acme.test") == 1
    assert value(found, "continuity_queue_recipients", domain="acme.test", state="held") == 0
    assert value(found, "continuity_events_total", domain="acme.test") == 1
    assert value(found, "continuity_held_recipients_total", domain="acme.test") == 3
    assert value(found, "continuity_replayed_recipients_total", domain="acme.test") == 3
    assert (
        value(found, "continuity_mail_recipients_last_hour", domain="acme.test", status="delivered")
        == 6
    )


def test_the_relay_queue_drops_to_zero(stack: Stack) -> None:
    """The gateway's own notices (here a bounce for a recipient the primary refuses)
    wait under the (relay) label while the relay defers them, and the series go back to
    0 once delivered, as a domain's do, instead of vanishing (an alert on them would
    stay firing, or never see the end)."""
    client = stack.app.test_client()
    wait_for(lambda: stack.domain().last_check_ok is True)
    found = scrape(client)
    for state in ("queued", "deferred", "held", "handing_back"):
        assert value(found, "continuity_queue_recipients", domain="(relay)", state=state) == 0
    assert value(found, "continuity_queue_overdue_recipients", domain="(relay)") == 0

    stack.mail.primary.handler.replies["ana@acme.test"] = "550 5.1.1 no such person"
    stack.mail.relay.handler.replies["someone@sender.test"] = "451 4.3.0 try later"
    stack.mail.send(["ana@acme.test"])

    def notice() -> list[Any]:
        return [r for r in stack.mail.recipients() if r.domain_id is None]

    stack.mail.wait(lambda: [r.status for r in notice()] == ["deferred"])
    found = scrape(client)
    assert value(found, "continuity_queue_recipients", domain="(relay)", state="deferred") == 1

    del stack.mail.relay.handler.replies["someone@sender.test"]
    stack.mail.retry()
    stack.mail.wait(lambda: [r.status for r in notice()] == ["delivered"])
    found = scrape(client)
    assert value(found, "continuity_queue_recipients", domain="(relay)", state="deferred") == 0
    assert (
        value(found, "continuity_queue_oldest_age_seconds", domain="(relay)", state="deferred") == 0
    )
    assert value(found, "continuity_queue_overdue_recipients", domain="(relay)") == 0


def test_a_message_nobody_delivers_is_overdue(engine: Engine, database_url: str) -> None:
    """A gateway that receives but does not deliver (its runners stuck): the message it
    took is due, and /metrics counts it overdue and waiting, with its age."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    running = Gateway(
        gateway_config(database_url, relay.port),
        engine=engine,
        deliver=False,
        monitor=False,
        retention_check=None,
    )
    running.start()
    app = portal_app(database_url)
    try:
        Mail(engine, running, primary, relay).send(["ana@acme.test"])
        time.sleep(0.3)  # the message's age is what is measured here
        found = scrape(app.test_client())
    finally:
        running.stop()
        primary.stop()
        relay.stop()
        app.extensions["roster_engine"].dispose()
    assert value(found, "continuity_queue_recipients", domain="acme.test", state="queued") == 1
    assert value(found, "continuity_queue_overdue_recipients", domain="acme.test") == 1
    assert (value(found, "continuity_queue_overdue_seconds", domain="acme.test") or 0) >= 0.3
    assert (
        value(found, "continuity_queue_oldest_age_seconds", domain="acme.test", state="queued") or 0
    ) >= 0.3
    assert value(found, "continuity_gateway_monitor_up") == 0
    assert value(found, "continuity_primary_up", domain="acme.test") is None  # never checked


# ---------------------------------------------------------------------------
# Sign-ins and the sync
# ---------------------------------------------------------------------------
def test_sign_ins_and_refusals_are_counted(engine: Engine, database_url: str) -> None:
    """Through the real sign-in form: a local staff account signs in once and a wrong
    password is refused twice; the counters move by that much, whichever worker asks."""
    with Session(engine) as session, session.begin():
        add_local_staff(session, STAFF, STAFF_PASSWORD, "global_admin", None, "setup")
    app = portal_app(database_url)
    try:
        client = app.test_client()
        before = scrape(client)  # this worker's tally starts here
        assert value(before, "continuity_sign_ins_total", method="local") == 0
        browser = app.test_client()
        assert sign_in(browser, STAFF, "wrong password 1").status_code == 401
        assert sign_in(browser, STAFF, "wrong password 2").status_code == 401
        assert sign_in(browser, STAFF, STAFF_PASSWORD).status_code == 302
        after = scrape(client)
        started_now = portal_app(database_url)  # a worker started after the sign-ins
        fresh = scrape(started_now.test_client())
        started_now.extensions["roster_engine"].dispose()
    finally:
        app.extensions["roster_engine"].dispose()
    for found in (after, fresh):
        assert value(found, "continuity_sign_ins_total", method="local") == 1
        assert value(found, "continuity_sign_ins_total", method="emergency") == 0
        assert value(found, "continuity_sign_in_failures_total", directory_unreachable="false") == 2
        assert value(found, "continuity_sign_in_account_locks_total") == 0
        assert value(found, "continuity_sign_in_locked", kind="account") == 0


def test_the_last_sync_run_is_shown(
    tmp_path: Path, database_url: str, directory: DirectoryTree
) -> None:
    """A real sync of two people: its duration, changes and success; a run that cannot
    reach the directory then makes the source degraded."""
    tool = Continuity(tmp_path, database_url)
    tool.configure()
    assert tool.run("domain", "add", "acme.test").exit_code == 0
    slapd = directory.slapd
    good = source_toml("corp", slapd.url, directory.base_dn, slapd.root_dn, slapd.root_password)
    tool.configure(good)
    directory.add_person("ana", "ana@acme.test")
    directory.add_person("bob", "bob@acme.test")
    assert tool.sync()[0] == 0

    app = file_app(tool.path)
    try:
        found = scrape(app.test_client())
        assert value(found, "continuity_sync_last_run_success", source="corp") == 1
        assert (
            value(found, "continuity_sync_last_run_changes", source="corp", change="created") == 2
        )
        assert value(found, "continuity_sync_last_run_entries_read", source="corp") == 2
        assert (value(found, "continuity_sync_last_run_duration_seconds", source="corp") or -1) >= 0
        assert value(found, "continuity_sync_degraded", source="corp") == 0
        assert value(found, "continuity_sync_running", source="corp") == 0
        success = value(found, "continuity_sync_last_success_timestamp_seconds", source="corp")
        assert success is not None and abs(success - time.time()) < 120
    finally:
        app.extensions["roster_engine"].dispose()

    tool.configure(source_toml("corp", "ldap://127.0.0.1:9", directory.base_dn, slapd.root_dn, "x"))
    assert tool.sync()[0] == 1
    app = file_app(tool.path)
    try:
        found = scrape(app.test_client())
    finally:
        app.extensions["roster_engine"].dispose()
    assert value(found, "continuity_sync_last_run_success", source="corp") == 0
    assert value(found, "continuity_sync_degraded", source="corp") == 1
    # The last success is still the one before.
    assert value(found, "continuity_sync_last_success_timestamp_seconds", source="corp") == success


# ---------------------------------------------------------------------------
# Who may read them
# ---------------------------------------------------------------------------
def test_metrics_are_for_monitors_only(database_url: str) -> None:
    """Nobody reads them by default, not even loopback (a reverse proxy on the same host
    that adds no forwarding header makes every request come from 127.0.0.1); the token
    opens them from anywhere; a network opens them only when listed, loopback included;
    a request a proxy the portal does not trust passed on needs the token."""
    plain = portal_app(database_url, metrics_token=None)
    with_token = portal_app(database_url)
    networks = portal_app(database_url, metrics_token=None, metrics_networks=["10.9.0.0/16"])
    loopback = portal_app(
        database_url, metrics_token=None, metrics_networks=["127.0.0.0/8", "::1/128"]
    )
    outside = {"REMOTE_ADDR": "203.0.113.7"}
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    right = {"Authorization": "Bearer " + TOKEN}
    try:
        # Nothing configured: nobody, whatever the address (a same-host proxy's included).
        assert plain.test_client().get("/metrics").status_code == 403
        assert plain.test_client().get("/metrics", headers=right).status_code == 403
        assert plain.test_client().get("/metrics", environ_base=outside).status_code == 403
        assert with_token.test_client().get("/metrics").status_code == 403  # no token sent
        assert with_token.test_client().get("/metrics", environ_base=outside).status_code == 403
        wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "!"}
        assert (
            with_token.test_client()
            .get("/metrics", headers=wrong, environ_base=outside)
            .status_code
            == 403
        )
        answer = with_token.test_client().get("/metrics", headers=right, environ_base=outside)
        assert answer.status_code == 200 and b"continuity_roster_up 1.0" in answer.data
        assert (
            with_token.test_client().get("/metrics", headers={**right, **forwarded}).status_code
            == 200
        )
        assert networks.test_client().get("/metrics").status_code == 403  # loopback not listed
        inside = {"REMOTE_ADDR": "10.9.8.7"}
        assert networks.test_client().get("/metrics", environ_base=inside).status_code == 200
        # Loopback listed on purpose: it reads them, unless a proxy says it passed it on.
        assert loopback.test_client().get("/metrics").status_code == 200
        ipv6 = {"REMOTE_ADDR": "::1"}
        assert loopback.test_client().get("/metrics", environ_base=ipv6).status_code == 200
        assert loopback.test_client().get("/metrics", headers=forwarded).status_code == 403
        assert loopback.test_client().get("/metrics", environ_base=outside).status_code == 403
        refused = plain.test_client().get("/metrics")
        assert b"continuity_" not in refused.data
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    finally:
        for app in (plain, with_token, networks, loopback):
            app.extensions["roster_engine"].dispose()


def test_a_short_token_is_a_configuration_error(tmp_path: Path) -> None:
    """A guessable token stops the portal at start with a line naming the key."""
    path = tmp_path / "continuity.toml"
    path.write_text('[portal]\nmetrics_token = "short"\n', encoding="utf-8")
    with pytest.raises(Exception, match=r"\[portal\]\.metrics_token: too short"):
        load_config(path, environ={})


# ---------------------------------------------------------------------------
# /healthz and /readyz
# ---------------------------------------------------------------------------
@pytest.fixture
def roster_gate(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A roster URL and a switch that makes it unreachable (False) and back (True):
    PostgreSQL refuses connections to the database and drops the open ones; the SQLite
    file is moved away."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        admin = create_engine(
            url.set(database="postgres").render_as_string(hide_password=False),
            isolation_level="AUTOCOMMIT",
        )

        def switch(reachable: bool) -> None:
            with admin.connect() as connection:
                allow = "true" if reachable else "false"
                connection.execute(
                    text(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS {allow}')
                )
                if not reachable:
                    connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = :name AND pid <> pg_backend_pid()"
                        ),
                        {"name": url.database},
                    )

        try:
            yield database_url, switch
        finally:
            switch(True)
            admin.dispose()
        return
    path = Path(str(url.database))
    aside = tmp_path / "moved-away"
    aside.mkdir()

    def move(reachable: bool) -> None:
        for suffix in ("", "-wal", "-shm"):
            here, there = Path(f"{path}{suffix}"), aside / f"roster.db{suffix}"
            source, target = (there, here) if reachable else (here, there)
            if source.exists():
                source.rename(target)

    yield database_url, move


def test_readyz_follows_the_roster_and_healthz_only_the_process(
    roster_gate: tuple[str, Callable[[bool], None]],
) -> None:
    """/readyz is 503 with a short reason while the roster cannot be reached and 200
    again after; /healthz stays 200 throughout; /metrics says roster_up 0."""
    url, switch = roster_gate
    app = portal_app(url)
    client = app.test_client()
    try:
        assert client.get("/readyz").status_code == 200
        assert client.get("/readyz").data == b"ready\n"
        switch(False)
        if make_url(url).get_backend_name() == "sqlite":
            # The pool's open connections still hold the moved file: a new process would
            # not find it. Starting one is what a restarted worker does.
            app.extensions["roster_engine"].dispose()
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.data == b"not ready: the roster database cannot be read\n"
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").data == b"ok\n"
        found = scrape(client)
        assert value(found, "continuity_roster_up") == 0
        assert (
            value(found, "continuity_queue_recipients", domain="acme.test", state="queued") is None
        )
        switch(True)
        assert client.get("/readyz").status_code == 200
    finally:
        app.extensions["roster_engine"].dispose()


def test_readyz_answers_soon_when_the_roster_hangs(engine: Engine, database_url: str) -> None:
    """Another transaction holds the table /readyz reads (a database that hangs, as far
    as the portal can tell) for 10 seconds: /readyz still answers within 5. PostgreSQL:
    503 once its 2-second statement timeout ends the wait; SQLite, whose readers a
    writer does not block: 200 at once."""
    postgresql = engine.dialect.name == "postgresql"
    locked, done = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.connect() as blocker, blocker.begin():
            if postgresql:
                blocker.exec_driver_sql("LOCK TABLE domain IN ACCESS EXCLUSIVE MODE")
            else:
                blocker.execute(insert(Domain).values(name="hang.test"))
            locked.set()
            done.wait(10)

    app = portal_app(database_url)
    client = app.test_client()
    holder = threading.Thread(target=hold)
    try:
        assert client.get("/readyz").status_code == 200  # a connection in the pool
        holder.start()
        assert locked.wait(10)
        started = time.monotonic()
        answer = client.get("/readyz")
        took = time.monotonic() - started
        assert took < 5, f"/readyz took {took:.1f} s"
        if postgresql:
            assert answer.status_code == 503
            assert answer.data == b"not ready: the roster database cannot be read\n"
        else:
            assert (answer.status_code, answer.data) == (200, b"ready\n")
        done.set()
        holder.join()
        assert client.get("/readyz").status_code == 200  # the statement timeout did not stay
    finally:
        done.set()
        if holder.is_alive():
            holder.join()
        app.extensions["roster_engine"].dispose()


# ---------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------
def test_the_lease_read_is_the_one_the_monitor_holds() -> None:
    """roster.metrics cannot import the gateway: the two names are pinned equal here."""
    assert MONITOR_LEASE == LEASE_NAME


def test_queue_id_floor_is_below_every_id_made_from_that_moment() -> None:
    """Counting the last hour by queue id is right only if ids sort as their times do."""
    moment = datetime(2026, 12, 1, 9, 30, 15, 123000, tzinfo=UTC)
    stamp = moment.timestamp()
    for _ in range(200):
        made = new_queue_id(stamp)
        assert queue_id_floor(moment) <= made < queue_id_floor(moment + timedelta(milliseconds=1))
        assert new_queue_id(stamp - 0.001) < queue_id_floor(moment)


def test_queue_id_floor_is_exact_to_the_millisecond() -> None:
    """The floor of a moment carries exactly its millisecond, never the one before (a
    float timestamp times 1000 loses one now and then once seconds pass 2**31, in
    2038): the last hour's count starts where it should, and consecutive milliseconds
    never share a floor."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    # Milliseconds of 2038 among which some have a float timestamp just short of them.
    first = (datetime(2038, 1, 21, 3, 43, 23, tzinfo=UTC) - epoch) // timedelta(milliseconds=1)
    short = 0
    for millis in range(first, first + 2000):
        moment = epoch + timedelta(milliseconds=millis)
        short += int(moment.timestamp() * 1000) != millis
        floor = queue_id_floor(moment)
        assert int(floor.translate(_DIGITS), 32) >> 52 == millis
        assert queue_id_floor(moment - timedelta(milliseconds=1)) < floor
    assert short > 0  # the float way would have been wrong here
    assert queue_id_floor(datetime(2026, 12, 1)) == queue_id_floor(
        datetime(2026, 12, 1, tzinfo=UTC)
    )  # a naive moment is UTC


# Crockford's base 32 (roster.queue's alphabet) to the digits int(..., 32) reads.
_DIGITS = str.maketrans("ABCDEFGHJKMNPQRSTVWXYZ", "ABCDEFGHIJKLMNOPQRSTUV")


def test_the_sign_in_tally_counts_each_row_once(engine: Engine) -> None:
    """Rows added between looks are counted once, before and after their mark settles;
    the tally of a process started later agrees."""
    clock = [1000.0]
    tally = sign_in_tally(settle_seconds=60)
    tally._clock = lambda: clock[0]  # the settling is what is tested: a clock of our own

    def add(*actions: str) -> None:
        with engine.begin() as connection:
            connection.execute(
                insert(AuditEvent),
                [{"actor": "x@acme.test", "action": a, "detail": "local"} for a in actions],
            )

    def read(counting: AppendOnlyTally) -> Counter[Any]:
        with engine.connect() as connection:
            return counting.read(connection)

    assert read(tally) == Counter()
    add("sign_in", "coverage.added", "sign_in.failed")
    assert read(tally) == Counter(
        {("sign_in", "local"): 1, ("sign_in.failed", "directory_unreachable"): 1}
    )
    for step in range(5):
        clock[0] += 45
        add("sign_in")
        assert read(tally)[("sign_in", "local")] == 2 + step
    assert tally._mark is not None and tally._mark > 1  # marks have settled
    assert read(sign_in_tally()) == read(tally)


def test_a_row_in_flight_at_the_first_look_is_counted(engine: Engine) -> None:
    """A sign-in whose transaction has its id but commits after a worker's first look
    (a row below the highest id that look saw) is counted once the first mark settles,
    and only once. PostgreSQL only: SQLite has one writer at a time, so no row commits
    below one already visible."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: no row commits below a visible one")
    clock = [1000.0]
    tally = sign_in_tally(settle_seconds=60)
    tally._clock = lambda: clock[0]
    row = {"actor": "x@acme.test", "action": "sign_in", "detail": "local"}

    def read() -> int:
        with engine.connect() as connection:
            return tally.read(connection)[("sign_in", "local")]

    with engine.connect() as in_flight:
        late = in_flight.begin()
        in_flight.execute(insert(AuditEvent), [row])  # its id is given out now
        with engine.begin() as connection:
            connection.execute(insert(AuditEvent), [row])  # a higher id, committed
        assert read() == 1  # the first look: the row in flight is not visible
        late.commit()
    clock[0] += 30
    assert read() == 1  # below the first mark, not settled yet
    clock[0] += 31
    assert read() == 2  # the first mark settled: its range counted again
    clock[0] += 120
    assert read() == 2
    with engine.connect() as connection:
        assert sign_in_tally().read(connection)[("sign_in", "local")] == 2


def test_the_first_sign_in_count_reads_only_sign_in_rows(engine: Engine) -> None:
    """The first count of a worker reads the sign-in rows through the (action, id)
    index, not the whole audit trail (which grows with every change anyone makes): on a
    large trail a full read outran the scrape's statement timeout at every scrape."""
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        if "audit_event" in statement and "count" in statement.lower():
            statements.append((statement, parameters))

    with engine.begin() as connection:
        connection.execute(
            insert(AuditEvent),
            [
                {"actor": "x@acme.test", "action": action, "detail": "local"}
                for action in ("sign_in", "coverage.added", "sign_in.failed", "account.locked")
            ],
        )
    event.listen(engine, "before_cursor_execute", seen)
    try:
        with engine.connect() as connection:
            sign_in_tally().read(connection)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements
    with engine.connect() as connection:
        for statement, parameters in statements:
            if engine.dialect.name == "sqlite":
                plan = " ".join(
                    str(step[-1])
                    for step in connection.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + statement, parameters
                    )
                )
            else:
                connection.exec_driver_sql("SET enable_seqscan = off")  # a tiny table
                plan = " ".join(
                    str(step[0])
                    for step in connection.exec_driver_sql("EXPLAIN " + statement, parameters)
                )
            assert "ix_audit_event_action_id" in plan, plan


def test_a_sign_in_count_that_fails_leaves_only_the_sign_ins_out(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit trail held by another transaction past the scrape's statement timeout
    (PostgreSQL): the scrape still says roster_up 1 with every other figure, leaves the
    sign-in counters out (never a false 0), and the next scrape counts them."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no statement timeout and its readers do not wait")
    monkeypatch.setattr(portal_metrics, "SCRAPE_TIMEOUT_MS", 500)
    app = portal_app(database_url)
    client = app.test_client()
    try:
        with engine.connect() as blocker, blocker.begin():
            blocker.exec_driver_sql("LOCK TABLE audit_event IN ACCESS EXCLUSIVE MODE")
            found = scrape(client)
        assert value(found, "continuity_roster_up") == 1
        assert value(found, "continuity_gateway_monitor_up") == 0
        assert value(found, "continuity_queue_recipients", domain="(relay)", state="queued") == 0
        assert value(found, "continuity_sign_ins_total", method="local") is None
        assert value(found, "continuity_sign_in_locked", kind="account") == 0
        found = scrape(client)
        assert value(found, "continuity_sign_ins_total", method="local") == 0
    finally:
        app.extensions["roster_engine"].dispose()
