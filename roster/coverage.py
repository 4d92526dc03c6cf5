"""Who is covered by Continuity Service: the one rule, used by portal and gateway alike,
and its SQL twin for queries over many people (tests hold the two to one table).

Being "on the list" has one meaning too: a list entry of the person in their own domain.
An entry left in another domain (made as the sync moved the person) lists nobody.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, exists, false

from roster.models import COVERAGE_ALL, COVERAGE_SELECTED, CoverageEntry, Domain, Person


def is_covered(
    *,
    service_active: bool,
    coverage_mode: str,
    listed: bool,
    disabled: bool,
    removed: bool,
) -> bool:
    """True when Continuity Service covers a person.

    The service must be active for their domain; with "all users" everyone is covered,
    with "only selected users" only the people on the list; a disabled or removed
    person never is.
    """
    if not service_active or disabled or removed:
        return False
    if coverage_mode == COVERAGE_ALL:
        return True
    return coverage_mode == COVERAGE_SELECTED and listed


def person_is_covered(domain: Domain, person: Person, listed: bool) -> bool:
    """``is_covered`` for roster rows."""
    return is_covered(
        service_active=domain.continuity_active,
        coverage_mode=domain.coverage_mode,
        listed=listed,
        disabled=person.disabled,
        removed=person.removed_at is not None,
    )


def lists_person() -> ColumnElement[bool]:
    """The condition joining a list entry to the person it lists: the person's own
    entry, in the person's own domain. Every query of "who is on the list" uses it."""
    return and_(CoverageEntry.person_id == Person.id, CoverageEntry.domain_id == Person.domain_id)


def covered_clause(domain: Domain) -> ColumnElement[bool]:
    """The condition "Continuity Service covers this person of ``domain`` now":
    ``is_covered`` for a query over many people."""
    if not domain.continuity_active:
        return false()
    live = and_(
        Person.domain_id == domain.id,
        Person.removed_at.is_(None),
        Person.disabled.is_(False),
    )
    if domain.coverage_mode == COVERAGE_ALL:
        return live
    if domain.coverage_mode == COVERAGE_SELECTED:
        return and_(live, exists().where(lists_person()))
    return false()
