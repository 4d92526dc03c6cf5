"""The roster's rules for the identity layer: coverage, password policy, hashes, codes."""

from __future__ import annotations

import itertools
import re
from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, select

from portal import create_app
from roster.config import load_config
from roster.coverage import is_covered
from roster.db import session_factory, transaction
from roster.domains import add_domain
from roster.identity import CODE_ALPHABET, issue_reset_code, redeem_reset_code
from roster.models import EmergencyCredential, Person, ResetCode, utcnow
from roster.passwords import HASHER, needs_rehash, policy_problems
from tests.directory import Continuity


@pytest.mark.parametrize(
    ("active", "mode", "listed", "disabled", "removed"),
    list(itertools.product([True, False], ["all", "selected"], *[[True, False]] * 3)),
)
def test_who_is_covered(
    active: bool, mode: str, listed: bool, disabled: bool, removed: bool
) -> None:
    """The whole table of cases: active service, mode, on the list, disabled, removed."""
    expected = active and not disabled and not removed and (mode == "all" or listed)
    assert (
        is_covered(
            service_active=active,
            coverage_mode=mode,
            listed=listed,
            disabled=disabled,
            removed=removed,
        )
        is expected
    )


@pytest.mark.parametrize(
    ("password", "confirmation", "problems"),
    [
        ("short-one", "short-one", ["too_short"]),
        ("Tr1ckier-Horse-Lamp", "Tr1ckier-Horse-Lamp2", ["mismatch"]),
        ("my-name-is-garcia-ok", "my-name-is-garcia-ok", ["contains_identity"]),
        ("ana.garcia-2026-spring", "ana.garcia-2026-spring", ["contains_identity"]),
        ("password123456", "password123456", ["common"]),
        ("Password12345!", "Password12345!", ["common"]),
        ("Directory-Pass-42", "Directory-Pass-42", ["same_as_directory"]),
        ("Quiet-Harbour-Lantern-7", "Quiet-Harbour-Lantern-7", []),
    ],
)
def test_emergency_password_policy(password: str, confirmation: str, problems: list[str]) -> None:
    assert (
        policy_problems(
            password,
            confirmation,
            address="ana.garcia@acme.test",
            display_name="Ana Garcia",
            directory_password="Directory-Pass-42",
        )
        == problems
    )


def test_hash_parameters_are_at_least_owasp_minimum() -> None:
    """argon2id, 19 MiB, 2 passes, 1 lane (OWASP Password Storage Cheat Sheet)."""
    stored = HASHER.hash("Quiet-Harbour-Lantern-7")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert not needs_rehash(stored)
    assert needs_rehash(PasswordHasher(time_cost=1, memory_cost=8192).hash("x"))


def test_reset_codes_are_random_single_use_and_expire(engine: Engine) -> None:
    factory = session_factory(engine)
    with transaction(factory) as session:
        domain = add_domain(session, "acme.test", "test")
        person = Person(
            domain_id=domain.id, source="corp", external_id="a", dn="uid=a", mail="a@acme.test"
        )
        session.add(person)
        session.flush()
        codes = {issue_reset_code(session, person, "helpdesk@acme.test", timedelta(hours=1))}
        code = issue_reset_code(session, person, "helpdesk@acme.test", timedelta(hours=1))
        codes.add(code)
    assert len(codes) == 2
    assert re.fullmatch(rf"[{CODE_ALPHABET}]{{4}}(-[{CODE_ALPHABET}]{{4}}){{3}}", code)
    with transaction(factory) as session:
        stored = session.scalars(select(ResetCode.code_hash)).all()
        assert all(code.replace("-", "") not in h for h in stored)
        person = session.scalars(select(Person)).one()
        first = sorted(codes - {code})[0]
        assert not redeem_reset_code(session, person, first, utcnow())  # replaced by the new one
        assert not redeem_reset_code(session, person, code, utcnow() + timedelta(hours=2))
        assert redeem_reset_code(session, person, code.lower().replace("-", " "), utcnow())
        assert not redeem_reset_code(session, person, code, utcnow())  # used up


def test_an_old_hash_is_upgraded_at_the_next_emergency_sign_in(
    tmp_path: Path, database_url: str, engine: Engine
) -> None:
    tool = Continuity(tmp_path, database_url)
    tool.configure()
    text = tool.path.read_text() + "\n[portal]\nsecure_cookies = false\n"
    tool.path.write_text(text)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    with transaction(session_factory(engine)) as session:
        domain = add_domain(session, "acme.test", "test")
        domain.continuity_active = domain.emergency_password_enabled = True
        person = Person(
            domain_id=domain.id, source="corp", external_id="a", dn="uid=a", mail="a@acme.test"
        )
        session.add(person)
        session.flush()
        session.add(
            EmergencyCredential(
                person_id=person.id,
                password_hash=weak.hash("Quiet-Harbour-Lantern-7"),
                set_at=utcnow(),
            )
        )
    app = create_app({"TESTING": True}, config=load_config(tool.path, environ={}))
    try:
        client = app.test_client()
        page = client.get("/sign-in").get_data(as_text=True)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert token is not None
        response = client.post(
            "/sign-in",
            data={
                "csrf_token": token.group(1),
                "address": "a@acme.test",
                "password": "Quiet-Harbour-Lantern-7",
            },
        )
        assert response.status_code == 302 and response.headers["Location"] == "/me"
    finally:
        app.extensions["roster_engine"].dispose()
    with engine.connect() as connection:
        stored = connection.scalar(select(EmergencyCredential.password_hash))
    assert stored is not None and stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
