"""Who has a standby mailbox: the covered people of every active domain, by address;
and how the processes that sign in to the store reach it."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from sqlalchemy import Connection, or_, select, update
from sqlalchemy.orm import Session

from roster.coverage import covered_clause
from roster.models import COPY_DONE, COPY_REMOVED, Domain, Person, StandbyCopy


def covered_addresses(session: Session) -> list[str]:
    """The roster address of everyone Continuity Service covers now, sorted.

    The one coverage rule decides (``covered_clause``, the SQL twin of ``is_covered``):
    a domain whose service is off covers nobody, a disabled or removed person is never
    covered. Aliases are not listed: the gateway copies an alias's mail to its person.
    """
    domains = session.scalars(
        select(Domain).where(Domain.continuity_active.is_(True)).order_by(Domain.name)
    ).all()
    addresses: list[str] = []
    for domain in domains:
        addresses.extend(session.scalars(select(Person.mail).where(covered_clause(domain))))
    return sorted(addresses)


def store_uses_tls(host: str, imap_tls: object = None) -> bool:
    """Whether IMAP to the standby store on ``host`` goes under STARTTLS: ``[standby]
    imap_tls`` when set, else unless the store is on loopback (the master password must
    not cross a network in clear). The webmail and retention both ask here."""
    if imap_tls is not None:
        return bool(imap_tls)
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() != "localhost"


def holds_others_mail(session: Session, address: str, person_id: int) -> bool:
    """True when the standby mailbox of ``address`` holds mail copied for someone else:
    the address was another person's within the archive's months (a departed person's
    address given to a newcomer). The webmail stays closed to its new holder until
    retention has emptied it (``mailboxes_of_others``, ``mark_removed``).

    Two ranges of the index on (mailbox, status, person_id), below and above the
    person: a few index entries, however large their own archive. The store names
    mailboxes in lower case; the copies keep the roster's spelling. A copy whose person
    is not recorded says nothing (the gateway records it on every copy, and the roster
    never deletes a person)."""
    mine = (StandbyCopy.mailbox.in_({address, address.lower()}), StandbyCopy.status == COPY_DONE)
    for other in (StandbyCopy.person_id < person_id, StandbyCopy.person_id > person_id):
        if session.scalar(select(StandbyCopy.id).where(*mine, other).limit(1)) is not None:
            return True
    return False


def mailboxes_of_others(session: Session, holders: dict[str, int]) -> dict[str, set[str]]:
    """Of ``holders`` (lower-case address -> the person who holds it now), the addresses
    whose standby mailbox holds mail copied for someone else, each with the spellings its
    copies were made under; in one pass over the copies (their index)."""
    spellings: dict[str, set[str]] = {}
    others: set[str] = set()
    rows = session.execute(
        select(StandbyCopy.mailbox, StandbyCopy.person_id)
        .where(StandbyCopy.status == COPY_DONE)
        .distinct()
    )
    for mailbox, person_id in rows:
        address = mailbox.lower()
        holder = holders.get(address)
        if holder is None:
            continue
        spellings.setdefault(address, set()).add(mailbox)
        if person_id is not None and person_id != holder:
            others.add(address)
    return {address: spellings[address] for address in sorted(others)}


def holders_copies(session: Session, spellings: set[str], person_id: int) -> set[str]:
    """The queue ids of the copies made into a mailbox (under any of ``spellings``) for
    ``person_id``: what retention keeps when it empties the mailbox of someone else's
    mail (the Received line of every copy names its queue id)."""
    return set(
        session.scalars(
            select(StandbyCopy.queue_id).where(
                StandbyCopy.mailbox.in_(spellings),
                StandbyCopy.status == COPY_DONE,
                StandbyCopy.person_id == person_id,
            )
        )
    )


def mark_removed(
    connection: Connection, spellings: set[str], person_id: int, before: datetime
) -> int:
    """The copies made into a mailbox (under any of ``spellings``) up to ``before`` for
    anyone but ``person_id``, emptied out of it by retention: tracking no longer says
    they are there; how many."""
    result = connection.execute(
        update(StandbyCopy)
        .where(
            StandbyCopy.mailbox.in_(spellings),
            StandbyCopy.status == COPY_DONE,
            or_(StandbyCopy.person_id.is_(None), StandbyCopy.person_id != person_id),
            StandbyCopy.copied_at <= before,
        )
        .values(status=COPY_REMOVED)
    )
    return int(getattr(result, "rowcount", 0) or 0)
