"""The webmail benchmark: the message list and a message opened, through the real app,
next to the raw IMAP floor measured in the same run.

A real Dovecot (deploy/dovecot/dovecot.conf, as the tests run it) holds a generated
INBOX of 10,000 and one of 50,000 messages (written straight into the Maildirs, then
indexed by Dovecot once before measuring). The app is the real portal (create_app on a
SQLite roster), called through Flask's test client by a signed-in person.

- **list, cold**: the first view of the inbox in a session (the portal's pool holds no
  connection: it connects, signs in, lists the folders, asks the other folders'
  counts, selects the inbox, asks its count and fetches its newest 50; the portal makes
  the page around what is still to come while the store works). The floor: a client
  that sends the same IMAP commands in the same order over a socket and reads the
  replies without parsing them.
- **list, warm**: the same view again after a new message arrived.
- **open**: a message not opened before (the reading page), at the largest size.

Targets (issue #11): cold list within 1.2x of the floor (median, both sizes); warm list
under 72 ms at 50,000 (Roundcube 1.6 with its caches on, on this machine); open under
60 ms median at 50,000.

    scripts/bench webmail [--sizes 10000,50000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pwd
import random
import smtplib
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.standby_users import write_users_file
from tests.servers.dovecot import DovecotServer

TARGET_COLD_RATIO = 1.2
TARGET_WARM_MS = 72.0
TARGET_OPEN_MS = 60.0
LIST_ITEMS = (
    "(UID FLAGS INTERNALDATE RFC822.SIZE"
    " BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE CONTENT-TYPE)])"
)
SENDERS = ["Ana García <ana@sender.test>", "Bo Berg <bo@other.test>", "carla@third.test"]


def message(number: int) -> bytes:
    """A realistic message of 2-8 KB, with an attachment every tenth."""
    body = (f"Line {number} of a message about the quarterly figures.\r\n" * 60)[
        : 2000 + (number * 37) % 6000
    ]
    sender = SENDERS[number % len(SENDERS)]
    headers = (
        f"From: {sender}\r\nTo: person@acme.test\r\nSubject: Report {number:06d}\r\n"
        f"Date: Mon, {1 + number % 28:02d} Nov 2026"
        f" {number % 24:02d}:{number % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{number}.bench@sender.test>\r\nMIME-Version: 1.0\r\n"
    )
    if number % 10:
        return (headers + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode()
    return (
        headers + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n--b\r\n"
        'Content-Type: application/pdf; name="r.pdf"\r\nContent-Disposition: attachment;'
        ' filename="r.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.encodebytes(os.urandom(600)).decode().replace("\n", "\r\n")
        + "--b--\r\n"
    ).encode()


def fill_maildir(server: DovecotServer, address: str, count: int) -> None:
    """``count`` messages straight into the person's Maildir (as the "mail" user)."""
    mail = pwd.getpwnam("mail")
    maildir = server.maildir(address)
    for name in ("cur", "new", "tmp"):
        (maildir / name).mkdir(parents=True, exist_ok=True)
    start = int(time.time()) - count
    for number in range(count):
        path = maildir / "cur" / f"{start + number}.M{number}P1.bench:2,{'S' if number % 3 else ''}"
        path.write_bytes(message(number))
    for root, dirs, files in os.walk(server.mail_dir):
        os.chown(root, mail.pw_uid, mail.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), mail.pw_uid, mail.pw_gid)


class RawClient:
    """An IMAP client that sends commands and reads the replies up to their tagged
    line, without parsing them: the floor. It sends what the portal's pool sends to
    open a connection (CAPABILITY, AUTHENTICATE PLAIN with its continuation)."""

    def __init__(self, server: DovecotServer, address: str) -> None:
        self.sock = socket.create_connection(server.imap, timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # the greeting
        self.tag = 0
        self.command("CAPABILITY")
        token = base64.b64encode(
            f"{address}\0{server.master_user}\0{server.master_password}".encode()
        )
        self.tag += 1
        tag = f"r{self.tag}".encode()
        self.sock.sendall(tag + b" AUTHENTICATE PLAIN\r\n")
        self.file.readline()  # "+ "
        self.sock.sendall(token + b"\r\n")
        self.read_until(tag)

    def read_until(self, tag: bytes) -> bytes:
        data = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("the server closed the connection")
            data.append(line)
            if line.startswith(tag + b" "):
                return b"".join(data)

    def command(self, text: str) -> bytes:
        self.tag += 1
        tag = f"r{self.tag}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        return self.read_until(tag)

    def close(self) -> None:
        self.command("LOGOUT")
        self.sock.close()


def raw_list_page(server: DovecotServer, address: str) -> float:
    """The cold list page's IMAP commands, raw and in the portal's order; seconds."""
    began = time.perf_counter()
    client = RawClient(server, address)
    client.command('LIST "" "*"')
    for name in ("Sent", "Drafts", "Trash"):
        client.command(f'STATUS "{name}" (MESSAGES UNSEEN)')
    selected = client.command('SELECT "INBOX"')
    exists = int(selected.split(b" EXISTS")[0].rsplit(b"* ", 1)[1])
    client.command('STATUS "INBOX" (MESSAGES UNSEEN)')
    client.command(f"FETCH {max(1, exists - 49)}:{exists} {LIST_ITEMS}")
    elapsed = time.perf_counter() - began
    client.close()
    return elapsed


def portal(workdir: Path, server: DovecotServer, addresses: list[str]) -> Any:
    """The real portal on a SQLite roster with acme.test and the bench people covered;
    returns (app, {address: signed-in test client})."""
    from sqlalchemy.orm import Session

    from portal import create_app
    from roster.config import load_config
    from roster.db import make_engine, upgrade
    from roster.domains import add_domain
    from roster.identity import open_session
    from roster.models import Person

    url = f"sqlite:///{workdir / 'roster.db'}"
    engine = make_engine(url, create=True)
    upgrade(engine)
    config = workdir / "continuity.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n\n[portal]\nsecret_key = "{"k" * 40}"\n'
        "secure_cookies = false\n\n[standby]\n"
        f'imap = "{server.imap[0]}:{server.imap[1]}"\nmaster_user = "{server.master_user}"\n'
        f'master_password_file = "{server.master_password_file}"\n',
        encoding="utf-8",
    )
    clients = {}
    app = create_app(config=load_config(config, environ={}))
    with Session(engine) as session, session.begin():
        acme = add_domain(session, "acme.test", "bench")
        acme.continuity_active = True
        session.flush()
        people = {}
        for address in addresses:
            local = address.split("@")[0]
            person = Person(
                domain_id=acme.id,
                source="bench",
                external_id=local,
                dn=f"uid={local}",
                mail=address,
            )
            session.add(person)
            session.flush()
            people[address] = (
                person.id,
                person.session_generation,
                open_session(session, "person", person.id),
            )
    for address, (person_id, generation, sid) in people.items():
        client = app.test_client()
        now = int(time.time())
        with client.session_transaction() as cookie:
            cookie.update(
                _user_id=f"person:{person_id}",
                _fresh=True,
                gen=generation,
                method="directory",
                since=now,
                seen=now,
                sid=sid,
            )
        clients[address] = client
    engine.dispose()
    return app, clients


