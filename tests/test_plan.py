"""The sync's planning rules, as a pure function: no server, no database."""

from __future__ import annotations

from sync.plan import FULL, INCREMENTAL, DirectoryEntry, RosterPerson, plan_sync

DOMAINS = ["acme.test", "acme-brand.test"]


def entry(uid: str, mail: str, **fields: object) -> DirectoryEntry:
    """A directory entry with a DN derived from its id."""
    return DirectoryEntry(external_id=uid, dn=f"uid={uid},dc=acme,dc=test", mail=mail, **fields)  # type: ignore[arg-type]


def person(id_: int, uid: str, mail: str, source: str = "corp", **fields: object) -> RosterPerson:
    """A roster row matching what ``entry`` would have created."""
    values: dict[str, object] = {
        "id": id_,
        "source": source,
        "external_id": uid,
        "domain": mail.rpartition("@")[2],
        "dn": f"uid={uid},dc=acme,dc=test",
        "mail": mail,
    }
    values.update(fields)
    return RosterPerson(**values)  # type: ignore[arg-type]


def test_new_people_are_created_in_the_domain_of_their_address() -> None:
    plan = plan_sync("corp", FULL, [entry("a", "ana@acme.test")], [], DOMAINS)
    assert [(c.entry.mail, c.domain) for c in plan.creates] == [("ana@acme.test", "acme.test")]
    assert plan.counts()["created"] == 1


def test_entries_of_domains_the_roster_does_not_hold_are_counted_and_skipped() -> None:
    plan = plan_sync("corp", FULL, [entry("a", "ana@elsewhere.test")], [], DOMAINS)
    assert plan.creates == []
    assert plan.counts()["skipped_unknown_domain"] == 1


def test_unchanged_people_produce_no_action() -> None:
    plan = plan_sync(
        "corp", FULL, [entry("a", "ana@acme.test")], [person(1, "a", "ana@acme.test")], DOMAINS
    )
    assert plan.is_empty()
    assert plan.unchanged == 1


def test_a_changed_address_is_a_rename_matched_by_stable_id() -> None:
    plan = plan_sync(
        "corp", FULL, [entry("a", "ana.g@acme.test")], [person(1, "a", "ana@acme.test")], DOMAINS
    )
    assert plan.creates == [] and plan.removals == []
    (update,) = plan.updates
    assert update.person_id == 1
    assert update.renamed_from == "ana@acme.test"
    assert plan.counts()["renamed"] == 1


def test_two_people_may_swap_addresses_in_one_run() -> None:
    roster = [person(1, "a", "one@acme.test"), person(2, "b", "two@acme.test")]
    entries = [entry("a", "two@acme.test"), entry("b", "one@acme.test")]
    plan = plan_sync("corp", FULL, entries, roster, DOMAINS)
    assert sorted((u.person_id, u.entry.mail) for u in plan.updates) == [
        (1, "two@acme.test"),
        (2, "one@acme.test"),
    ]
    assert plan.skipped["conflict"] == 0


def test_disable_and_reenable() -> None:
    disabled = plan_sync(
        "corp",
        FULL,
        [entry("a", "ana@acme.test", disabled=True)],
        [person(1, "a", "ana@acme.test")],
        DOMAINS,
    )
    assert disabled.counts()["disabled"] == 1
    enabled = plan_sync(
        "corp",
        FULL,
        [entry("a", "ana@acme.test")],
        [person(1, "a", "ana@acme.test", disabled=True)],
        DOMAINS,
    )
    assert enabled.counts()["enabled"] == 1


def test_full_run_removes_people_gone_from_the_directory_incremental_does_not() -> None:
    roster = [person(1, "a", "ana@acme.test"), person(2, "b", "bo@acme.test")]
    full = plan_sync("corp", FULL, [entry("a", "ana@acme.test")], roster, DOMAINS)
    assert [r.person_id for r in full.removals] == [2]
    assert full.removal_share() == 0.5
    incremental = plan_sync("corp", INCREMENTAL, [entry("a", "ana@acme.test")], roster, DOMAINS)
    assert incremental.removals == []


def test_removed_people_who_reappear_are_restored_not_recreated() -> None:
    plan = plan_sync(
        "corp",
        FULL,
        [entry("a", "ana@acme.test")],
        [person(1, "a", "ana@acme.test", removed=True)],
        DOMAINS,
    )
    assert plan.creates == []
    assert [(u.person_id, u.restored) for u in plan.updates] == [(1, True)]


