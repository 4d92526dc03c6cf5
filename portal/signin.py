"""The sign-in decision: directory password, emergency password or local staff password.

Kept apart from the views so that its rules read in one place. Reads happen in one
short session, the slow checks (directory bind, argon2) outside any transaction, and
the outcome is written in a short write transaction, so that sign-ins on several
workers never queue behind each other's password checks.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import update

from portal.access import (
    METHOD_DIRECTORY,
    METHOD_EMERGENCY,
    METHOD_LOCAL,
    Principal,
)
from portal.ldapauth import BindOutcome, check_password, find_dn
from portal.request_scope import writing_connection
from roster import throttle
from roster.addresses import domain_of, plausible
from roster.config import Config
from roster.domains import audit
from roster.identity import (
    SignInFacts,
    forget_old_sessions,
    local_account_facts,
    normalise_address,
    open_session,
    roles_of,
    sign_in_facts,
)
from roster.models import EmergencyCredential, LocalAccount, utcnow
from roster.passwords import burn_verify_time, hash_password, needs_rehash, verify_password


class Failure(enum.Enum):
    """Why a sign-in did not succeed, as far as the person may be told."""

    WRONG = "wrong"
    THROTTLED = "throttled"
    LOCKED = "locked"


@dataclass
class Outcome:
    """The result of one attempt."""

    principal: Principal | None = None
    method: str | None = None
    failure: Failure | None = None
    wait_seconds: int = 0
    directory_down: bool = False
    session_id: str = ""


def check_sign_in(address: str, password: str, client: str) -> Outcome:
    """Check an address and password; on success the caller starts the session."""
    config: Config = current_app.config["CONTINUITY"]
    address = normalise_address(address)
    well_formed = plausible(address)
    # The facts and the count of this attempt in one short write transaction: the attempt
    # is counted before its password is checked (see roster.throttle.attempt).
    person: SignInFacts | None = None
    account: Any = None  # a row of roster.identity.local_account_facts
    with writing_connection() as write:
        if well_formed:
            person = sign_in_facts(write, address)
            if person is None:
                account = local_account_facts(write, address)
        keys = [throttle.account_key(address), throttle.client_key(client)]
        if person is not None:
            # One count per person, whichever of their addresses is typed.
            keys.append(throttle.person_key(person.person_id))
        verdict = throttle.attempt(write, keys, utcnow())
    stored_emergency = person.emergency_hash if person and person.may_use_emergency else None
    source = None
    if person is not None:
        source = next((d for d in config.directories if d.name == person.source), None)
    elif well_formed:
        domain = domain_of(address)
        source = next((d for d in config.directories if domain in d.domains), None)
    if not verdict.allowed:
        failure = Failure.LOCKED if verdict.locked else Failure.THROTTLED
        return Outcome(failure=failure, wait_seconds=verdict.wait_seconds)

    method: str | None = None
    directory_down = False
    if person is not None and not person.disabled:
        # The emergency password is tried first: typed while the directory is up, it must
        # not reach the directory as a failed bind (an AD lockout policy would count it).
        if stored_emergency is not None and verify_password(stored_emergency, password):
            method = METHOD_EMERGENCY
        elif source is not None:
            outcome = check_password(source, person.dn, password)
            directory_down = outcome is BindOutcome.UNREACHABLE
            if outcome is BindOutcome.ACCEPTED:
                method = METHOD_DIRECTORY
        if stored_emergency is None:
            burn_verify_time(password)
    else:
        if account is not None and verify_password(account.password_hash, password):
            method = METHOD_LOCAL
        elif account is None:
            burn_verify_time(password)
        if source is not None and method is None:
            # Someone the roster does not know, or local staff: ask the directory all the
            # same, so that the answer and its timing are those of any other address.
            # The search costs what a known person's bind costs; binding as whoever it
            # finds would only add failed binds to accounts the roster does not cover.
            _dn, reachable = find_dn(source, address)
            directory_down = not reachable

    now = utcnow()
    person_id = person.person_id if person is not None else None
    domain_id = person.domain_id if person is not None else None
    with writing_connection() as write:
        if method is None:
            # The attempt is counted already. The typed text is kept only when it is
            # someone's address: it may be anything, a password typed in the wrong field.
            actor = address if person is not None or account is not None else "(unknown)"
            audit(
                write,
                actor,
                "sign_in.failed",
                person_id=person_id,
                domain_id=domain_id,
                client=client,
                detail="directory unreachable" if directory_down else "",
            )
            if verdict.locked:
                audit(
                    write,
                    "portal",
                    "account.locked",
                    person_id=person_id,
                    domain_id=domain_id,
                    client=client,
                    detail=actor,
                )
            return Outcome(failure=Failure.WRONG, directory_down=directory_down)
        throttle.succeeded(write, keys)
        # Staff roles are read only now, and only for a password that may carry them: an
        # emergency password opens the person's own mail, never staff powers (it can be
        # reset by the helpdesk, which must not become an admin that way).
        roles = (
            []
            if method == METHOD_EMERGENCY
            else roles_of(
                write,
                person.person_id if person is not None else None,
                account.id if account is not None else None,
            )
        )
        if person is not None:
            if method == METHOD_EMERGENCY and stored_emergency and needs_rehash(stored_emergency):
                write.execute(
                    update(EmergencyCredential)
                    .where(EmergencyCredential.person_id == person.person_id)
                    .values(password_hash=hash_password(password))
                )
            principal = Principal(
                "person",
                person.person_id,
                person.mail,
                person.display_name,
                person.domain_id,
                person.generation,
                roles,
            )
        elif account is not None:
            if needs_rehash(account.password_hash):
                write.execute(
                    update(LocalAccount)
                    .where(LocalAccount.id == account.id)
                    .values(password_hash=hash_password(password))
                )
            principal = Principal(
                "local",
                account.id,
                account.address,
                account.address,
                None,
                account.session_generation,
                roles,
            )
        else:
            return Outcome(failure=Failure.WRONG)
        audit(
            write,
            address,
            "sign_in",
            person_id=person_id,
            domain_id=domain_id,
            client=client,
            detail=method,
        )
        session_id = open_session(write, principal.kind, principal.id)
        if secrets.randbelow(64) == 0:
            # Records of sessions past their lifetime are swept now and then, not on every
            # sign-in: it is the busiest request on the day of an outage.
            lifetime = current_app.config["CONTINUITY_LIFETIME_SECONDS"]
            forget_old_sessions(write, now - timedelta(seconds=lifetime))
    return Outcome(principal=principal, method=method, session_id=session_id)
