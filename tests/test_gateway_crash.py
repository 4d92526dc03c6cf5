"""A message answered 250 is never lost: the real `continuity gateway` command is killed
with SIGKILL at random moments under load and started again; afterwards every message
that got a 250 is at the primary. Two gateways share one queue; one is killed, the other
finishes its messages. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from imapclient import IMAPClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from continuity.localslapd import free_port
from roster.models import COPY_PENDING, PENDING_STATES, MailRecipient, StandbyCopy
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import Primary
from tests.standby_fixtures import standby_store  # noqa: F401 - the fixture, by name
from tests.test_gateway import people

CLIENTS = 20
PER_CLIENT = 100
FAILURES: Counter[str] = Counter()  # why sessions failed, for the report


def write_config(
    path: Path,
    database_url: str,
    port: int,
    relay_port: int,
    standby: DovecotServer | None = None,
) -> Path:
    """The TOML a gateway process runs with (copying to ``standby`` when given)."""
    store = (
        f"""
[standby]
lmtp = "{standby.lmtp[0]}:{standby.lmtp[1]}"
users_file = "{standby.users_file}"
"""
        if standby
        else ""
    )
    path.write_text(
        f"""
[database]
url = "{database_url}"

[gateway]
listen = "127.0.0.1:{port}"
hostname = "gateway.test"
allow_local_primary = true
claim_seconds = 5
delivery_workers = 4

[outbound]
relay = "127.0.0.1:{relay_port}"
"""
        + store,
        encoding="utf-8",
    )
    return path


class GatewayProcess:
    """`continuity gateway` in a subprocess that can be killed and started again."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers on its port."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "continuity", "-v", "--config", str(self.config), "gateway"],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    if probe.recv(3) == b"220":
                        return
            except OSError:
                time.sleep(0.05)
            assert self.process.poll() is None, self.log.read_text()[-2000:]
        raise AssertionError("the gateway did not start")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def send_load(port: int, acknowledged: list[str], run: str, stop_after: float = 120.0) -> None:
    """CLIENTS threads, PER_CLIENT messages each; a message whose session broke is sent
    again (as a real sender would); ``acknowledged`` gets each Message-ID that got 250."""
    lock = threading.Lock()
    deadline = time.monotonic() + stop_after

    def client(number: int) -> None:
        for index in range(PER_CLIENT):
            message_id = f"<load-{run}-{number}-{index}@sender.test>"
            data = (
                f"From: s{number}@sender.test\r\nTo: ana@acme.test\r\n"
                f"Subject: load {number}/{index}\r\nMessage-ID: {message_id}\r\n\r\n"
                + ("x" * 76 + "\r\n")
                * 13
            ).encode()
            while time.monotonic() < deadline:
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
                        smtp.sendmail(f"s{number}@sender.test", ["ana@acme.test"], data)
                    with lock:
                        acknowledged.append(message_id)
                    break
                except (OSError, smtplib.SMTPException) as error:
                    with lock:
                        FAILURES[type(error).__name__] += 1
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def wait_until_delivered(engine: Engine, timeout: float = 180.0, copies: bool = False) -> None:
    """Until no recipient (and, with ``copies``, no standby copy) waits any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as session:
            waiting = (
                session.scalar(
                    select(func.count(MailRecipient.id)).where(
                        MailRecipient.status.in_(PENDING_STATES)
                    )
                )
                or 0
            )
            if copies:
                waiting += (
                    session.scalar(
                        select(func.count(StandbyCopy.id)).where(StandbyCopy.status == COPY_PENDING)
                    )
                    or 0
                )
        if not waiting:
            return
        time.sleep(0.2)
    raise AssertionError(f"{waiting} recipients or standby copies still waiting")


def ids_at(primary: Primary) -> Counter[str]:
    """How often each Message-ID reached the primary."""
    found: Counter[str] = Counter()
    for message in primary.messages:
        match = re.search(rb"^Message-ID: (<[^>]+>)", message.content, re.MULTILINE | re.I)
        assert match is not None
        found[match.group(1).decode()] += 1
    return found


def standby_ids(server: DovecotServer, address: str, run: str) -> Counter[str]:
    """How often each Message-ID of this run is in ``address``'s standby INBOX."""
    found: Counter[str] = Counter()
    with IMAPClient(server.imap[0], port=server.imap[1], ssl=False, timeout=60) as client:
        client.plain_login(
            server.master_user, server.master_password, authorization_identity=address
        )
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    for item in fetched.values():
        value = item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().split(":", 1)[-1].strip()
        if f"-{run}-" in value:
            found[value] += 1
    return found


