"""Who has a standby mailbox: the covered people of every active domain, by address."""

from __future__ import annotations

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