def test_people_of_other_sources_are_never_removed() -> None:
    roster = [person(1, "x", "xena@acme.test", source="other")]
    plan = plan_sync("corp", FULL, [], roster, DOMAINS)
    assert plan.removals == [] and plan.live_in_source == 0


def test_an_address_held_by_someone_else_is_a_conflict_not_a_takeover() -> None:
    roster = [person(1, "x", "ana@acme.test", source="other")]
    plan = plan_sync("corp", FULL, [entry("a", "ana@acme.test")], roster, DOMAINS)
    assert plan.creates == []
    assert plan.skipped["conflict"] == 1
    assert "ana@acme.test" in plan.problems[0]


def test_duplicate_addresses_in_the_directory_keep_the_current_holder() -> None:
    roster = [person(1, "b", "ana@acme.test")]
    entries = [entry("a", "ana@acme.test"), entry("b", "ana@acme.test")]
    plan = plan_sync("corp", FULL, entries, roster, DOMAINS)
    assert plan.unchanged == 1
    assert plan.creates == []
    assert plan.skipped["conflict"] == 1


def test_a_leaver_address_can_go_to_a_new_joiner_in_the_same_full_run() -> None:
    roster = [person(1, "old", "desk@acme.test")]
    plan = plan_sync("corp", FULL, [entry("new", "desk@acme.test")], roster, DOMAINS)
    assert [r.person_id for r in plan.removals] == [1]
    assert [c.entry.external_id for c in plan.creates] == ["new"]


def test_aliases_that_collide_are_dropped_but_the_person_is_kept() -> None:
    entries = [
        entry("a", "ana@acme.test", aliases=("sales@acme.test", "ana@acme.test")),
        entry("b", "bo@acme.test", aliases=("sales@acme.test", "b@acme-brand.test")),
    ]
    plan = plan_sync("corp", FULL, entries, [], DOMAINS)
    got = {c.entry.mail: c.entry.aliases for c in plan.creates}
    assert got == {"ana@acme.test": ("sales@acme.test",), "bo@acme.test": ("b@acme-brand.test",)}
    assert any("sales@acme.test" in p for p in plan.problems)


def test_entries_without_id_or_valid_address_are_skipped_as_invalid() -> None:
    entries = [entry("", "ana@acme.test"), entry("b", ""), entry("c", "not an address")]
    plan = plan_sync("corp", FULL, entries, [], DOMAINS)
    assert plan.creates == []
    assert plan.skipped["invalid"] == 3


def test_moving_to_another_held_domain_updates_the_domain() -> None:
    plan = plan_sync(
        "corp",
        FULL,
        [entry("a", "ana@acme-brand.test")],
        [person(1, "a", "ana@acme.test")],
        DOMAINS,
    )
    (update,) = plan.updates
    assert update.domain == "acme-brand.test" and "domain" in update.changed


def test_unicode_names_and_addresses_pass_through() -> None:
    entries = [entry("a", "josé.núñez@acme.test", display_name="José Núñez (Łódź) 日本")]
    plan = plan_sync("corp", FULL, entries, [], DOMAINS)
    assert plan.creates[0].entry.display_name == "José Núñez (Łódź) 日本"


def test_a_refused_rename_keeps_the_old_address_for_its_holder() -> None:
    """Regression: B's rename was refused, yet B's old address was handed to A."""
    roster = [person(1, "a", "a@acme.test"), person(2, "b", "b@acme.test")]
    roster.append(person(3, "c", "c@acme.test"))
    entries = [entry("a", "b@acme.test"), entry("b", "c@acme.test"), entry("c", "c@acme.test")]
    plan = plan_sync("corp", INCREMENTAL, entries, roster, DOMAINS)
    assert plan.updates == []
    assert plan.skipped["conflict"] == 2


def test_a_refused_change_keeps_the_aliases_it_would_have_dropped() -> None:
    """Regression: A's change was refused, yet A's alias went to a new person."""
    roster = [person(1, "a", "a@acme.test", aliases=("x@acme.test",))]
    roster.append(person(3, "c", "c@acme.test"))
    entries = [
        entry("a", "c@acme.test"),
        entry("n", "n@acme.test", aliases=("x@acme.test",)),
        entry("c", "c@acme.test"),
    ]
    plan = plan_sync("corp", FULL, entries, roster, DOMAINS)
    assert [(c.entry.mail, c.entry.aliases) for c in plan.creates] == [("n@acme.test", ())]