@pytest.mark.timeout(600)
def test_sigkill_under_load_loses_nothing_acknowledged(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    """2,000 messages from 20 clients while the gateway is killed (SIGKILL) four times:
    every acknowledged message reaches the primary and Ana's standby mailbox; duplicates
    are counted and bounded by what can be in flight at a kill."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    port = free_port()
    run = secrets.token_hex(4)
    config = write_config(tmp_path / "gateway.toml", database_url, port, relay.port, standby_store)
    gateway = GatewayProcess(config, port, tmp_path / "gateway.log")
    gateway.start()
    acknowledged: list[str] = []
    load = threading.Thread(target=send_load, args=(port, acknowledged, run))
    load.start()
    kills = 0
    rng = random.Random(os.getpid())  # noqa: S311 - kill timing, not secrets
    try:
        while load.is_alive() and kills < 4:
            time.sleep(rng.uniform(0.3, 1.2))
            gateway.kill()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.3))
            gateway.start()
        load.join()
        wait_until_delivered(engine, copies=True)
    finally:
        gateway.stop()
        primary.stop()
        relay.stop()
    at_primary = ids_at(primary)
    assert len(acknowledged) == CLIENTS * PER_CLIENT, FAILURES
    missing = [m for m in acknowledged if m not in at_primary]
    assert missing == [], f"{len(missing)} acknowledged messages lost"
    duplicates = sum(count - 1 for count in at_primary.values() if count > 1)
    in_standby = standby_ids(standby_store, "ana@acme.test", run)
    missing_copies = [m for m in acknowledged if m not in in_standby]
    with Session(engine) as session:
        states = Counter(
            (c.status, c.last_reply[:80]) for c in session.scalars(select(StandbyCopy))
        )
    assert missing_copies == [], f"{len(missing_copies)} acknowledged messages not copied: {states}"
    copy_duplicates = sum(count - 1 for count in in_standby.values() if count > 1)
    print(
        f"\nkills={kills} acknowledged={len(acknowledged)} duplicates at the primary="
        f"{duplicates} in the standby store={copy_duplicates} failures={dict(FAILURES)}"
    )
    # In flight at a kill: a delivery batch per runner (4 x 100), or a commit group whose
    # 250s were not read yet (one per client): far below this bound, or something is wrong.
    assert duplicates <= kills * (4 * 100 + CLIENTS)


@pytest.mark.timeout(600)
def test_two_gateways_share_the_queue_and_one_finishes_the_others_work(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """Two gateway processes on one roster deliver each message once while both live;
    when one is killed, the other delivers what it had claimed once its claims lapse."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    primary.handler.hang = 0.02  # slow enough that both gateways hold claims at once
    ports = [free_port(), free_port()]
    gateways = [
        GatewayProcess(
            write_config(tmp_path / f"g{n}.toml", database_url, ports[n], relay.port),
            ports[n],
            tmp_path / f"g{n}.log",
        )
        for n in range(2)
    ]
    for gateway in gateways:
        gateway.start()
    run = secrets.token_hex(4)
    try:
        sent: list[str] = []
        for index in range(300):
            message_id = f"<two-{run}-{index}@sender.test>"
            with smtplib.SMTP("127.0.0.1", ports[index % 2], timeout=20) as smtp:
                smtp.sendmail(
                    "s@sender.test",
                    ["ana@acme.test"],
                    f"Message-ID: {message_id}\r\nSubject: two\r\n\r\nbody\r\n".encode(),
                )
            sent.append(message_id)
        time.sleep(1.0)
        gateways[0].kill()
        wait_until_delivered(engine)
    finally:
        for gateway in gateways:
            gateway.stop()
        primary.stop()
        relay.stop()
    at_primary = ids_at(primary)
    assert set(sent) <= set(at_primary)
    duplicates = sum(count - 1 for count in at_primary.values() if count > 1)
    print(f"\nduplicates after killing one of two gateways: {duplicates}")
    assert duplicates <= 4  # only what the killed gateway had in flight (one per runner)


def test_the_journal_gets_a_line_per_message_and_no_line_per_smtp_command(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """`continuity -v gateway` (as deploy/continuity-gateway.service runs it) logs one
    line per message received and per delivery, with its queue id, and not aiosmtpd's
    line per SMTP command (every address of every session); -vv adds those."""
    primary, relay = Primary().start(), Primary().start()
    people(engine, primary.port)
    port = free_port()
    config = write_config(tmp_path / "gateway.toml", database_url, port, relay.port)
    gateway = GatewayProcess(config, port, tmp_path / "gateway.log")
    try:
        gateway.start()
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
            smtp.sendmail("journal@sender.test", ["ana@acme.test"], b"Subject: j\r\n\r\nhi\r\n")
        primary.handler.wait_for(1)
    finally:
        gateway.stop()
        primary.stop()
        relay.stop()
    log = gateway.log.read_text(errors="replace")
    assert re.search(r"event=received .*queue_id=", log), log[-2000:]
    assert "event=delivery" in log, log[-2000:]
    assert "MAIL FROM:<journal@sender.test>" not in log, log[-2000:]
