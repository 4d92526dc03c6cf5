"""Finding people of a domain as an admin types: the Control Panel's "Select user".

Typed text matches anywhere in a person's address or name, ignoring case and accents
("garc" finds "Ana García"), from three characters on, ten suggestions at most, in
address order. A query with ``LIKE '%...%'`` reads every person of the domain when
nothing matches (180 ms for 100,000 people on SQLite), and the indexes that avoid it
(trigram, a word table) would slow every directory sync down. So each process keeps,
per domain, one string of every live person's folded address and name, and searches it
with ``str.find``: a few milliseconds for 100,000 people, match or not. The domain's
``people_version``, moved on by the sync whenever its people change, tells when to read
them again; a small read of that number is all a suggestion costs the database.
"""

from __future__ import annotations

import bisect
import io
import threading
import unicodedata
from array import array
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from roster.models import CoverageEntry, Domain, Person

MIN_TYPED = 3
LIMIT = 10


def fold(text: str) -> str:
    """``text`` for matching: lower case, accents and controls gone."""
    if text.isascii() and text.isprintable():
        return text.lower()  # most addresses and many names: ten times faster
    decomposed = unicodedata.normalize("NFKD", text)
    kept = (c for c in decomposed if not unicodedata.combining(c))
    return "".join(c if c.isprintable() else " " for c in kept).casefold()


@dataclass(frozen=True)
class Suggestion:
    """One person the typed text matches."""

    person_id: int
    mail: str
    display_name: str
    disabled: bool
    listed: bool


@dataclass
class _DomainPeople:
    version: int
    text: bytes  # one line per person: folded address, a tab, folded name; UTF-8
    starts: array[int]  # where each line starts in ``text``
    ids: array[int]


def _load(session: Session, domain_id: int, version: int) -> _DomainPeople:
    # Plain machine integers (8 bytes each, not a 36-byte object behind a list slot),
    # and UTF-8 (one byte a character, where one "ø" would make a str two bytes a
    # character throughout): a domain of a million people costs each worker about
    # 60 MB, not 150 MB. A UTF-8 needle matches exactly where its text does.
    rows = session.execute(
        select(Person.id, Person.mail, Person.display_name)
        .where(Person.domain_id == domain_id, Person.removed_at.is_(None))
        .order_by(Person.mail)
        .execution_options(yield_per=10_000)
    )
    text = io.BytesIO()  # not a list of a million small bytes objects to join
    starts, ids = array("q"), array("q")
    for person_id, mail, name in rows:
        starts.append(text.tell())
        ids.append(person_id)
        text.write(f"{fold(mail)}\t{fold(name or '')}\n".encode())
    return _DomainPeople(version, text.getvalue(), starts, ids)


class PeopleIndex:
    """The people of each domain as one searchable string, kept per process."""

    def __init__(self) -> None:
        self._domains: dict[int, _DomainPeople] = {}
        self._lock = threading.Lock()

    def _people(self, session: Session, domain_id: int) -> _DomainPeople | None:
        version = session.scalar(select(Domain.people_version).where(Domain.id == domain_id))
        if version is None:
            return None
        held = self._domains.get(domain_id)
        if held is not None and held.version == version:
            return held
        with self._lock:  # one read at a time when threads ask at once
            held = self._domains.get(domain_id)
            if held is None or held.version != version:
                held = _load(session, domain_id, version)
                self._domains[domain_id] = held
        return held

    def matching_ids(self, session: Session, domain_id: int, typed: str, limit: int) -> list[int]:
        """Ids of up to ``limit`` live people of the domain matching ``typed``."""
        folded = fold(typed).strip()
        if len(folded) < MIN_TYPED or "\t" in folded or "\n" in folded:
            return []
        needle = folded.encode()
        people = self._people(session, domain_id)
        if people is None:
            return []
        found: list[int] = []
        text, starts, position = people.text, people.starts, 0
        while len(found) < limit:
            position = text.find(needle, position)
            if position < 0:
                break
            line = bisect.bisect_right(starts, position) - 1
            found.append(people.ids[line])
            # Go on from the next person's line: one suggestion per person.
            position = starts[line + 1] if line + 1 < len(starts) else len(text)
        return found

    def suggest(
        self, session: Session, domain_id: int, typed: str, limit: int = LIMIT
    ) -> list[Suggestion]:
        """Up to ``limit`` live people of the domain matching ``typed``, by address,
        each marked when already on the domain's list of selected users."""
        ids = self.matching_ids(session, domain_id, typed, limit)
        if not ids:
            return []
        rows = session.execute(
            select(
                Person.id,
                Person.mail,
                Person.display_name,
                Person.disabled,
                CoverageEntry.id.is_not(None),
            )
            .outerjoin(
                CoverageEntry,
                (CoverageEntry.person_id == Person.id) & (CoverageEntry.domain_id == domain_id),
            )
            # By id alone: with a condition on the domain too, a planner without table
            # statistics (SQLite after a first sync) walks the whole domain's index.
            .where(Person.id.in_(ids), Person.removed_at.is_(None))
            .add_columns(Person.domain_id)
            .order_by(Person.mail)
        )
        # Someone may have moved to another domain since the index was read.
        return [Suggestion(*row[:5]) for row in rows if row[5] == domain_id]
