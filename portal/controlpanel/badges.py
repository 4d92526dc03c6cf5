"""What every Control Panel page shows of a domain at a glance: its state as a badge
(active, not active, in a continuity event, recovering) and, while its held mail is
handed back, how far the hand-back has come."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask_babel import lazy_gettext as _l

from portal.controlpanel.scope import bp
from portal.request_scope import db
from roster.continuity import domain_states, event_counts, event_left, open_event
from roster.models import Domain

STATE_WORDS = {
    "active": _l("Active"),
    "inactive": _l("Not active"),
    "outage": _l("In a continuity event"),
    "recovering": _l("Recovering"),
}


def states_of(domains: Iterable[Domain]) -> dict[int, str]:
    """Each domain's badge: its continuity event's state if one is open, else whether
    Continuity Service is active."""
    listed = list(domains)
    events = domain_states(db().connection(), [domain.id for domain in listed])
    return {
        domain.id: events.get(domain.id) or ("active" if domain.continuity_active else "inactive")
        for domain in listed
    }


@dataclass(frozen=True)
class HandBack:
    """The hand-back of a domain's continuity event, as far as it has come."""

    held: int
    handed_back: int
    left: int  # still waiting (one the primary refused for good is not)


def hand_back(domain: Domain) -> HandBack | None:
    """How far the hand-back of ``domain``'s event has come, or None when none runs."""
    connection = db().connection()
    event = open_event(connection, domain.id)
    if event is None or event.recovery_started_at is None:
        return None
    held, handed_back = event_counts(connection, domain.id, event.started_at)
    left = event_left(connection, domain.id, event.started_at)
    return HandBack(held, min(handed_back, held), min(left, held))


@bp.context_processor
def domain_glance() -> dict[str, Any]:
    """The badge and the hand-back's progress, for the Control Panel's templates."""
    return {"domain_states": states_of, "state_words": STATE_WORDS, "hand_back": hand_back}
