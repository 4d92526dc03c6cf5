"""Planning: a pure function from directory entries and roster rows to sync actions.

Nothing here talks to a server or a database, so every rule of the sync (renames,
disables, removals, address conflicts) is tested with plain values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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


@dataclass(slots=True)
class Plan:
    """Everything one run would change, and what it refused."""

    source: str
    mode: str
    creates: list[Create] = field(default_factory=list)
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


def plan_sync(
    source: str,
    mode: str,
    entries: Iterable[DirectoryEntry],
    roster: Iterable[RosterPerson],
    domains: Iterable[str],
    departed: Iterable[str] = (),
) -> Plan:
    """Decide what the roster must do to match the directory.

    Args:
        source: the directory source these entries come from.
        mode: FULL (people of ``source`` missing from ``entries`` are removed) or
            INCREMENTAL (``entries`` are only what changed; only the people who no
            longer qualify are removed, see ``departed``).
        entries: what the directory holds (all of it for FULL).
        roster: the roster rows that matter: every person of ``source`` for FULL, and
            for any mode every live person holding an address that ``entries`` use.
        domains: the domains the roster holds; entries of other domains are skipped.
        departed: INCREMENTAL only: stable ids of entries still in the directory that
            no longer qualify (out of the filter or the scope group). They are removed
            at once, as are people whose changed entry lost its address or left the
            held domains: a full run would remove them all.
    """
    plan = Plan(source=source, mode=mode)
    known_domains = set(domains)
    mine: dict[str, RosterPerson] = {}
    holder: dict[str, int] = {}  # live address -> person id, across all sources
    for person in roster:
        if person.source == source:
            mine[person.external_id] = person
            if not person.removed:
                plan.live_in_source += 1
        if not person.removed:
            holder[person.mail] = person.id
            for alias in person.aliases:
                holder[alias] = person.id

    accepted: list[tuple[DirectoryEntry, RosterPerson | None]] = []
    read_ids: set[str] = set()
    seen_ids: set[str] = set()  # people still in the directory, in a domain we hold
    gone_ids: set[str] = set(departed)  # read, but no longer someone the roster holds
    for entry in entries:
        plan.entries_read += 1
        if not entry.external_id or not entry.mail or not _valid_address(entry.mail):
            plan.skipped["invalid"] += 1
            plan.problems.append(f"skipped {entry.dn!r}: no stable id or no valid mail address")
            if entry.external_id:
                gone_ids.add(entry.external_id)
            continue
        if entry.external_id in read_ids:
            plan.skipped["invalid"] += 1
            plan.problems.append(f"skipped {entry.dn!r}: stable id seen twice in one read")
            continue
        read_ids.add(entry.external_id)
        if domain_of(entry.mail) not in known_domains:
            plan.skipped["unknown_domain"] += 1
            gone_ids.add(entry.external_id)
            continue
        seen_ids.add(entry.external_id)
        existing = mine.get(entry.external_id)
        if existing is not None and _unchanged(entry, existing):
            # The common case of a full run, settled here so that the entry need not be
            # kept: its addresses are its own already, so no one else can claim them.
            plan.unchanged += 1
            continue
        accepted.append((entry, existing))

    # Addresses are claimed in a fixed order so that a conflict always resolves the same
    # way: people already in the roster keep what they hold, then the rest by stable id.
    accepted.sort(key=lambda pair: (pair[1] is None, pair[0].external_id))
    if mode == FULL:
        leavers = [p for i, p in mine.items() if not p.removed and i not in seen_ids]
    else:
        leavers = [mine[i] for i in gone_ids - seen_ids if i in mine and not mine[i].removed]
    leaving: set[str] = set()  # addresses of the people this run removes
    for person in leavers:
        leaving.update((person.mail, *person.aliases))
    # Someone whose change is refused keeps every address they hold, so addresses they
    # would have given up are not free after all: claim again until nothing moves.
    stuck: set[str] = set()
    while True:
        released = _addresses_released(accepted, stuck) | leaving
        granted, refused = _claim(accepted, holder, released)
        newly_stuck = {
            entry.external_id
            for entry, existing in refused
            if existing is not None and not existing.removed
        } - stuck
        if not newly_stuck:
            break
        stuck |= newly_stuck

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


def _unchanged(entry: DirectoryEntry, person: RosterPerson) -> bool:
    """True when the roster already holds exactly what the entry says."""
    return (
        not person.removed
        and entry.mail == person.mail
        and entry.display_name == person.display_name
        and entry.dn == person.dn
        and entry.disabled == person.disabled
        and entry.alternate_contact == person.alternate_contact
        and tuple(sorted(entry.aliases)) == tuple(sorted(person.aliases))
        and domain_of(entry.mail) == person.domain
    )


def _claim(
    accepted: list[tuple[DirectoryEntry, RosterPerson | None]],
    holder: Mapping[str, int],
    released: set[str],
) -> tuple[
    list[tuple[DirectoryEntry, RosterPerson | None, list[str]]],
    list[tuple[DirectoryEntry, RosterPerson | None]],
]:
    """Hand out addresses in order: (granted entries with dropped aliases, refused entries)."""
    claimed: set[str] = set()
    granted: list[tuple[DirectoryEntry, RosterPerson | None, list[str]]] = []
    refused: list[tuple[DirectoryEntry, RosterPerson | None]] = []
    for entry, existing in accepted:
        own_id = existing.id if existing else None
        if _taken(entry.mail, own_id, holder, released) or entry.mail in claimed:
            refused.append((entry, existing))
            continue
        claimed.add(entry.mail)
        aliases: list[str] = []
        dropped: list[str] = []
        for alias in entry.aliases:
            if alias == entry.mail or alias in aliases:
                continue
            if (
                not _valid_address(alias)
                or _taken(alias, own_id, holder, released)
                or alias in claimed
            ):
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
