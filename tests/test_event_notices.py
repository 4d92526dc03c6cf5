"""Notices of continuity events, with two real gateways, a real Dovecot, an aiosmtpd
primary and an aiosmtpd relay: the admins of a domain hear when an event starts, when
the hand-back starts and when it ends (in their standby mailbox at once, at the primary
after the hand-back, and at their alternate address); the operator hears the same;
covered people with an alternate address hear at the start, in the domain's language,
where the webmail is. Each change is told once, whoever made it. On SQLite and
PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from imapclient import IMAPClient
from sqlalchemy import Engine, MetaData, Table, func, insert, select, text
from sqlalchemy.orm import Session

from continuity.localslapd import free_port
from gateway import event_notices
from gateway.service import Gateway
from roster.config import Config
from roster.continuity import end_event, record_check, start_event
from roster.db import make_engine, session_factory, transaction, upgrade
from roster.identity import ROLE_ADMIN, ROLE_GLOBAL_ADMIN, add_local_staff
from roster.models import (
    ContinuityEvent,
    Domain,
    MailMessage,
    MailRecipient,
    Person,
    StaffRole,
    utcnow,
)
from roster.queue import writing
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import Primary, Received
from tests.standby_fixtures import standby_store  # noqa: F401 - the fixture, by name
from tests.test_gateway import people

WEBMAIL = "https://continuity.example/webmail"
OPERATOR = "noc@operator.test"
# What a notice's header block may hold, and nothing else.
HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "auto-submitted",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}


@dataclass
class Told:
    """Two gateways, a primary, a relay, and the people of acme.test (Spanish)."""

    engine: Engine
    primary: Primary
    relay: Primary
    store: DovecotServer
    run: str
    gateways: list[Gateway]

    @property
    def admin(self) -> str:
        """Rita, admin of acme.test, covered."""
        return f"rita-{self.run}@acme.test"

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Wait until ``condition`` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not in time: {what}")
            for gateway in self.gateways:
                gateway.wake()
            time.sleep(0.05)

    def events(self) -> list[ContinuityEvent]:
        """The continuity events, oldest first."""
        with Session(self.engine) as session:
            return list(session.scalars(select(ContinuityEvent).order_by(ContinuityEvent.id)))

    def relayed(self, address: str) -> list[EmailMessage]:
        """What the relay received for ``address``, in order."""
        return [_parse(m) for m in list(self.relay.messages) if address in m.recipients]

    def at_primary(self, address: str) -> list[EmailMessage]:
        """What the primary received for ``address``, in order."""
        return [_parse(m) for m in list(self.primary.messages) if address in m.recipients]

    def in_standby(self, address: str) -> list[str]:
        """The subjects in ``address``'s standby INBOX."""
        with IMAPClient(self.store.imap[0], port=self.store.imap[1], ssl=False) as client:
            client.plain_login(
                self.store.master_user, self.store.master_password, authorization_identity=address
            )
            client.select_folder("INBOX", readonly=True)
            found = client.search("ALL")
            if not found:
                return []
            fetched = client.fetch(found, ["BODY.PEEK[HEADER]"])
        return [str(_parse_bytes(item[b"BODY[HEADER]"])["Subject"]) for item in fetched.values()]


def _parse(received: Received) -> EmailMessage:
    return _parse_bytes(received.content)