def test_addresses_in_idn_domains_belong_to_the_ascii_named_domain() -> None:
    plan = plan_sync("corp", FULL, [entry("a", "ana@bücher.test")], [], ["xn--bcher-kva.test"])
    assert [(c.entry.mail, c.domain) for c in plan.creates] == [
        ("ana@bücher.test", "xn--bcher-kva.test")
    ]


def test_an_address_with_a_control_character_is_refused() -> None:
    plan = plan_sync("corp", FULL, [entry("a", "ana\x00.evil@acme.test")], [], DOMAINS)
    assert plan.creates == [] and plan.skipped["invalid"] == 1


def test_a_disable_lands_when_the_new_address_is_refused() -> None:
    """Regression: one change that disabled someone and moved them to an address another
    person holds was refused whole, so the person stayed enabled on every later run."""
    roster = [person(1, "a", "ana@acme.test"), person(2, "b", "bo@acme.test")]
    entries = [entry("a", "bo@acme.test", disabled=True), entry("b", "bo@acme.test")]
    for mode in (FULL, INCREMENTAL):
        plan = plan_sync("corp", mode, entries, roster, DOMAINS)
        (update,) = plan.updates
        assert (update.person_id, update.entry.mail, update.entry.disabled) == (
            1,
            "ana@acme.test",
            True,
        )
        assert update.changed == ("disabled",) and update.disabled_now
        assert plan.counts()["disabled"] == 1 and plan.counts()["skipped_conflict"] == 1
        assert plan.problems == [
            "kept 'uid=a,dc=acme,dc=test' at ana@acme.test but disabled:"
            " address bo@acme.test already belongs to someone else"
        ]


def test_a_refused_change_that_takes_no_access_away_changes_nothing() -> None:
    roster = [person(1, "a", "ana@acme.test", disabled=True), person(2, "b", "bo@acme.test")]
    entries = [entry("a", "bo@acme.test")]  # enable and take bo's address: both refused
    plan = plan_sync("corp", INCREMENTAL, entries, roster, DOMAINS)
    assert plan.updates == [] and plan.skipped["conflict"] == 1


def test_an_incremental_run_removes_people_who_no_longer_qualify() -> None:
    """Regression: a changed entry that lost its address, or left the held domains, the
    filter or the scope group, was skipped by incremental runs: the person stayed
    covered until the next full run."""
    roster = [
        person(1, "a", "ana@acme.test"),
        person(2, "b", "bo@acme.test"),
        person(3, "c", "cy@acme.test"),
        person(4, "d", "di@acme.test"),
        person(5, "e", "ed@acme.test"),
    ]
    entries = [entry("a", ""), entry("b", "bo@elsewhere.test"), entry("e", "ed@acme.test")]
    plan = plan_sync("corp", INCREMENTAL, entries, roster, DOMAINS, departed=["c", "x"])
    assert [(r.person_id, r.mail) for r in plan.removals] == [
        (1, "ana@acme.test"),
        (2, "bo@acme.test"),
        (3, "cy@acme.test"),
    ]
    assert plan.unchanged == 1


def test_an_incremental_run_hands_on_an_address_only_its_entries_claim() -> None:
    """An incremental run does not see the entries refused before: an address that one
    of them claims too waits for a full run, which gives it to the first claimer."""
    roster = [person(1, "a", "desk@acme.test")]
    entries = [entry("n", "desk@acme.test")]

    def only_n(addresses: object) -> dict[str, set[str]]:
        return {"desk@acme.test": {"n"}}

    def also_m(addresses: object) -> dict[str, set[str]]:
        return {"desk@acme.test": {"m", "n"}}

    plan = plan_sync("corp", INCREMENTAL, entries, roster, DOMAINS, ["a"], claimants=only_n)
    assert [r.person_id for r in plan.removals] == [1]
    assert [c.entry.mail for c in plan.creates] == ["desk@acme.test"]
    plan = plan_sync("corp", INCREMENTAL, entries, roster, DOMAINS, ["a"], claimants=also_m)
    assert [r.person_id for r in plan.removals] == [1]
    assert plan.creates == [] and plan.skipped["conflict"] == 1
    both = [entry("n", "desk@acme.test"), entry("m", "desk@acme.test")]
    later = plan_sync("corp", FULL, both, [], DOMAINS)
    assert [c.entry.external_id for c in later.creates] == ["m"]
