"""Planning: a pure function from directory entries and roster rows to sync actions.

Nothing here talks to a server or a database, so every rule of the sync (renames,
disables, removals, address conflicts) is tested with plain values.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import weakref
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, cast

from roster.addresses import domain_of

FULL = "full"
INCREMENTAL = "incremental"


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One person as the directory describes them, already normalised."""

    external_id: str
    dn: str
    mail: str
    aliases: tuple[str, ...] = ()
    display_name: str = ""
    disabled: bool = False
    alternate_contact: str | None = None


@dataclass(frozen=True, slots=True)
class RosterPerson:
    """The roster's current view of one person."""

    id: int
    source: str
    external_id: str
    domain: str
    dn: str
    mail: str
    aliases: tuple[str, ...] = ()
    display_name: str = ""
    disabled: bool = False
    removed: bool = False
    alternate_contact: str | None = None


@dataclass(frozen=True, slots=True)
class Create:
    """A person new to the roster."""

    entry: DirectoryEntry
    domain: str


@dataclass(frozen=True, slots=True)
class Update:
    """New values for an existing person; ``renamed_from`` is set when the mail changed."""

    person_id: int
    entry: DirectoryEntry
    domain: str
    changed: tuple[str, ...]
    renamed_from: str | None = None
    restored: bool = False
    disabled_now: bool = False
    enabled_now: bool = False


@dataclass(frozen=True, slots=True)
class Remove:
    """A person gone from the directory: marked removed, never deleted."""

    person_id: int
    mail: str


class Creates:
    """The creates of a plan, in order: a list that keeps at most ``limit`` of them in
    memory and the rest pickled in a temporary file, so that a first sync of a million
    people does not hold a million entries as Python objects at once.

    Iterating gives Create values; entries taken back for a closer look (``exclude``)
    are skipped.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self._limit = limit
        self._memory: list[tuple[Any, ...]] = []
        self._file: IO[bytes] | None = None
        self._spilled = 0
        self._excluded: set[int] = set()

    def append(self, create: Create) -> None:
        """Add a create at the end."""
        e = create.entry
        self._memory.append(
            (e.external_id, e.dn, e.mail, e.aliases, e.display_name, e.disabled,
             e.alternate_contact, create.domain)
        )  # fmt: skip
        if len(self._memory) >= self._limit:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="continuity-plan-")  # noqa: SIM115
                weakref.finalize(self, self._file.close)
            self._file.seek(0, os.SEEK_END)
            pickle.dump(self._memory, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._spilled += len(self._memory)
            self._memory = []

    def rows(self) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """(position, row) of every create not excluded; a row holds an entry's fields
        in DirectoryEntry's order, then the domain (what apply reads, with no objects)."""
        index = 0
        if self._file is not None:
            self._file.seek(0)
            while index < self._spilled:
                for row in pickle.load(self._file):  # noqa: S301 - our own file
                    if index not in self._excluded:
                        yield index, row
                    index += 1
        for row in self._memory:
            if index not in self._excluded:
                yield index, row
            index += 1

    def indexed(self) -> Iterator[tuple[int, Create]]:
        """(position, create) of every create not excluded."""
        for index, row in self.rows():
            yield index, Create(DirectoryEntry(*row[:7]), row[7])

    def exclude(self, positions: Iterable[int]) -> None:
        """Leave the creates at ``positions`` out from now on."""
        self._excluded.update(positions)

    def __iter__(self) -> Iterator[Create]:
        return (create for _, create in self.indexed())

    def __len__(self) -> int:
        return self._spilled + len(self._memory) - len(self._excluded)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, position: int) -> Create:
        return list(self)[position]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Creates | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Creates({list(self)!r})" if len(self) < 20 else f"<Creates of {len(self)}>"


