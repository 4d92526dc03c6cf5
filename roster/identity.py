"""Who someone is in the roster, what they may do, and their emergency credentials."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from roster.addresses import plausible
from roster.coverage import is_covered, lists_person, person_is_covered
from roster.db import connection_of
from roster.domains import audit
from roster.models import (
    COVERAGE_SELECTED,
    Alias,
    CoverageEntry,
    Domain,
    EmergencyCredential,
    LocalAccount,
    Person,
    PortalSession,
    ResetCode,
    StaffRole,
    utcnow,
)
from roster.passwords import hash_password

ROLE_HELPDESK = "helpdesk"
ROLE_ADMIN = "admin"
ROLE_GLOBAL_ADMIN = "global_admin"
ROLES = (ROLE_HELPDESK, ROLE_ADMIN, ROLE_GLOBAL_ADMIN)

# 16 characters of Crockford's base32 (no I, L, O, U): 80 bits, read aloud in four groups.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 16


def normalise_address(address: str) -> str:
    """An address as the roster stores it."""
    return address.strip().lower()


def _live_with_address(address: Any) -> ColumnElement[bool]:
    """The condition "a live person whose address or alias this is" (a value or a
    bound parameter)."""
    return and_(
        Person.removed_at.is_(None),
        or_(
            Person.mail == address,
            Person.id.in_(select(Alias.person_id).where(Alias.address == address)),
        ),
    )


def find_person(session: Session, address: str) -> Person | None:
    """The live person whose address or alias this is."""
    address = normalise_address(address)
    if not plausible(address):
        return None
    return session.scalar(select(Person).where(_live_with_address(address)).limit(1))


_LOCAL_ACCOUNT_FACTS = select(
    LocalAccount.id,
    LocalAccount.address,
    LocalAccount.password_hash,
    LocalAccount.session_generation,
).where(LocalAccount.address == bindparam("address"))


def local_account_facts(session: Session | Connection, address: str) -> Any:
    """The sign-in's view of the local staff account with this address (a row with id,
    address, password_hash and session_generation), or None."""
    address = normalise_address(address)
    if not plausible(address):
        return None
    return connection_of(session).execute(_LOCAL_ACCOUNT_FACTS, {"address": address}).first()


def find_local_account(session: Session, address: str) -> LocalAccount | None:
    """The local staff account with this address."""
    address = normalise_address(address)
    if not plausible(address):
        return None
    return session.scalar(select(LocalAccount).where(LocalAccount.address == address))


@dataclass(frozen=True)
class SignInFacts:
    """What the sign-in needs to know about a person, read in one query."""

    person_id: int
    mail: str
    display_name: str
    domain_id: int
    source: str
    dn: str
    disabled: bool
    generation: int
    emergency_hash: str | None
    may_use_emergency: bool


@lru_cache(maxsize=1)
def _sign_in_facts_query() -> Any:
    """The statement, built once: building and keying it cost more than running it."""
    address: Any = bindparam("address")
    listed = exists(select(CoverageEntry.id).where(lists_person()))
    return (
        select(
            Person.id,
            Person.mail,
            Person.display_name,
            Person.domain_id,
            Person.source,
            Person.dn,
            Person.disabled,
            Person.session_generation,
            Domain.continuity_active,
            Domain.coverage_mode,
            Domain.emergency_password_enabled,
            EmergencyCredential.password_hash,
            listed.label("listed"),
        )
        .join(Domain, Domain.id == Person.domain_id)
        .outerjoin(EmergencyCredential, EmergencyCredential.person_id == Person.id)
        .where(_live_with_address(address))
        .limit(1)
    )


def sign_in_facts(session: Session | Connection, address: str) -> SignInFacts | None:
    """The live person with this address or alias, and their emergency password rights.

    One query: the sign-in page is the busiest page on the day of an outage.
    """
    address = normalise_address(address)
    if not plausible(address):
        return None
    # Executed on the connection: plain rows, without the ORM's per-statement work.
    row = connection_of(session).execute(_sign_in_facts_query(), {"address": address}).first()
    if row is None:
        return None
    may_use = bool(row.emergency_password_enabled) and is_covered(
        service_active=bool(row.continuity_active),
        coverage_mode=row.coverage_mode,
        listed=bool(row.listed),
        disabled=bool(row.disabled),
        removed=False,
    )
    return SignInFacts(
        row.id,
        row.mail,
        row.display_name,
        row.domain_id,
        row.source,
        row.dn,
        bool(row.disabled),
        row.session_generation,
        row.password_hash,
        may_use,
    )


def is_listed(session: Session, person: Person) -> bool:
    """True when the person is on their domain's "only selected users" list."""
    found = session.scalar(
        select(CoverageEntry.id).join(Person, lists_person()).where(Person.id == person.id)
    )
    return found is not None


