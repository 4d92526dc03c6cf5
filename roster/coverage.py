"""Who is covered by Continuity Service: the one rule, used by portal and gateway alike."""

from __future__ import annotations

from roster.models import COVERAGE_ALL, COVERAGE_SELECTED, Domain, Person


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
