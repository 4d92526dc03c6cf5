"""The standby store against a real Dovecot run from deploy/dovecot/dovecot.conf: copies
over LMTP land in the person's INBOX and are read back over IMAP as the portal's master
user; only the covered people of the users file exist; a store that is down gives
temporary failures and the same client recovers when it is back."""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.standby import MAX_RECIPIENTS, CopyStatus, StandbyStore
from gateway.standby_users import refresh_users_file, users_file_content, write_users_file
from roster.db import session_factory, transaction
from roster.domains import add_domain
from roster.models import CoverageEntry, Domain, Person, utcnow
from roster.standby import covered_addresses
from tests.servers.dovecot import DovecotServer
from tests.standby_fixtures import next_second, standby_store  # noqa: F401 - the fixture, by name

SENDER = "someone@sender.test"


def cover(server: DovecotServer, addresses: list[str]) -> None:
    """Make ``addresses`` the covered people Dovecot knows, as the gateway does."""
    write_users_file(server.users_file, addresses)
    next_second()


def fresh(label: str, domain: str = "acme.test") -> str:
    """An address no other test uses."""
    return f"{label}-{secrets.token_hex(4)}@{domain}"


def message(subject: str, body: str = "Hello.\r\n") -> bytes:
    """A small message with a Message-ID of its own."""
    return (
        f"From: {SENDER}\r\nTo: people@acme.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@sender.test>\r\n\r\n{body}"
    ).encode()


def imap(server: DovecotServer) -> IMAPClient:
    """An IMAP connection to the store, not signed in."""
    return IMAPClient(server.imap[0], port=server.imap[1], ssl=False, timeout=20)


def inbox(server: DovecotServer, address: str) -> list[bytes]:
    """Every message of ``address``'s INBOX, read as the portal reads it: the master
    user with SASL PLAIN, the person's address as the authorization identity."""
    with imap(server) as client:
        client.plain_login(
            server.master_user, server.master_password, authorization_identity=address
        )
        if client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0:
            return []
        fetched = client.fetch(client.search("ALL"), ["RFC822"])
        return [fetched[uid][b"RFC822"] for uid in sorted(fetched)]


@pytest.fixture
def store(standby_store: DovecotServer) -> Iterator[StandbyStore]:  # noqa: F811
    """A client of the session's Dovecot with 4 pooled connections."""
    client = StandbyStore(*standby_store.lmtp, connections=4, timeout=10)
    yield client
    client.close()