@dataclass(slots=True)
class Plan:
    """Everything one run would change, and what it refused."""

    source: str
    mode: str
    creates: Creates = field(default_factory=Creates)
    updates: list[Update] = field(default_factory=list)
    removals: list[Remove] = field(default_factory=list)
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    live_in_source: int = 0
    entries_read: int = 0

    def counts(self) -> dict[str, int]:
        """The number of each kind of action, for summaries and the run record."""
        return {
            "created": len(self.creates),
            "updated": sum(
                1 for u in self.updates if not (u.restored or u.disabled_now or u.enabled_now)
            ),
            "renamed": sum(1 for u in self.updates if u.renamed_from),
            "disabled": sum(1 for u in self.updates if u.disabled_now),
            "enabled": sum(1 for u in self.updates if u.enabled_now),
            "restored": sum(1 for u in self.updates if u.restored),
            "removed": len(self.removals),
            "unchanged": self.unchanged,
            "skipped_unknown_domain": self.skipped["unknown_domain"],
            "skipped_invalid": self.skipped["invalid"],
            "skipped_conflict": self.skipped["conflict"],
        }

    def removal_share(self) -> float:
        """The share of the source's live people this plan would remove."""
        if not self.live_in_source:
            return 0.0
        return len(self.removals) / self.live_in_source

    def is_empty(self) -> bool:
        """True when the plan changes nothing."""
        return not (self.creates or self.updates or self.removals)


def _valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return (
        bool(at and local and domain and "." in domain)
        and address.isprintable()
        and not any(c.isspace() or c in "<>,;" for c in address)
    )


class KnownRoster(Protocol):
    """What a plan needs to know of the roster, asked for as it goes.

    The sync answers from the database (sync.apply.DatabaseRoster), so that a full run
    holds one small fingerprint per person, not every roster row; tests give a list.
    """

    def snapshot(self, source: str) -> tuple[dict[str, int], int]:
        """(stable id -> packed fingerprint of every person of ``source``, live count)."""
        ...

    def people(self, ids: Collection[int]) -> dict[int, RosterPerson]:
        """The full rows of these people, by id."""
        ...

    def holders(self, addresses: Collection[str]) -> dict[str, int]:
        """The live person holding each of ``addresses`` that someone holds, any source."""
        ...

    def anyone_live(self) -> bool:
        """True when some live person holds an address."""
        ...


ID_BITS = 40
ID_MASK = (1 << ID_BITS) - 1
SEEN = -1


def _fingerprint(values: tuple[Any, ...]) -> int:
    """Python's 64-bit hash of what a person looks like, never 0 (0 marks the removed).

    Two different values share a fingerprint with a chance of 1 in 2**64: a change
    missed that way would wait for the person's next change.
    """
    return (hash(values) & 0xFFFF_FFFF_FFFF_FFFF) | 1


def packed_fingerprint(
    person_id: int,
    removed: bool,
    mail: str,
    display_name: str,
    dn: str,
    disabled: bool,
    alternate_contact: str | None,
    aliases: Iterable[str],
    domain: str,
) -> int:
    """A roster person's fingerprint and id in one integer (a third of a tuple's size)."""
    if removed:
        return person_id
    values = (mail, display_name, dn, disabled, alternate_contact, tuple(sorted(aliases)), domain)
    return _fingerprint(values) << ID_BITS | person_id


class ListRoster:
    """A KnownRoster over a list of rows (tests, and the few rows of incremental runs)."""

    def __init__(self, rows: Iterable[RosterPerson]) -> None:
        self.rows = list(rows)
        self.by_id = {p.id: p for p in self.rows}
        self.holder: dict[str, int] = {}
        for person in self.rows:
            if not person.removed:
                self.holder[person.mail] = person.id
                for alias in person.aliases:
                    self.holder[alias] = person.id

    def snapshot(self, source: str) -> tuple[dict[str, int], int]:
        """See KnownRoster."""
        mine = {
            p.external_id: packed_fingerprint(
                p.id, p.removed, p.mail, p.display_name, p.dn, p.disabled,
                p.alternate_contact, p.aliases, p.domain,
            )
            for p in self.rows
            if p.source == source
        }  # fmt: skip
        return mine, sum(1 for p in self.rows if p.source == source and not p.removed)

    def people(self, ids: Collection[int]) -> dict[int, RosterPerson]:
        """See KnownRoster."""
        return {i: self.by_id[i] for i in ids}

    def holders(self, addresses: Collection[str]) -> dict[str, int]:
        """See KnownRoster."""
        return {a: self.holder[a] for a in addresses if a in self.holder}

    def anyone_live(self) -> bool:
        """See KnownRoster."""
        return bool(self.holder)


