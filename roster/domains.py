"""Domains and their Continuity settings: validation and changes, each one audited."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, select
from sqlalchemy.orm import Session

from roster.addresses import printable
from roster.db import connection_of
from roster.models import AuditEvent, Domain, utcnow

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
DOMAIN_RE = re.compile(rf"^(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})$")
HOST_RE = re.compile(rf"^(?:{_LABEL}\.)*{_LABEL}$")


AUDIT_INSERT = cast(Table, AuditEvent.__table__).insert()


class RosterError(Exception):
    """A change the roster refuses; the message says why, for a person to act on."""


@dataclass(frozen=True)
class Primary:
    """Where a domain's own mail server listens."""

    host: str
    port: int


def normalise_domain(name: str) -> str:
    """A domain name in the form the roster stores (lower case, IDNA for non-ASCII)."""
    text = name.strip().rstrip(".").lower()
    try:
        text = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise RosterError(f"{name!r} is not a valid domain name") from None
    if len(text) > 253 or not DOMAIN_RE.match(text):
        raise RosterError(f"{name!r} is not a valid domain name")
    return text


def parse_primary(value: str) -> Primary:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 25 when left out)."""
    text = value.strip()
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?", text) or re.fullmatch(
        r"([^:\[\]]+)(?::(\d+))?", text
    )
    if not match:
        raise RosterError(f"{value!r} is not HOST:PORT")
    host, port_text = match.group(1).lower(), match.group(2)
    port = int(port_text) if port_text else 25
    if not 1 <= port <= 65535:
        raise RosterError(f"{value!r}: the port must be between 1 and 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOST_RE.match(host):
            raise RosterError(f"{value!r}: {host!r} is not a host name or address") from None
    return Primary(host, port)


def primary_text(host: str | None, port: int) -> str | None:
    """``HOST:PORT`` as parse_primary reads it back (``[v6]:PORT`` for IPv6)."""
    if host is None:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def domain_state(domain: Domain) -> dict[str, Any]:
    """The settings of a domain as plain values (for audits, --json and pages)."""
    return {
        "name": domain.name,
        "continuity_active": domain.continuity_active,
        "coverage_mode": domain.coverage_mode,
        "emergency_password_enabled": domain.emergency_password_enabled,
        "primary": primary_text(domain.primary_host, domain.primary_port),
        "primary_tls": domain.primary_tls,
        "failover_automatic": domain.failover_automatic,
        "probe_interval_seconds": domain.probe_interval_seconds,
        "failures_before_failover": domain.failures_before_failover,
    }


def audit_row(
    actor: str,
    action: str,
    *,
    domain_id: int | None = None,
    person_id: int | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    detail: str = "",
    client: str | None = None,
) -> dict[str, Any]:
    """One audit event as the row ``audit``/``audit_many`` write."""
    return {
        "at": utcnow(),
        "actor": printable(actor, 320),
        "action": action,
        "domain_id": domain_id,
        "person_id": person_id,
        "before": before,
        "after": after,
        "detail": printable(detail, 2000),
        "client": printable(client, 64) if client is not None else None,
    }


def audit(
    session: Session | Connection,
    actor: str,
    action: str,
    *,
    domain_id: int | None = None,
    person_id: int | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    detail: str = "",
    client: str | None = None,
) -> None:
    """Write one audit event in the caller's transaction."""
    audit_many(
        session,
        [
            audit_row(
                actor,
                action,
                domain_id=domain_id,
                person_id=person_id,
                before=before,
                after=after,
                detail=detail,
                client=client,
            )
        ],
    )


def audit_many(session: Session | Connection, rows: list[dict[str, Any]]) -> None:
    """Write audit events (``audit_row``s) in the caller's transaction, in one statement."""
    if not rows:
        return
    if isinstance(session, Session) and (session.new or session.dirty):
        session.flush()  # the events may name rows still pending in this session
    # A plain table insert, built once: the sign-in writes one on every attempt, and
    # the ORM's bulk machinery costs more than the statement itself.
    connection_of(session).execute(AUDIT_INSERT, rows if len(rows) > 1 else rows[0])


def add_domain(session: Session, name: str, actor: str, primary: Primary | None = None) -> Domain:
    """Add a domain (Continuity inactive until an admin activates it)."""
    normalised = normalise_domain(name)
    if session.scalar(select(Domain.id).where(Domain.name == normalised)) is not None:
        raise RosterError(f"the domain {normalised} is already in the roster")
    domain = Domain(name=normalised, created_at=utcnow())
    if primary is not None:
        domain.primary_host, domain.primary_port = primary.host, primary.port
    session.add(domain)
    session.flush()
    audit(session, actor, "domain.added", domain_id=domain.id, after=domain_state(domain))
    return domain


def get_domain(session: Session, name: str) -> Domain:
    """The domain called ``name`` or a RosterError saying it is not there."""
    normalised = normalise_domain(name)
    domain = session.scalar(select(Domain).where(Domain.name == normalised))
    if domain is None:
        raise RosterError(f"the domain {normalised} is not in the roster")
    return domain