def covered(session: Session, person: Person) -> bool:
    """True when Continuity Service covers the person now."""
    domain = session.get(Domain, person.domain_id)
    if domain is None:
        return False
    # The list matters only with "only selected users": no query for it otherwise.
    listed = domain.coverage_mode == COVERAGE_SELECTED and is_listed(session, person)
    return person_is_covered(domain, person, listed)


def may_use_emergency_password(session: Session, person: Person) -> bool:
    """The emergency password works only for covered people, where it is switched on."""
    domain = session.get(Domain, person.domain_id)
    return bool(domain and domain.emergency_password_enabled and covered(session, person))


def emergency_credential(session: Session, person: Person) -> EmergencyCredential | None:
    """The person's emergency password hash, if one is set."""
    return session.get(EmergencyCredential, person.id)


SESSION_INSERT = cast(Table, PortalSession.__table__).insert()
_ROLES_OF_PERSON = select(StaffRole.role, StaffRole.domain_id).where(
    StaffRole.person_id == bindparam("id")
)
_ROLES_OF_ACCOUNT = select(StaffRole.role, StaffRole.domain_id).where(
    StaffRole.local_account_id == bindparam("id")
)


def session_id_hash(session_id: str) -> str:
    """The stored form of a portal session id."""
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


def open_session(session: Session | Connection, kind: str, principal_id: int) -> str:
    """Record a new portal session; returns its id for the browser's cookie."""
    session_id = secrets.token_urlsafe(32)
    connection_of(session).execute(
        SESSION_INSERT,
        {
            "id_hash": session_id_hash(session_id),
            "kind": kind,
            "principal_id": principal_id,
            "created_at": utcnow(),
        },
    )
    return session_id


def session_is_open(session: Session, session_id: str, kind: str, principal_id: int) -> bool:
    """True when this portal session exists and belongs to this principal."""
    row = session.get(PortalSession, session_id_hash(session_id))
    return row is not None and row.kind == kind and row.principal_id == principal_id


def close_session(session: Session, session_id: str) -> None:
    """Forget one portal session (sign-out)."""
    session.execute(
        delete(PortalSession).where(PortalSession.id_hash == session_id_hash(session_id))
    )


def forget_old_sessions(session: Session | Connection, older_than: datetime) -> None:
    """Drop the records of sessions past the absolute lifetime."""
    session.execute(delete(PortalSession).where(PortalSession.created_at < older_than))


def end_sessions(
    session: Session,
    person: Person | None = None,
    account: LocalAccount | None = None,
    keep: str | None = None,
) -> None:
    """End every open portal session of a person or local account (all but ``keep``)."""
    for kind, row in (("person", person), ("local", account)):
        if row is not None:
            condition = [PortalSession.kind == kind, PortalSession.principal_id == row.id]
            if keep is not None:
                condition.append(PortalSession.id_hash != session_id_hash(keep))
            session.execute(delete(PortalSession).where(*condition))
    if person is not None:
        session.execute(
            update(Person)
            .where(Person.id == person.id)
            .values(session_generation=Person.session_generation + 1)
            .execution_options(synchronize_session="fetch")
        )
    if account is not None:
        session.execute(
            update(LocalAccount)
            .where(LocalAccount.id == account.id)
            .values(session_generation=LocalAccount.session_generation + 1)
            .execution_options(synchronize_session="fetch")
        )


def set_person_emergency_password(
    session: Session,
    person: Person,
    password: str,
    actor: str,
    client: str | None = None,
    keep: str | None = None,
) -> None:
    """Store a new emergency password (policy already checked); end the person's other
    sessions (all but ``keep``)."""
    credential = emergency_credential(session, person)
    hashed = hash_password(password)
    if credential is None:
        session.add(EmergencyCredential(person_id=person.id, password_hash=hashed, set_at=utcnow()))
        action = "emergency_password.set"
    else:
        credential.password_hash, credential.set_at = hashed, utcnow()
        action = "emergency_password.changed"
    end_sessions(session, person, keep=keep)
    audit(session, actor, action, domain_id=person.domain_id, person_id=person.id, client=client)


