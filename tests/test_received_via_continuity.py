"""Which stored recipients are received via Continuity Service: those of a domain whose
mail is held as they are stored (an open event, not yet handing back), and no others."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from roster.models import ROUTE_RELAY, ContinuityEvent, Domain, MailRecipient, utcnow
from roster.queue import Incoming, Recipient, new_queue_id, store, writing
from tests.test_gateway import people


def test_only_mail_for_a_domain_held_now_is_received_via_continuity(engine: Engine) -> None:
    """Acme's primary is down (an open event): Acme's recipients are marked, Beta's (no
    event) and relayed mail are not, in the same commit. Once Acme's mail is being
    handed back, or the event is over, new mail is not marked."""
    people(engine, 2525)
    with Session(engine) as session:
        acme, beta = (
            session.scalars(select(Domain.id).where(Domain.name == name)).one()
            for name in ("acme.test", "beta.test")
        )
    with Session(engine) as session, session.begin():
        event = ContinuityEvent(domain_id=acme, reason="primary down")
        session.add(event)
        session.flush()
        event_id = event.id

    def commit(label: str) -> dict[str, bool]:
        """Store one message to Ana and Carla and one relayed; each address's mark."""
        messages = [
            Incoming(
                new_queue_id(),
                "s@sender.test",
                b"Subject: x\r\n\r\nx\r\n",
                [
                    Recipient("ana@acme.test", acme, True),
                    Recipient("carla@beta.test", beta, True),
                ],
            ),
            Incoming(
                new_queue_id(),
                "ana@acme.test",
                b"Subject: y\r\n\r\ny\r\n",
                [Recipient(f"{label}@elsewhere.test", acme, False)],
                route=ROUTE_RELAY,
            ),
        ]
        with writing(engine) as connection:
            store(connection, messages)
        with Session(engine) as session:
            rows = session.execute(
                select(MailRecipient.address, MailRecipient.via_continuity).where(
                    MailRecipient.queue_id.in_([m.queue_id for m in messages])
                )
            ).all()
        return {address: bool(via) for address, via in rows}

    assert commit("held") == {
        "ana@acme.test": True,
        "carla@beta.test": False,
        "held@elsewhere.test": False,
    }
    with Session(engine) as session, session.begin():
        session.get_one(ContinuityEvent, event_id).recovery_started_at = utcnow()
    assert commit("handing-back") == dict.fromkeys(
        ["ana@acme.test", "carla@beta.test", "handing-back@elsewhere.test"], False
    )
    with Session(engine) as session, session.begin():
        session.get_one(ContinuityEvent, event_id).ended_at = utcnow() + timedelta(seconds=1)
    assert commit("over") == dict.fromkeys(
        ["ana@acme.test", "carla@beta.test", "over@elsewhere.test"], False
    )