def timed(call: Callable[[], Any]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]

    report: dict[str, Any] = {"rounds": args.rounds, "sizes": {}}
    ok = True
    with DovecotServer() as server, tempfile.TemporaryDirectory(prefix="webmail-bench-") as tmp:
        addresses = [f"bench{size}@acme.test" for size in sizes]
        write_users_file(server.users_file, addresses)
        time.sleep(1.1)  # Dovecot looks at the users file at most once a second
        for size, address in zip(sizes, addresses, strict=True):
            fill_maildir(server, address, size)
            raw_list_page(server, address)  # Dovecot indexes the new folder once
        from portal.webmail.imap import folder_token

        app, clients = portal(Path(tmp), server, addresses)
        inbox_token = folder_token("INBOX")
        inbox = f"/webmail/f/{inbox_token}"
        for size, address in zip(sizes, addresses, strict=True):
            client = clients[address]

            def forget() -> None:
                """The pool holds no connection (the floor's LOGOUT is not timed either)."""
                pool = app.extensions.get("webmail_pool")
                if pool is not None:
                    pool.close()

            def cold(client: Any = client) -> None:
                answer = client.get(inbox)
                assert answer.status_code == 200, answer.status_code

            forget()
            cold()  # templates compiled, imports done
            floor_runs, cold_runs, warm_runs = [], [], []
            for turn in range(args.rounds):
                first, second = (raw_list_page, None) if turn % 2 else (None, raw_list_page)
                if first:
                    floor_runs.append(first(server, address))
                forget()
                cold_runs.append(timed(cold))
                if second:
                    floor_runs.append(second(server, address))
                with smtplib.LMTP(*server.lmtp, timeout=30) as lmtp:
                    lmtp.sendmail("s@sender.test", [address], message(size + turn))
                warm_runs.append(timed(lambda client=client: client.get(inbox)))
            uids = random.Random(size).sample(range(1, size + 1), args.rounds)
            open_runs = [
                timed(lambda uid=uid, client=client: client.get(f"/webmail/m/{inbox_token}/{uid}"))
                for uid in uids
            ]
            figures = {
                "floor_ms": round(statistics.median(floor_runs) * 1000, 1),
                "list_cold_ms": round(statistics.median(cold_runs) * 1000, 1),
                "list_warm_ms": round(statistics.median(warm_runs) * 1000, 1),
                "open_ms": round(statistics.median(open_runs) * 1000, 1),
            }
            figures["cold_ratio"] = round(figures["list_cold_ms"] / figures["floor_ms"], 2)
            report["sizes"][size] = figures
            ok &= figures["cold_ratio"] <= TARGET_COLD_RATIO
            if size >= 50_000:
                ok &= figures["list_warm_ms"] < TARGET_WARM_MS
                ok &= figures["open_ms"] < TARGET_OPEN_MS
    if args.json:
        print(json.dumps(report))
    else:
        print(f"webmail: medians of {args.rounds} rounds, through the real app (Flask test client)")
        for size, figures in report["sizes"].items():
            print(
                f"  {size:>6} messages: list cold {figures['list_cold_ms']:6.1f} ms vs raw IMAP"
                f" floor {figures['floor_ms']:6.1f} ms = {figures['cold_ratio']:.2f}x"
                f" (target <= {TARGET_COLD_RATIO}); warm {figures['list_warm_ms']:6.1f} ms;"
                f" open {figures['open_ms']:6.1f} ms"
            )
        print(
            f"  targets at 50,000: warm < {TARGET_WARM_MS:.0f} ms, open < {TARGET_OPEN_MS:.0f} ms"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