def plan_sync(
    source: str,
    mode: str,
    entries: Iterable[DirectoryEntry],
    roster: Iterable[RosterPerson] | KnownRoster,
    domains: Iterable[str],
    departed: Iterable[str] = (),
    keep_in_memory: int = 20_000,
    claimants: Callable[[Collection[str]], Mapping[str, set[str]]] | None = None,
) -> Plan:
    """Decide what the roster must do to match the directory.

    Args:
        source: the directory source these entries come from.
        mode: FULL (people of ``source`` missing from ``entries`` are removed) or
            INCREMENTAL (``entries`` are only what changed; only the people who no
            longer qualify are removed, see ``departed``).
        entries: what the directory holds (all of it for FULL).
        roster: the roster (rows, or a KnownRoster to ask): for FULL every person of
            ``source``; for INCREMENTAL at least the people of ``entries`` and
            ``departed`` and the live holders of every address ``entries`` use.
        domains: the domains the roster holds; entries of other domains are skipped.
        departed: INCREMENTAL only: stable ids of entries still in the directory that
            no longer qualify (out of the filter or the scope group). They are removed
            at once, as are people whose changed entry lost its address or left the
            held domains: a full run would remove them all.
        keep_in_memory: creates beyond this many wait in a temporary file.
        claimants: INCREMENTAL only: asks the directory which entries (stable ids) that
            qualify claim each of some addresses. An incremental run grants an address
            someone does not hold yet only when no entry it did not read claims it too:
            such an entry may have been refused before and would win it in a full run.
    """
    known = cast(KnownRoster, roster) if hasattr(roster, "snapshot") else ListRoster(roster)
    plan = Plan(source=source, mode=mode, creates=Creates(keep_in_memory))
    known_domains = set(domains)
    mine, plan.live_in_source = known.snapshot(source)

    # 1. Read the entries as they come. An unchanged person is settled at once and not
    #    kept; a new one with addresses nobody else claims goes straight into the
    #    plan's creates (the common case of a first sync); every other entry waits for
    #    the careful claim of step 3.
    changed: list[tuple[DirectoryEntry, int]] = []  # (entry, person id)
    careful_new: list[DirectoryEntry] = []
    # Hashes of new stable ids, to refuse an id read twice: two ids sharing a 64-bit
    # hash (a chance in 2**64 a pair) would only make the second wait for the next run.
    new_ids: set[int] = set()
    claims: dict[str, int] = {}  # address -> 1 if one new entry claims it, 2 if more
    gone_ids: set[str] = set(departed)  # read, but no longer someone the roster holds
    for entry in entries:
        plan.entries_read += 1
        external_id = entry.external_id
        if not external_id or not entry.mail or not _valid_address(entry.mail):
            plan.skipped["invalid"] += 1
            plan.problems.append(f"skipped {entry.dn!r}: no stable id or no valid mail address")
            if external_id:
                gone_ids.add(external_id)
            continue
        packed = mine.get(external_id)
        if packed == SEEN or (packed is None and hash(external_id) in new_ids):
            plan.skipped["invalid"] += 1
            plan.problems.append(f"skipped {entry.dn!r}: stable id seen twice in one read")
            continue
        domain = domain_of(entry.mail)
        if domain not in known_domains:
            plan.skipped["unknown_domain"] += 1
            gone_ids.add(external_id)
            continue
        addresses = {entry.mail, *entry.aliases}
        if packed is not None:
            mine[external_id] = SEEN
            values = (
                entry.mail, entry.display_name, entry.dn, entry.disabled,
                entry.alternate_contact, tuple(sorted(entry.aliases)), domain,
            )  # fmt: skip
            if packed >> ID_BITS == _fingerprint(values):
                plan.unchanged += 1
                continue
            changed.append((entry, packed & ID_MASK))
            careful = True
        else:
            new_ids.add(hash(external_id))
            careful = (
                mode != FULL
                or len(addresses) != 1 + len(entry.aliases)
                or not all(map(_valid_address, entry.aliases))
            )
        careful = careful or any(a in claims for a in addresses)
        for address in addresses:
            claims[address] = 2 if careful or address in claims else 1
        if packed is None and careful:
            careful_new.append(entry)
        elif packed is None:
            plan.creates.append(Create(entry, domain))
    del new_ids

    # 2. New entries that went straight to the creates need the careful claim after all
    #    when another entry claims one of their addresses too, or someone holds it.
    contested = {address for address, count in claims.items() if count > 1}
    del claims
    anyone = known.anyone_live()
    if plan.creates and (contested or anyone):
        taken_back = _take_back(plan.creates, contested, known if anyone else None)
        careful_new += [create.entry for create in taken_back.values()]
        plan.creates.exclude(taken_back)

    # 3. The careful claim, on few entries: people already in the roster keep what they
    #    hold, then the rest by stable id, so a conflict always resolves the same way.
    if mode == FULL:
        leaver_ids = [p & ID_MASK for p in mine.values() if p != SEEN and p >> ID_BITS]
    else:
        found = (mine.get(i) for i in gone_ids)
        leaver_ids = [p & ID_MASK for p in found if p is not None and p != SEEN and p >> ID_BITS]
    del mine
    people = known.people([person_id for _, person_id in changed] + leaver_ids)
    leavers = [people[i] for i in leaver_ids if not people[i].removed]
    accepted: list[tuple[DirectoryEntry, RosterPerson | None]] = [
        (entry, people[i]) for entry, i in changed
    ]
    accepted += [(entry, None) for entry in careful_new]
    accepted.sort(key=lambda pair: (pair[1] is None, pair[0].external_id))
    wanted = {a for entry, existing in accepted for a in (entry.mail, *entry.aliases)}
    holder = known.holders(wanted)
    leaving: set[str] = set()  # addresses of the people this run removes
    for person in leavers:
        leaving.update((person.mail, *person.aliases))
    # Someone whose change is refused keeps every address they hold, so addresses they
    # would have given up are not free after all: claim again until nothing moves.
    # Only a full run hands an address on from one person to another: an incremental
    # run does not see the entries refused before that may claim it too (a full run
    # gives it to the first of them by the rule above), so what it frees stays free.
    # An incremental run also keeps what a refused entry asks for from everyone else:
    # a full run might grant that entry (with an address this run does not hand on).
    stuck: set[str] = set()
    reserved: set[str] = set()
    if mode != FULL and claimants is not None:
        read_ids = {entry.external_id for entry, _ in accepted}
        asked = {
            address
            for entry, existing in accepted
            for address in (entry.mail, *entry.aliases)
            if existing is None or holder.get(address) != existing.id
        }
        if asked:
            reserved = {a for a, ids in claimants(asked).items() if ids - read_ids}
    while True:
        released = _addresses_released(accepted, stuck) | leaving
        granted, refused = _claim(accepted, holder, released, reserved)
        newly_stuck = {
            entry.external_id
            for entry, existing in refused
            if existing is not None and not existing.removed
        } - stuck
        newly_reserved: set[str] = set()
        if mode != FULL:
            newly_reserved = {a for entry, _ in refused for a in (entry.mail, *entry.aliases)}
            newly_reserved -= reserved
        if not newly_stuck and not newly_reserved:
            break
        stuck |= newly_stuck
        reserved |= newly_reserved

    for entry, existing in refused:
        plan.skipped["conflict"] += 1
        if existing is not None and not existing.removed and entry.disabled > existing.disabled:
            # The part of the change that takes access away never waits for the rest.
            plan.problems.append(
                f"kept {entry.dn!r} at {existing.mail} but disabled:"
                f" address {entry.mail} already belongs to someone else"
            )
            plan.updates.append(_disable_only(existing))
            continue
        plan.problems.append(
            f"skipped {entry.dn!r}: address {entry.mail} already belongs to someone else"
        )
    for entry, existing, dropped in granted:
        for alias in dropped:
            plan.problems.append(f"dropped alias {alias} of {entry.mail}: invalid or taken")
        _plan_entry(plan, entry, existing)

    for person in sorted(leavers, key=lambda p: p.external_id):
        plan.removals.append(Remove(person.id, person.mail))
    return plan