@pytest.fixture(params=["pipelined", "one command at a time"])
def lmtp_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store's client sends MAIL, RCPT and DATA together (Dovecot offers PIPELINING),
    or one at a time, as to a store that does not."""
    if request.param != "pipelined":
        offered = smtplib.LMTP.has_extn
        monkeypatch.setattr(
            smtplib.LMTP,
            "has_extn",
            lambda self, name: name.lower() != "pipelining" and offered(self, name),
        )
    return str(request.param)


def test_a_copy_lands_in_the_persons_inbox_as_sent(
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
    lmtp_mode: str,
) -> None:
    alice, bob = fresh("alice"), fresh("bob")
    cover(standby_store, [alice, bob])
    # Lines starting with a dot survive the transfer, and so does a last line with no
    # line break (it gets one).
    sent = message("Quarterly figures", ".hidden line\r\n..two dots\r\n.\r\nlast line")

    results = store.deliver(sent, [alice, bob], sender=SENDER)

    assert {address: result.status for address, result in results.items()} == {
        alice: CopyStatus.COPIED,
        bob: CopyStatus.COPIED,
    }
    assert all(result.code == 250 for result in results.values())
    for address in (alice, bob):
        (stored,) = inbox(standby_store, address)
        assert stored.endswith(sent + b"\r\n")
        assert message_from_bytes(stored)["Return-Path"] == f"<{SENDER}>"
        assert message_from_bytes(stored)["Subject"] == "Quarterly figures"


def test_an_address_not_in_the_users_file_is_refused_for_good_and_gets_no_mailbox(
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
    lmtp_mode: str,
) -> None:
    covered, stranger = fresh("covered"), fresh("stranger")
    cover(standby_store, [covered])

    results = store.deliver(message("Hello"), [stranger, covered], sender=SENDER)

    assert results[covered].copied
    assert results[stranger].permanent
    assert results[stranger].code == 550
    assert "5.1.1" in results[stranger].reply
    assert not standby_store.maildir(stranger).exists()
    assert len(inbox(standby_store, covered)) == 1
    # A plus address is another address, not the person's.
    local, _, domain = covered.partition("@")
    assert store.deliver(message("Plus"), [f"{local}+news@{domain}"])[
        f"{local}+news@{domain}"
    ].permanent


def test_a_mailbox_the_store_cannot_write_fails_for_now_and_for_that_person_only(
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
    lmtp_mode: str,
) -> None:
    tag = secrets.token_hex(4)
    fine, stuck = f"fine-{tag}@acme.test", f"stuck@blocked-{tag}.test"
    cover(standby_store, [fine, stuck])
    # The domain's directory belongs to root and is read-only: Dovecot cannot make
    # the mailbox and answers 4xx after DATA for that recipient alone.
    blocked = standby_store.mail_dir / f"blocked-{tag}.test"
    blocked.mkdir(mode=0o500)

    results = store.deliver(message("Mixed"), [fine, stuck], sender=SENDER)

    assert results[fine].copied
    assert results[stuck].temporary
    assert results[stuck].code is not None and 400 <= results[stuck].code < 500
    # Repaired: trying again copies it, and the other person got it once.
    mail = pwd.getpwnam("mail")
    os.chown(blocked, mail.pw_uid, mail.pw_gid)
    blocked.chmod(0o700)
    assert store.deliver(message("Mixed"), [stuck], sender=SENDER)[stuck].copied
    assert len(inbox(standby_store, stuck)) == 1
    assert len(inbox(standby_store, fine)) == 1


def test_nothing_unchecked_reaches_the_lmtp_command_line(
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
) -> None:
    victim = fresh("victim")
    cover(standby_store, [victim])
    hostile = [
        f"x@acme.test>\r\nRCPT TO:<{victim}",
        f"x@acme.test\nRCPT TO:<{victim}>",
        "x\x00@acme.test",
        f"<{victim}>",
        f"{victim} NOTIFY=NEVER",
        "../../etc@acme.test",
        '"quoted local"@acme.test',
        "",
    ]

    results = store.deliver(message("Smuggled"), hostile, sender=f"a@b.test>\r\nRCPT TO:<{victim}")

    for address in hostile:
        assert results[address].permanent
        assert results[address].code is None
    assert not standby_store.maildir(victim).exists()
    # A sender that is no plain address travels as the null sender; the copy is made.
    result = store.deliver(message("Odd sender"), [victim], sender="a b@c>\r\nDATA")[victim]
    assert result.copied
    (stored,) = inbox(standby_store, victim)
    assert message_from_bytes(stored)["Return-Path"] == "<>"


def test_a_store_that_is_down_is_a_temporary_failure_and_the_same_client_recovers(
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
) -> None:
    person = fresh("patient")
    cover(standby_store, [person])
    assert store.deliver(message("Before"), [person])[person].copied  # a pooled connection

    standby_store.stop()
    try:
        down = store.deliver(message("During"), [person])[person]
        assert down.temporary
        assert down.code is None
        assert "unreachable" in down.reply
    finally:
        standby_store.start()

    # The pooled connection died with the old Dovecot: a new one is made without a word.
    after = store.deliver(message("After"), [person])[person]
    assert after.copied, after.reply
    subjects = [message_from_bytes(m)["Subject"] for m in inbox(standby_store, person)]
    assert subjects == ["Before", "After"]


def _lmtp_processes(server: DovecotServer) -> list[int]:
    """The pids of the LMTP processes of ``server``'s Dovecot (its process group)."""
    group = server.master_pid
    assert group is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == group and title.endswith(b"/lmtp\0"):
            found.append(int(entry.name))
    return found