def _parse_bytes(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def _subjects(messages: list[EmailMessage]) -> list[str]:
    return [str(m["Subject"]) for m in messages]


def _setup(engine: Engine, primary_port: int, run: str) -> None:
    """acme.test in Spanish with the emergency password, checked every second; Rita its
    admin (a hostile display name), Pablo covered (a hostile one too), Mallory covered
    with an alternate address that carries a header."""
    people(engine, primary_port)
    with transaction(session_factory(engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        acme.language = "es"
        acme.emergency_password_enabled = True
        acme.probe_interval_seconds = 1
        acme.failures_before_failover = 2
        acme.recover_after = 2
        for local, name, alternate in (
            ("rita", "Rita\r\nBcc: evil@attacker.test", "rita@home.test"),
            ("pablo", "Pablo Pérez =?utf-8?q?=0D=0AX-Injected:_yes?=", "pablo@casa.test"),
            ("mallory", "Mallory", "mallory@casa.test>\r\nBcc: evil@attacker.test"),
        ):
            person = Person(
                domain_id=acme.id,
                source="corp",
                external_id=f"{local}-{run}",
                dn=f"uid={local}-{run}",
                mail=f"{local}-{run}@acme.test",
                display_name=name,
                alternate_contact=alternate,
            )
            session.add(person)
            session.flush()
            if local == "rita":
                session.add(
                    StaffRole(
                        person_id=person.id, role=ROLE_ADMIN, domain_id=acme.id, origin="local"
                    )
                )


def _config(database_url: str, relay_port: int, store: DovecotServer) -> Config:
    return Config(
        database_url=database_url,
        gateway={
            "listen": f"127.0.0.1:{free_port()}",
            "hostname": "gateway.test",
            "allow_local_primary": True,
            "delivery_workers": 2,
        },
        outbound={"relay": f"127.0.0.1:{relay_port}", "operator_address": OPERATOR},
        standby={
            "lmtp": f"{store.lmtp[0]}:{store.lmtp[1]}",
            "users_file": str(store.users_file),
        },
        portal={"base_url": "https://continuity.example/"},
    )


@pytest.fixture
def told(
    engine: Engine,
    database_url: str,
    standby_store: DovecotServer,  # noqa: F811
) -> Iterator[Told]:
    """Two gateways (each with its monitor and runners) on one roster."""
    primary, relay = Primary().start(), Primary().start()
    run = secrets.token_hex(4)
    _setup(engine, primary.port, run)
    gateways = [
        Gateway(_config(database_url, relay.port, standby_store), idle=0.05) for _ in range(2)
    ]
    for gateway in gateways:
        gateway.start()
    try:
        yield Told(engine, primary, relay, standby_store, run, gateways)
    finally:
        for gateway in gateways:
            gateway.stop()
            gateway.engine.dispose()
        primary.stop()
        relay.stop()


def _no_injected_headers(messages: list[EmailMessage]) -> None:
    for message in messages:
        assert {name.lower() for name in message} <= HEADERS, message.keys()
        assert len(message["To"].addresses) == 1
        assert "attacker" not in message["To"].addresses[0].addr_spec


def test_an_outage_is_told_to_admins_operator_and_covered_people_once(told: Told) -> None:
    """The primary stops and the event starts by itself: Rita (admin) finds the Spanish
    start notice in her standby mailbox at once, her alternate address and the operator
    get it through the relay, Pablo gets his in Spanish with the webmail's address and
    his emergency password; the primary returns: Rita's notices reach it after the
    hand-back, and her alternate address and the operator have the three notices, each
    once, from two gateways. No hostile name or address adds a header or a recipient."""
    started_subject = "Evento de Continuity iniciado: acme.test"
    told.primary.stop()
    told.wait(lambda: len(told.events()) == 1, "the event starts by itself")
    told.wait(
        lambda: started_subject in told.in_standby(told.admin),
        "the start notice in the admin's standby mailbox",
    )
    assert told.at_primary(told.admin) == []
    told.wait(lambda: bool(told.relayed("pablo@casa.test")), "Pablo's notice through the relay")
    told.wait(lambda: bool(told.relayed(OPERATOR)), "the operator's notice through the relay")
    told.wait(
        lambda: bool(told.relayed("rita@home.test")), "Rita's notice at her alternate address"
    )

    (pablo,) = told.relayed("pablo@casa.test")
    assert str(pablo["Subject"]).startswith("Su correo de acme.test")
    words = _text(pablo)
    assert WEBMAIL in words
    assert f"pablo-{told.run}@acme.test" in words and "contraseña de emergencia" in words
    assert "se guarda" in words
    assert pablo["Auto-Submitted"] == "auto-generated"
    assert pablo["From"].addresses[0].addr_spec == "continuity@gateway.test"
    assert pablo["To"].addresses[0].addr_spec == "pablo@casa.test"
    assert "Pablo Pérez" in str(pablo["To"])
    assert _subjects(told.relayed(OPERATOR)) == ["Continuity event started: acme.test"]
    assert WEBMAIL in _text(told.relayed("rita@home.test")[0])

    told.primary.start()
    told.wait(lambda: told.events()[0].ended_at is not None, "the event ends", 120)
    told.wait(lambda: len(told.relayed(OPERATOR)) == 3, "the operator's three notices")
    told.wait(lambda: len(told.at_primary(told.admin)) == 3, "Rita's three notices at the primary")
    time.sleep(1.5)  # long enough for a second gateway to tell anything twice
    # Each once; the order they arrive in is the order of several gateways' runners,
    # which nothing promises (it made this test fail now and then).
    assert sorted(_subjects(told.relayed(OPERATOR))) == sorted(
        [
            "Continuity event started: acme.test",
            "Continuity event: hand-back started for acme.test",
            "Continuity event ended: acme.test",
        ]
    )
    spanish = sorted(
        [
            started_subject,
            "Evento de Continuity: empieza la devolución del correo de acme.test",
            "Evento de Continuity terminado: acme.test",
        ]
    )
    assert sorted(_subjects(told.relayed("rita@home.test"))) == spanish
    assert sorted(_subjects(told.at_primary(told.admin))) == spanish
    assert Counter(told.in_standby(told.admin))[started_subject] == 1
    assert len(told.relayed("pablo@casa.test")) == 1
    (ended,) = [_text(m) for m in told.relayed(OPERATOR) if "ended" in str(m["Subject"])]
    assert "Messages held:" in ended and "Ended by: monitor" in ended

    everything = [_parse(m) for m in told.relay.messages + told.primary.messages]
    _no_injected_headers(everything)
    recipients = {r for m in told.relay.messages + told.primary.messages for r in m.recipients}
    assert not any("attacker" in r or "mallory" in r for r in recipients)
    assert "Rita" in str(told.relayed("rita@home.test")[0]["To"])


def test_events_started_and_ended_by_hand_are_told_once(told: Told) -> None:
    """An admin starts and ends an event by hand (automatic failover off, nothing of the
    gateways' doing): the monitor notices both changes, the operator gets the start and
    the end once each, the admin's start notice is held and handed back."""
    with transaction(session_factory(told.engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        acme.failover_automatic = False
        domain_id = acme.id
    with writing(told.engine) as connection:
        event_id = start_event(
            connection, domain_id, reason="planned maintenance", actor=told.admin
        ).event_id
    told.wait(lambda: bool(told.relayed(OPERATOR)), "the start notice")
    assert f"Started by: {told.admin}" in _text(told.relayed(OPERATOR)[0])
    assert "planned maintenance" in _text(told.relayed(OPERATOR)[0])
    with writing(told.engine) as connection:
        end_event(connection, event_id, actor=told.admin)
    told.wait(lambda: len(told.relayed(OPERATOR)) == 2, "the end notice")
    told.wait(lambda: len(told.at_primary(told.admin)) == 2, "the admin's notices at the primary")
    time.sleep(1.5)
    assert _subjects(told.relayed(OPERATOR)) == [
        "Continuity event started: acme.test",
        "Continuity event ended: acme.test",
    ]
    assert len(told.relayed("rita@home.test")) == 2
    assert len(told.relayed("pablo@casa.test")) == 1


def test_gateways_telling_at_the_same_moment_tell_once(engine: Engine, database_url: str) -> None:
    """Six threads, each with an engine of its own (gateways on several hosts), tell the
    same new event at once: its notices are queued once."""
    run = secrets.token_hex(4)
    _setup(engine, free_port(), run)
    with transaction(session_factory(engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        domain_id = acme.id
    with writing(engine) as connection:
        start_event(connection, domain_id, reason="test", actor="monitor")
    settings = event_notices.NoticeSettings(
        sender="continuity@gateway.test",
        hostname="gateway.test",
        webmail=WEBMAIL,
        operator=OPERATOR,
    )
    counts: list[int] = []
    gate = threading.Barrier(6)

    def gateway() -> None:
        own = make_engine(database_url)
        try:
            gate.wait()
            counts.append(event_notices.tell(own, settings))
        finally:
            own.dispose()

    threads = [threading.Thread(target=gateway) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Rita at her own address and her alternate one, the operator, Pablo.
    assert sorted(counts) == [0, 0, 0, 0, 0, 4]
    with Session(engine) as session:
        addresses = session.scalars(select(MailRecipient.address).order_by(MailRecipient.id)).all()
        assert session.scalar(select(func.count(MailMessage.queue_id))) == 4
    assert addresses == [f"rita-{run}@acme.test", "rita@home.test", OPERATOR, "pablo@casa.test"]
    assert event_notices.tell(engine, settings) == 0


def _settings() -> event_notices.NoticeSettings:
    return event_notices.NoticeSettings(
        sender="continuity@gateway.test", hostname="gateway.test", webmail=WEBMAIL
    )


def _queued(engine: Engine) -> list[tuple[str, str]]:
    """Each queued notice's recipient and subject, in order."""
    with Session(engine) as session:
        rows = session.execute(
            select(MailRecipient.address, MailMessage.body)
            .join(MailMessage, MailMessage.queue_id == MailRecipient.queue_id)
            .order_by(MailRecipient.id)
        ).all()
    return [(address, str(_parse_bytes(body)["Subject"])) for address, body in rows]


def test_global_admins_hear_of_a_domain_without_admins_of_its_own(engine: Engine) -> None:
    """beta.test has no admin: its events go to the global admins (a local account, at
    its own address through the relay); acme.test has Rita, and the global admins are
    not told of its events."""
    run = secrets.token_hex(4)
    _setup(engine, free_port(), run)
    with transaction(session_factory(engine), writing=True) as session:
        add_local_staff(session, "root@ops.test", "a long password 1", ROLE_GLOBAL_ADMIN, None, "t")
        ids = {name: id_ for name, id_ in session.execute(select(Domain.name, Domain.id))}
    with writing(engine) as connection:
        start_event(connection, ids["beta.test"], reason="down", actor="monitor")
    event_notices.tell(engine, _settings())
    assert _queued(engine) == [("root@ops.test", "Continuity event started: beta.test")]
    with writing(engine) as connection:
        start_event(connection, ids["acme.test"], reason="down", actor="monitor")
    event_notices.tell(engine, _settings())
    told = [address for address, _ in _queued(engine)[1:]]
    assert "root@ops.test" not in told and f"rita-{run}@acme.test" in told


def test_a_recovery_after_the_primary_failed_again_is_told_again(engine: Engine) -> None:
    """The hand-back starts, the primary fails again (the event reopens), then it
    starts again: the admin hears of each hand-back, and of nothing twice."""
    run = secrets.token_hex(4)
    _setup(engine, free_port(), run)
    with transaction(session_factory(engine), writing=True) as session:
        acme = session.scalars(select(Domain).where(Domain.name == "acme.test")).one()
        acme.failures_before_failover = 1
        acme.recover_after = 1
        domain_id = acme.id
    admin = f"rita-{run}@acme.test"
    for ok in (False, True, False, True):
        with writing(engine) as connection:
            record_check(connection, domain_id, ok, "checked")
        event_notices.tell(engine, _settings())
        event_notices.tell(engine, _settings())
    assert [subject for address, subject in _queued(engine) if address == admin] == [
        "Evento de Continuity iniciado: acme.test",
        "Evento de Continuity: empieza la devolución del correo de acme.test",
        "Evento de Continuity: empieza la devolución del correo de acme.test",
    ]


def test_events_of_before_the_upgrade_are_not_told(tmp_path: Path) -> None:
    """Migration 0009 counts the events that exist as told: nobody gets notices of an
    outage that is long over when the gateway first runs the new code."""
    engine = make_engine(f"sqlite:///{tmp_path / 'roster.db'}", create=True)
    try:
        upgrade(engine, "0008")
        domain = Table("domain", MetaData(), autoload_with=engine)
        values: dict[str, object] = {"name": "old.test"}
        for column in domain.columns:
            if column.name in values or column.nullable or column.server_default is not None:
                continue
            if column.primary_key:
                continue
            kind = column.type.python_type
            values[column.name] = {bool: False, int: 0, str: "x"}.get(kind, utcnow())
        with engine.begin() as connection:
            domain_id = connection.execute(insert(domain).values(**values)).inserted_primary_key[0]
            connection.execute(
                text(
                    "INSERT INTO continuity_event (domain_id, started_at, ended_at, reason,"
                    " recovery_started_at) VALUES (:d, :t, :t, 'old', :t)"
                ),
                {"d": domain_id, "t": utcnow()},
            )
        upgrade(engine)
        told = event_notices.NoticeSettings(
            sender="continuity@gateway.test", hostname="gateway.test", operator=OPERATOR
        )
        assert event_notices.tell(engine, told) == 0
    finally:
        engine.dispose()