def _take_back(
    creates: Creates, contested: set[str], known: KnownRoster | None
) -> dict[int, Create]:
    """The creates (by position) whose addresses are contested or held by someone."""
    found: dict[int, Create] = {}
    batch: list[tuple[int, Create]] = []

    def check(batch: list[tuple[int, Create]]) -> None:
        addresses = [a for _, c in batch for a in (c.entry.mail, *c.entry.aliases)]
        held = known.holders(addresses) if known and addresses else {}
        for position, create in batch:
            mine = (create.entry.mail, *create.entry.aliases)
            if any(a in held or a in contested for a in mine):
                found[position] = create

    for item in creates.indexed():
        batch.append(item)
        if len(batch) == 5000:
            check(batch)
            batch = []
    check(batch)
    return found


def _disable_only(person: RosterPerson) -> Update:
    """An update that disables ``person`` and changes nothing else."""
    kept = DirectoryEntry(
        person.external_id,
        person.dn,
        person.mail,
        tuple(sorted(person.aliases)),
        person.display_name,
        True,
        person.alternate_contact,
    )
    return Update(person.id, kept, person.domain, ("disabled",), disabled_now=True)


def _claim(
    accepted: list[tuple[DirectoryEntry, RosterPerson | None]],
    holder: Mapping[str, int],
    released: set[str],
    reserved: set[str],
) -> tuple[
    list[tuple[DirectoryEntry, RosterPerson | None, list[str]]],
    list[tuple[DirectoryEntry, RosterPerson | None]],
]:
    """Hand out addresses in order: (granted entries with dropped aliases, refused entries).

    A ``reserved`` address goes to nobody but the person who holds it now."""
    claimed: set[str] = set()
    granted: list[tuple[DirectoryEntry, RosterPerson | None, list[str]]] = []
    refused: list[tuple[DirectoryEntry, RosterPerson | None]] = []
    for entry, existing in accepted:
        own_id = existing.id if existing else None

        def free(address: str, own_id: int | None = own_id) -> bool:
            if address in claimed:
                return False
            if address in reserved and (own_id is None or holder.get(address) != own_id):
                return False
            return not _taken(address, own_id, holder, released)

        if not free(entry.mail):
            refused.append((entry, existing))
            continue
        claimed.add(entry.mail)
        aliases: list[str] = []
        dropped: list[str] = []
        for alias in entry.aliases:
            if alias == entry.mail or alias in aliases:
                continue
            if not _valid_address(alias) or not free(alias):
                dropped.append(alias)
                continue
            claimed.add(alias)
            aliases.append(alias)
        granted.append((_with_aliases(entry, tuple(sorted(aliases))), existing, dropped))
    return granted, refused