def test_a_pooled_connection_that_died_is_replaced_without_a_failure(
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    person = fresh("steady")
    cover(standby_store, [person])
    store = StandbyStore(*standby_store.lmtp, connections=1, timeout=10)
    try:
        assert store.deliver(message("First"), [person])[person].copied
        killed = _lmtp_processes(standby_store)
        assert killed
        for pid in killed:  # the processes serving the pooled connection, and no others
            os.kill(pid, signal.SIGKILL)

        result = store.deliver(message("Second"), [person])[person]
    finally:
        store.close()

    assert result.copied, result.reply
    subjects = [message_from_bytes(m)["Subject"] for m in inbox(standby_store, person)]
    assert subjects == ["First", "Second"]


def test_a_message_to_more_mailboxes_than_one_transaction_takes_reaches_all(
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
) -> None:
    people = [fresh(f"team{n}") for n in range(MAX_RECIPIENTS + 7)]
    cover(standby_store, people)

    results = store.deliver(message("To everyone"), people + people[:3], sender=SENDER)

    assert sorted(results) == sorted(people)
    assert all(result.copied for result in results.values())
    assert all(len(list((standby_store.maildir(p) / "new").iterdir())) == 1 for p in people)


def test_copies_from_eight_threads_all_land(
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
) -> None:
    people = [fresh("busy"), fresh("busy")]
    cover(standby_store, people)
    failures: list[str] = []

    def worker(number: int) -> None:
        for index in range(25):
            results = store.deliver(message(f"t{number}-m{index}"), people, sender=SENDER)
            failures.extend(r.reply for r in results.values() if not r.copied)

    # Eight threads share four connections: each waits its turn for one.
    threads = [threading.Thread(target=worker, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert failures == []
    expected = {f"t{n}-m{i}" for n in range(8) for i in range(25)}
    for address in people:
        subjects = [message_from_bytes(m)["Subject"] for m in inbox(standby_store, address)]
        assert len(subjects) == 200
        assert set(subjects) == expected


def test_the_master_user_signs_in_only_as_covered_people(
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
) -> None:
    leaving, stranger = fresh("leaving"), fresh("stranger")
    cover(standby_store, [leaving])
    assert store.deliver(message("Kept"), [leaving])[leaving].copied
    assert len(inbox(standby_store, leaving)) == 1

    started = time.monotonic()
    for nobody in (stranger, f"{leaving}*{standby_store.master_user}", stranger.upper()):
        with imap(standby_store) as client, pytest.raises(LoginError):
            client.plain_login(
                standby_store.master_user,
                standby_store.master_password,
                authorization_identity=nobody,
            )
    assert not standby_store.maildir(stranger).exists()

    # The refusals were answered at once and do not slow the portal's next sign-in
    # (Dovecot delays every sign-in from an address after failed ones, up to 15 s).
    assert len(inbox(standby_store, leaving)) == 1
    assert time.monotonic() - started < 1.0

    # No longer covered: out of the users file, no sign-in, the mail still on disk.
    cover(standby_store, [])
    with imap(standby_store) as client, pytest.raises(LoginError):
        client.plain_login(
            standby_store.master_user,
            standby_store.master_password,
            authorization_identity=leaving,
        )
    assert any((standby_store.maildir(leaving) / "new").iterdir())
    # Covered again: the same mail is there.
    cover(standby_store, [leaving])
    assert len(inbox(standby_store, leaving)) == 1


def test_nobody_signs_in_with_a_password_of_their_own() -> None:
    # A Dovecot of its own: after failed sign-ins Dovecot delays every sign-in from the
    # same address for a while, which would slow the other tests. The attempts run side
    # by side so that each meets only the fixed delay of a failure.
    with DovecotServer() as server:
        person = fresh("person")
        cover(server, [person])
        master, secret = server.master_user, server.master_password
        attempts: list[tuple[str, str, str | None]] = [
            (person, "", None),
            (person, "guess", None),
            (person, secret, None),  # the master's secret is nobody else's password
            (master, "not the master password", person),
            (master, secret, None),  # the master user as itself
        ]

        def sign_in(attempt: tuple[str, str, str | None]) -> bool:
            user, password, authorization = attempt
            with imap(server) as client:
                try:
                    client.plain_login(user, password, authorization_identity=authorization)
                except LoginError:
                    return False
                return True

        with ThreadPoolExecutor(len(attempts)) as pool:
            assert list(pool.map(sign_in, attempts)) == [False] * len(attempts)

        # Off loopback, no sign-in without TLS: the master secret never crosses a
        # network in the clear.
        with socket.create_connection(server.imap, source_address=("127.0.0.2", 0)) as raw:
            reader = raw.makefile("rb")
            reader.readline()
            raw.sendall(b"a CAPABILITY\r\n")
            capabilities = reader.readline()
            assert b"LOGINDISABLED" in capabilities
            assert b"AUTH=PLAIN" not in capabilities


def test_the_users_file_is_replaced_whole_and_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "continuity-users"

    assert write_users_file(path, ["b@acme.test", "A@acme.test", "b@acme.test"])
    assert path.read_bytes() == b"a@acme.test\nb@acme.test\n"
    assert path.stat().st_mode & 0o777 == 0o640
    first = path.stat()

    # The same people in another order and case: nothing written.
    assert not write_users_file(path, ["a@acme.test", "B@acme.test"])
    assert path.stat().st_ino == first.st_ino
    assert path.stat().st_mtime_ns == first.st_mtime_ns

    # A change is a new file renamed over the old one (readers see old or new, whole).
    assert write_users_file(path, ["a@acme.test", "c@acme.test", "x/y@acme.test", "#z@acme.test"])
    assert path.stat().st_ino != first.st_ino
    assert path.read_bytes() == b"a@acme.test\nc@acme.test\n"
    assert sorted(os.listdir(tmp_path)) == ["continuity-users"]

    content, left_out = users_file_content(["ok@acme.test", "bad:colon@acme.test", "\x00@x.test"])
    assert content == b"ok@acme.test\n"
    assert left_out == ["bad:colon@acme.test", "\x00@x.test"]


def test_a_reader_of_the_users_file_sees_one_whole_list_or_the_other(tmp_path: Path) -> None:
    path = tmp_path / "continuity-users"
    lists = [[f"a{n}@acme.test" for n in range(1000)], [f"b{n}@acme.test" for n in range(1500)]]
    wholes = {users_file_content(addresses)[0] for addresses in lists}
    write_users_file(path, lists[0])
    seen: set[bytes] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for turn in range(40):
            assert write_users_file(path, lists[(turn + 1) % 2])
    finally:
        done.set()
        reader.join()
    assert seen
    assert seen <= wholes


def test_a_same_size_rewrite_within_one_second_reaches_dovecot(
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
) -> None:
    """Bug: Dovecot rereads a passwd-file only when its size or its modification time in
    whole seconds changes, so replacing bob@ by eve@ (same length) within the second
    Dovecot had read bob's list went unnoticed: eve got 550 and bob still got copies."""
    tag = secrets.token_hex(4)
    bob, eve = f"bob-{tag}@acme.test", f"eve-{tag}@acme.test"
    for _ in range(2):
        next_second()
        write_users_file(standby_store.users_file, [bob])
        assert store.deliver(message("Read"), [bob])[bob].copied  # read within the second
        assert write_users_file(standby_store.users_file, [eve])
        next_second()
        results = store.deliver(message("Swap"), [bob, eve])
        assert results[eve].copied, results[eve].reply
        assert results[bob].permanent


# ---------------------------------------------------------------------------------------
# The roster's side: who is in the users file
# ---------------------------------------------------------------------------------------
def _person(session: Session, domain: Domain, local: str, **state: bool) -> None:
    mail = f"{local}@{domain.name}"
    row = Person(
        domain_id=domain.id,
        source="corp",
        external_id=mail,
        dn=f"uid={local},ou={domain.name}",
        mail=mail,
        disabled=state.get("disabled", False),
        removed_at=utcnow() if state.get("removed") else None,
    )
    session.add(row)
    session.flush()
    if state.get("listed"):
        session.add(
            CoverageEntry(
                domain_id=domain.id, person_id=row.id, added_by="setup", added_at=utcnow()
            )
        )
        session.flush()


def _domain(session: Session, name: str, *, active: bool, mode: str) -> Domain:
    domain = add_domain(session, name, "setup")
    domain.continuity_active, domain.coverage_mode = active, mode
    session.flush()
    return domain


def test_the_users_file_holds_the_covered_people_of_active_domains(
    engine: Engine,
    standby_store: DovecotServer,  # noqa: F811
    store: StandbyStore,
) -> None:
    factory: sessionmaker[Session] = session_factory(engine)
    tag = secrets.token_hex(3)
    with transaction(factory) as session:
        everyone = _domain(session, f"all-{tag}.test", active=True, mode="all")
        _person(session, everyone, "ann")
        _person(session, everyone, "dis", disabled=True)
        _person(session, everyone, "gone", removed=True)
        selected = _domain(session, f"sel-{tag}.test", active=True, mode="selected")
        _person(session, selected, "listed", listed=True)
        _person(session, selected, "unlisted")
        off = _domain(session, f"off-{tag}.test", active=False, mode="all")
        _person(session, off, "idle")

    with transaction(factory) as session:
        assert covered_addresses(session) == [f"ann@all-{tag}.test", f"listed@sel-{tag}.test"]
        assert refresh_users_file(session, standby_store.users_file)
        assert not refresh_users_file(session, standby_store.users_file)
    next_second()

    for local, domain, covered in [
        ("ann", "all", True),
        ("dis", "all", False),
        ("gone", "all", False),
        ("listed", "sel", True),
        ("unlisted", "sel", False),
        ("idle", "off", False),
    ]:
        address = f"{local}@{domain}-{tag}.test"
        result = store.deliver(message("Roster"), [address])[address]
        assert result.copied is covered, (address, result.reply)
        assert result.permanent is not covered
