"""Who has a standby mailbox: the covered people of every active domain, by address;
and how the processes that sign in to the store reach it."""

from __future__ import annotations

import ipaddress

from sqlalchemy import select
from sqlalchemy.orm import Session

from roster.coverage import covered_clause
from roster.models import Domain, Person


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