def _addresses_released(
    accepted: list[tuple[DirectoryEntry, RosterPerson | None]], stuck: set[str]
) -> set[str]:
    """Addresses that people of this source give up in this run (renames, dropped aliases)."""
    released: set[str] = set()
    for entry, existing in accepted:
        if existing is None or existing.removed or entry.external_id in stuck:
            continue
        kept = {entry.mail, *entry.aliases}
        released.update(a for a in (existing.mail, *existing.aliases) if a not in kept)
    return released


def _taken(address: str, own_id: int | None, holder: Mapping[str, int], released: set[str]) -> bool:
    """True when a live person other than ``own_id`` holds ``address`` after this run."""
    other = holder.get(address)
    return other is not None and other != own_id and address not in released


def _with_aliases(entry: DirectoryEntry, aliases: tuple[str, ...]) -> DirectoryEntry:
    if aliases == entry.aliases:
        return entry
    return DirectoryEntry(
        entry.external_id,
        entry.dn,
        entry.mail,
        aliases,
        entry.display_name,
        entry.disabled,
        entry.alternate_contact,
    )


def _plan_entry(plan: Plan, entry: DirectoryEntry, existing: RosterPerson | None) -> None:
    """Add the create or update that brings one person in line."""
    domain = domain_of(entry.mail)
    if existing is None:
        plan.creates.append(Create(entry, domain))
        return
    changed = tuple(
        name
        for name, before, after in (
            ("mail", existing.mail, entry.mail),
            ("aliases", tuple(sorted(existing.aliases)), entry.aliases),
            ("display_name", existing.display_name, entry.display_name),
            ("dn", existing.dn, entry.dn),
            ("disabled", existing.disabled, entry.disabled),
            ("alternate_contact", existing.alternate_contact, entry.alternate_contact),
            ("domain", existing.domain, domain),
        )
        if before != after
    )
    if not changed and not existing.removed:
        plan.unchanged += 1
        return
    plan.updates.append(
        Update(
            person_id=existing.id,
            entry=entry,
            domain=domain,
            changed=changed,
            renamed_from=existing.mail if "mail" in changed else None,
            restored=existing.removed,
            disabled_now=entry.disabled and not existing.disabled,
            enabled_now=existing.disabled and not entry.disabled,
        )
    )