def _code_digest(code: str) -> str:
    """The stored form of a reset code: its 80 random bits make a plain hash enough."""
    canonical = "".join(c for c in code.upper() if c in CODE_ALPHABET)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def format_code(code: str) -> str:
    """XXXX-XXXX-XXXX-XXXX, easier to read aloud on the phone."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def issue_reset_code(
    session: Session, person: Person, actor: str, valid_for: timedelta, client: str | None = None
) -> str:
    """A new single-use reset code for the person (shown once, stored only hashed).

    Earlier unused codes stop working, and the person's sessions end.
    """
    now = utcnow()
    session.execute(
        update(ResetCode)
        .where(ResetCode.person_id == person.id, ResetCode.used_at.is_(None))
        .values(used_at=now)
    )
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    session.add(
        ResetCode(
            person_id=person.id,
            code_hash=_code_digest(code),
            issued_by=actor,
            issued_at=now,
            expires_at=now + valid_for,
        )
    )
    end_sessions(session, person)
    audit(
        session,
        actor,
        "reset_code.issued",
        domain_id=person.domain_id,
        person_id=person.id,
        after={"expires_at": (now + valid_for).isoformat(timespec="seconds")},
        client=client,
    )
    return format_code(code)


def valid_reset_code(session: Session, person: Person, now: datetime) -> ResetCode | None:
    """The person's reset code that still works, if any (the newest: issuing voids the
    others)."""
    return session.scalar(
        select(ResetCode)
        .where(
            ResetCode.person_id == person.id,
            ResetCode.used_at.is_(None),
            ResetCode.expires_at > now,
        )
        .order_by(ResetCode.id.desc())
        .limit(1)
    )


def redeem_reset_code(
    session: Session, person: Person, code: str, now: datetime, *, use: bool = True
) -> bool:
    """Use up the person's valid reset code matching ``code``; False if there is none.

    With ``use=False`` only say whether it would work (the code stays valid).
    """
    digest = _code_digest(code)
    for candidate in session.scalars(
        select(ResetCode)
        .where(
            ResetCode.person_id == person.id,
            ResetCode.used_at.is_(None),
            ResetCode.expires_at > now,
        )
        .with_for_update()
    ):
        if hmac.compare_digest(candidate.code_hash, digest):
            if use:
                candidate.used_at = now
            return True
    return False


@dataclass(frozen=True)
class Role:
    """One role held, over one domain (None: every domain, for global admins)."""

    role: str
    domain_id: int | None


def roles_of(
    session: Session | Connection, person_id: int | None, account_id: int | None
) -> list[Role]:
    """The staff roles of a person (from the directory or given locally) or local account."""
    if person_id is not None:
        query, number = _ROLES_OF_PERSON, person_id
    elif account_id is not None:
        query, number = _ROLES_OF_ACCOUNT, account_id
    else:
        return []
    rows = connection_of(session).execute(query, {"id": number})
    return [Role(role, domain_id) for role, domain_id in rows]


def add_local_staff(
    session: Session, address: str, password: str, role: str, domain: Domain | None, actor: str
) -> LocalAccount:
    """Create (or extend) a local staff account with a role."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    account = find_local_account(session, address)
    if account is None:
        account = LocalAccount(
            address=normalise_address(address), password_hash=hash_password(password)
        )
        session.add(account)
        session.flush()
    else:
        account.password_hash = hash_password(password)
        end_sessions(session, account=account)
    domain_id = domain.id if domain else None
    same_scope = (
        StaffRole.domain_id.is_(None) if domain_id is None else StaffRole.domain_id == domain_id
    )
    held = session.scalar(
        select(StaffRole.id).where(
            StaffRole.local_account_id == account.id, StaffRole.role == role, same_scope
        )
    )
    if held is None:
        session.add(
            StaffRole(
                local_account_id=account.id,
                role=role,
                domain_id=domain_id,
                origin="local",
                created_at=utcnow(),
            )
        )
    audit(
        session,
        actor,
        "staff.added",
        domain_id=domain.id if domain else None,
        after={"address": account.address, "role": role},
    )
    session.flush()
    return account


def forget_reset_codes(session: Session, person: Person) -> None:
    """Drop every code of a person (after a successful reset)."""
    session.execute(delete(ResetCode).where(ResetCode.person_id == person.id))
