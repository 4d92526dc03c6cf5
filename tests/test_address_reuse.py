"""An address that passes from one person to another within the archive's months (a
departed person's address given to a newcomer): the newcomer never reads the previous
holder's standby mail. The webmail stays closed to them, saying why, until retention
has emptied the mailbox of the other's mail (their own copies stay); then it opens,
and Email Live Tracking says the other's copies were removed. Real slapd, sync,
Dovecot, copier, retention and portal."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway import headers
from gateway.copier import Copier, UsersFile
from gateway.retention import run_retention
from gateway.standby import StandbyStore
from roster.models import COPY_DONE, COPY_REMOVED, Person, StandbyCopy
from roster.queue import Incoming, Recipient, new_queue_id, store, writing
from tests.portal_support import Portal, text
from tests.servers.dovecot import DovecotServer
from tests.webmail_support import standby_store, webmail_world  # noqa: F401 - the fixture

INBOX = "SU5CT1g"  # folder_token("INBOX")


def copy_for(engine: Engine, address: str, subject: str, store_lmtp: tuple[str, int]) -> None:
    """A message for ``address``'s holder stored and copied into their standby mailbox,
    as the gateway does."""
    with Session(engine) as session:
        holder = session.scalars(
            select(Person).where(Person.mail == address, Person.removed_at.is_(None))
        ).one()
        domain_id, person_id = holder.domain_id, holder.id
    queue_id = new_queue_id()
    received = headers.received_header(  # the gateway's line, with the queue id
        helo="client.test",
        client_ip="192.0.2.1",
        our_name="gateway.test",
        with_protocol="ESMTP",
        queue_id=queue_id,
        recipient=address,
    )
    body = received + f"Subject: {subject}\r\n\r\nfor {address}\r\n".encode()
    with writing(engine) as connection:
        recipient = Recipient(address, domain_id, True, person_id, address)
        store(connection, [Incoming(queue_id, "x@sender.test", body, [recipient])])
    lmtp = StandbyStore(*store_lmtp, connections=1)
    copier = Copier(engine, lmtp, UsersFile(engine, None), "gw/c0", lease=timedelta(minutes=5))
    try:
        copier.run_once()
    finally:
        lmtp.close()


def statuses(portal: Portal) -> list[str]:
    with Session(portal.engine) as session:
        return list(session.scalars(select(StandbyCopy.status).order_by(StandbyCopy.id)))


def test_a_newcomer_on_a_departed_persons_address_never_reads_their_mail(
    portal: Portal,
    standby_store: DovecotServer,  # noqa: F811
) -> None:
    world = webmail_world(portal, standby_store)
    webmail = next(world)
    try:
        address = webmail.person("ana")
        webmail.person("carl")  # someone who stays
        uid = address.split("@")[0]
        subject = f"for Ana only {secrets.token_hex(4)}"
        copy_for(portal.engine, address, subject, standby_store.lmtp)
        assert statuses(portal) == [COPY_DONE]
        assert any(subject.encode() in m for m in webmail.folder(address, "INBOX"))

        # Ana leaves; Bea gets her address.
        portal.tree.delete(uid)
        portal.sync("--allow-mass-removal")  # one of two people: the guard asks
        portal.add_person(f"{uid}b", mail=address, display_name="Bea")
        portal.sync()
        first = f"Bea first {secrets.token_hex(4)}"
        copy_for(portal.engine, address, first, standby_store.lmtp)  # before the clean-up
        bea = webmail.client(address)
        closed = bea.get("/webmail")
        assert closed.status_code == 403
        assert "belonged to someone else until recently" in text(closed)
        assert bea.get(f"/webmail/f/{INBOX}").status_code == 403

        # The daily clean-up empties it of Ana's mail; Bea's webmail opens with hers.
        report = run_retention(portal.app.config["CONTINUITY"], portal.engine)
        assert report is not None and report.handed_over_emptied == 1
        assert statuses(portal) == [COPY_REMOVED, COPY_DONE]
        opened = bea.get(f"/webmail/f/{INBOX}")
        assert opened.status_code == 200
        assert subject not in text(opened) and first in text(opened)
        assert len(webmail.folder(address, "INBOX")) == 1

        # Her own mail is copied and shown as usual from then on.
        own = f"for Bea {secrets.token_hex(4)}"
        copy_for(portal.engine, address, own, standby_store.lmtp)
        assert own in text(bea.get(f"/webmail/f/{INBOX}"))
    finally:
        for _rest in world:
            pass
