"""Properties of the pure planner over random directory histories (Hypothesis).

An incremental run then a full run reaches the roster a full run alone reaches, and
after an incremental run nobody has more access than a full run would give them. The
roster is simulated in plain Python the way sync/apply.py writes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from sync.plan import FULL, INCREMENTAL, DirectoryEntry, Plan, RosterPerson, plan_sync

DOMAINS = ["acme.test", "acme-brand.test"]
IDS = ["a", "b", "c", "d", "e"]
ADDRESSES = ["p@acme.test", "q@acme.test", "r@acme-brand.test", "s@elsewhere.test", ""]


@dataclass(frozen=True)
class Spec:
    """One person as the directory holds them; ``qualifies``: in the filter and scope."""

    mail: str
    alias: str
    disabled: bool
    qualifies: bool
    name: str

    def entry(self, uid: str) -> DirectoryEntry:
        """What a read of this person gives the planner."""
        aliases = (self.alias,) if self.alias else ()
        return DirectoryEntry(uid, f"uid={uid}", self.mail, aliases, self.name, self.disabled)


specs = st.builds(
    Spec,
    mail=st.sampled_from(ADDRESSES),
    alias=st.sampled_from(ADDRESSES),
    disabled=st.booleans(),
    qualifies=st.booleans(),
    name=st.sampled_from(["", "One", "Two"]),
)
directories = st.dictionaries(st.sampled_from(IDS), specs)
Roster = dict[str, RosterPerson]  # by stable id: ids are compared, not person numbers


def apply(plan: Plan, roster: Roster) -> Roster:
    """What sync/apply.py makes of ``plan``, on plain values."""
    after = dict(roster)
    by_number = {p.id: p for p in roster.values()}
    for removal in plan.removals:
        gone = by_number[removal.person_id]
        after[gone.external_id] = dataclasses.replace(gone, removed=True, aliases=())
    for update in plan.updates:
        before = by_number[update.person_id]
        after[before.external_id] = dataclasses.replace(
            before,
            domain=update.domain,
            dn=update.entry.dn,
            mail=update.entry.mail,
            aliases=update.entry.aliases,
            display_name=update.entry.display_name,
            disabled=update.entry.disabled,
            removed=False,
        )
    number = max(by_number, default=0)
    for create in plan.creates:
        number += 1
        e = create.entry
        after[e.external_id] = RosterPerson(
            number, "corp", e.external_id, create.domain, e.dn, e.mail, e.aliases, e.display_name,
            e.disabled,
        )  # fmt: skip
    return after


def full(directory: dict[str, Spec], roster: Roster) -> Roster:
    """A full run: every qualifying entry is read."""
    entries = [s.entry(uid) for uid, s in sorted(directory.items()) if s.qualifies]
    # Creates beyond two wait in a file, as a large run's do.
    plan = plan_sync("corp", FULL, entries, list(roster.values()), DOMAINS, keep_in_memory=2)
    return apply(plan, roster)


def incremental(before: dict[str, Spec], after: dict[str, Spec], roster: Roster) -> Roster:
    """An incremental run: the entries that changed (deletions are not seen)."""
    changed = sorted(uid for uid, spec in after.items() if before.get(uid) != spec)
    entries = [after[uid].entry(uid) for uid in changed if after[uid].qualifies]
    departed = [uid for uid in changed if not after[uid].qualifies]
    addresses = {a for e in entries for a in (e.mail, *e.aliases)}
    # The rows sync.apply.load_roster gives an incremental run, no more.
    loaded = [
        p
        for p in roster.values()
        if p.external_id in changed or (not p.removed and ({p.mail, *p.aliases} & addresses))
    ]

    def claimants(addresses: object) -> dict[str, set[str]]:
        """What sync.directory asks the directory: who qualifies and claims each."""
        found: dict[str, set[str]] = {}
        for uid, spec in after.items():
            if spec.qualifies and spec.mail and spec.mail.rpartition("@")[2] in DOMAINS:
                for address in {spec.mail, spec.alias} & set(addresses):  # type: ignore[call-overload]
                    found.setdefault(address, set()).add(uid)
        return found

    plan = plan_sync(
        "corp", INCREMENTAL, entries, loaded, DOMAINS, departed, 2, claimants=claimants
    )
    return apply(plan, roster)


def state(roster: Roster) -> dict[str, tuple[object, ...]]:
    """What a person notices of a roster: addresses, disabled, removed."""
    return {
        uid: (p.removed, p.disabled, p.mail, tuple(sorted(p.aliases)), p.display_name)
        for uid, p in roster.items()
    }


def access(roster: Roster) -> dict[str, set[str]]:
    """The addresses each live, enabled person may sign in with."""
    return {
        uid: {p.mail, *p.aliases} for uid, p in roster.items() if not p.removed and not p.disabled
    }


def without_conflicts(directory: dict[str, Spec]) -> dict[str, Spec]:
    """The directory with every address claimed twice replaced by one of the claimer's own."""
    claimed: set[str] = set()
    result = {}
    for uid, spec in sorted(directory.items()):
        mail, alias = spec.mail, spec.alias
        if spec.qualifies:
            if mail in claimed:
                mail = f"{uid}@acme.test"
            if alias in claimed or alias == mail:
                alias = ""
            claimed.update(a for a in (mail, alias) if a)
        result[uid] = dataclasses.replace(spec, mail=mail, alias=alias)
    return result


@settings(max_examples=400, deadline=None)
@given(first=directories, second=directories.map(without_conflicts))
def test_incremental_then_full_reaches_what_full_alone_reaches(
    first: dict[str, Spec], second: dict[str, Spec]
) -> None:
    """Where the directory gives no address to two people at once (the first directory
    may): who wins a contested address depends on who held it first, by design, so a
    refused entry that an incremental run does not read again may lose it to another."""
    start = full(first, {})
    via_incremental = full(second, incremental(first, second, start))
    assert state(via_incremental) == state(full(second, start))


@settings(max_examples=400, deadline=None)
@given(first=directories, second=directories)
def test_an_incremental_run_gives_nobody_more_access_than_a_full_run(
    first: dict[str, Spec], second: dict[str, Spec]
) -> None:
    """Nobody may sign in whom a full run would stop, and nobody gets an address they did
    not hold that a full run would not give them. (A refused change, an address held by
    someone else, keeps the person's old addresses in any run until it can land.)

    Entries may change in any way but are not deleted: an incremental read does not
    see deletions (only a full run does, README), and a deleted person keeps what they
    hold until then; what they hold may also keep someone else's rename waiting."""
    second = {**first, **second}
    start = full(first, {})
    before = access(start)
    after_incremental = access(incremental(first, second, start))
    after_full = access(full(second, start))
    for uid, addresses in after_incremental.items():
        assert uid in after_full, f"{uid} keeps access a full run takes away"
        gained = addresses - before.get(uid, set())
        assert gained <= after_full[uid], f"{uid} gets {gained - after_full[uid]}"
