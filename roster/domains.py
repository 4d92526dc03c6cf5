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


class Refused(RosterError):
    """A change the rules refuse; nothing was changed.

    ``code`` and ``params`` let the portal word it in the reader's language; the message
    is the English text the command line prints.
    """

    def __init__(self, code: str, message: str, **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.params = params


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


def primary_host(value: str) -> str:
    """A primary server's host as the roster stores it, or ``Refused`` saying why not.

    An IP address must parse (IPv6 with or without brackets); anything else must be a
    host name as RFC 1123 has it: labels of letters, digits and hyphens, none longer
    than 63, the whole at most 253, and a last label that is not all digits (so that
    ``999.999.999.999``, ``1.2.3.4.5`` or ``0`` is no name, but a wrong address).
    """
    text = printable(value.strip(), 300).lower()
    bare = text.removeprefix("[").removesuffix("]") if text.startswith("[") else text
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        scoped = isinstance(address, ipaddress.IPv6Address) and address.scope_id
        if scoped or address.is_unspecified or address.is_multicast:
            raise Refused("primary_ip", f"{text!r} is not a usable IP address", value=text)
        return str(address)
    name = bare.removesuffix(".")
    if _LOOKS_NUMERIC.fullmatch(name):
        raise Refused("primary_ip", f"{text!r} is not a valid IP address", value=text)
    if bare != text:
        name = ""  # brackets hold an IPv6 address, never a name
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            name = ""
    if len(name) > 253 or not HOST_RE.match(name) or name.rsplit(".", 1)[-1].isdigit():
        raise Refused("primary_host", f"{text!r} is not a host name or IP address", value=text)
    return name


_LOOKS_NUMERIC = re.compile(r"[0-9.]*[0-9][0-9.]*|[0-9a-f.]*:[0-9a-f:.%]*")
"""Digits and dots only, or hex with colons: meant as an IP address, whether or not one."""


def parse_primary(value: str) -> Primary:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 25 when left out).

    The host is checked as ``primary_host`` checks it; a RosterError says what is wrong.
    """
    text = value.strip()
    match = re.fullmatch(r"(\[[^\]]*\])(?::(\d+))?", text) or re.fullmatch(
        r"([^:\[\]]+)(?::(\d+))?", text
    )
    if not match:
        raise RosterError(f"{value!r} is not HOST:PORT")
    port_text = match.group(2)
    port = int(port_text) if port_text and len(port_text) <= 5 else 0 if port_text else 25
    if not 1 <= port <= 65535:
        raise RosterError(f"{value!r}: the port must be between 1 and 65535")
    try:
        host = primary_host(match.group(1))
    except Refused as refused:
        raise RosterError(f"{value!r}: {refused}") from None
    return Primary(host, port)


def primary_text(host: str | None, port: int) -> str | None:
    """``HOST:PORT`` as parse_primary reads it back (``[v6]:PORT`` for IPv6)."""
    if host is None:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


TLS_MODES = ("starttls", "tls", "none")
"""How the gateway talks to a primary server: STARTTLS on a plain port (the usual for port
25), TLS from the first byte (port 465), or neither (a primary on a trusted network)."""
PROBE_INTERVAL_RANGE = (10, 3600)
FAILURES_RANGE = (1, 20)
RECOVER_AFTER_RANGE = (1, 20)
LANGUAGES = ("en", "es")
"""The languages of the mail the product writes to a domain's people."""


@dataclass(frozen=True)
class PrimarySettings:
    """A domain's primary mail server and its failover thresholds, as typed."""

    host: str
    port: int
    tls: str
    automatic: bool
    probe_interval_seconds: int
    failures_before_failover: int
    tls_verify: bool = True
    recover_after: int = 3
    failover_codes: str = ""
    language: str = "en"
    verify_recipients: bool = True
    sent_copies: bool = False


class PrimaryRefused(Refused):
    """Primary server settings with one wrong field or more: ``refusals`` has one
    ``Refused`` a wrong field, in the order of the form; the first gives the code."""

    def __init__(self, refusals: list[Refused]) -> None:
        first = refusals[0]
        super().__init__(first.code, "; ".join(str(r) for r in refusals), **first.params)
        self.refusals = refusals


def check_primary(
    host: str,
    port: int | str,
    tls: str,
    automatic: bool,
    probe_interval_seconds: int | str,
    failures_before_failover: int | str,
    *,
    tls_verify: bool = True,
    recover_after: int | str = 3,
    failover_codes: str = "",
    language: str = "en",
    verify_recipients: bool = True,
    sent_copies: bool = False,
) -> PrimarySettings:
    """Validated settings, or ``PrimaryRefused`` naming every wrong field."""
    refusals: list[Refused] = []

    def checked(check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except Refused as refused:
            refusals.append(refused)
            return None

    text = checked(primary_host, str(host))
    number = checked(_number, port, 1, 65535, "primary_port", "the port")
    if tls not in TLS_MODES:
        refusals.append(
            Refused("primary_tls", f"{tls!r} is not one of {', '.join(TLS_MODES)}", value=tls)
        )
    interval = checked(
        _number,
        probe_interval_seconds,
        *PROBE_INTERVAL_RANGE,
        "probe_interval",
        "the probe interval",
    )
    failures = checked(
        _number,
        failures_before_failover,
        *FAILURES_RANGE,
        "failures_before_failover",
        "the failures before failover",
    )
    recover = checked(
        _number, recover_after, *RECOVER_AFTER_RANGE, "recover_after", "the checks before hand-back"
    )
    codes = checked(failover_code_list, failover_codes)
    if language not in LANGUAGES:
        refusals.append(
            Refused(
                "language",
                f"{printable(str(language), 20)!r} is not one of {', '.join(LANGUAGES)}",
                value=printable(str(language), 20),
            )
        )
    if refusals:
        raise PrimaryRefused(refusals)
    return PrimarySettings(
        text,
        number,
        tls,
        bool(automatic),
        interval,
        failures,
        tls_verify=bool(tls_verify),
        recover_after=recover,
        failover_codes=codes,
        language=language,
        verify_recipients=bool(verify_recipients),
        sent_copies=bool(sent_copies),
    )


MAX_FAILOVER_CODES = 10


def failover_code_list(value: str) -> str:
    """Reply codes that count as a failure of the whole server, as the roster stores them
    (``452,552``: 3-digit 4xx or 5xx codes, each once, in order), or ``Refused``.

    A 2xx or 3xx code is no failure, and anything else is no SMTP reply code."""
    text = str(value).strip()
    codes: list[str] = []
    for part in re.split(r"[ \t,;]+", text[:200]):
        if not part:
            continue
        if not re.fullmatch(r"[45][0-5][0-9]", part):
            shown = printable(part, 20)
            raise Refused(
                "failover_code",
                f"{shown!r} is not an SMTP reply code of a failure (4xx or 5xx, three digits)",
                value=shown,
            )
        if part not in codes:
            codes.append(part)
    if len(codes) > MAX_FAILOVER_CODES or len(text) > 200:
        raise Refused(
            "failover_codes",
            f"at most {MAX_FAILOVER_CODES} reply codes",
            limit=MAX_FAILOVER_CODES,
        )
    return ",".join(codes)


def _number(value: int | str, low: int, high: int, code: str, name: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise Refused(
            code,
            f"{name} must be a whole number from {low} to {high}",
            value=printable(str(value), 20),
            low=low,
            high=high,
        )
    return number


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
        "primary_tls_verify": domain.primary_tls_verify,
        "recover_after": domain.recover_after,
        "failover_codes": domain.failover_codes,
        "language": domain.language,
        "verify_recipients": domain.verify_recipients,
        "sent_copies_to_primary": domain.sent_copies_to_primary,
        "webmail_access": domain.webmail_access,
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
