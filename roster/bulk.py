"""Many addresses on or off a domain's list of selected users at once: pasted (one a
line, or separated by commas, semicolons or spaces) or a CSV file as spreadsheets export
it. Each line stands alone and gets a line of the report; the rules are a single add's
or remove's (``roster.service``)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, delete, select
from sqlalchemy.orm import Session

from roster.addresses import plausible
from roster.coverage import lists_person
from roster.db import chunks
from roster.domains import Refused, audit_many
from roster.identity import normalise_address
from roster.models import CoverageEntry, Domain, Person, utcnow
from roster.service import (
    listing_event,
    listing_refusal,
    people_by_address,
    require_selected,
    typed_address,
)

BULK_LIMIT = 10_000
"""Lines one bulk request may hold; more is refused whole, so that nothing is half done."""

ADD, REMOVE = "add", "remove"


@dataclass
class BulkLine:
    """What happened to one line of a bulk request."""

    line: int
    address: str
    done: bool
    code: str  # "added", "removed", or the code of the refusal
    message: str
    params: dict[str, Any] = field(default_factory=dict)


_SEPARATORS = re.compile(r"[,;\s]+")
_HEADER_NAMES = {
    "address",
    "email",
    "e-mail",
    "mail",
    "email address",
    "e-mail address",
    "correo",
    "correo electrónico",
    "dirección",
    "direccion",
    "dirección de correo",
    "dirección de correo electrónico",
}


def parse_bulk(text: str) -> list[tuple[int, str]]:
    """The addresses of a pasted list or a CSV file, each with its line number.

    Pasted text may separate addresses by new lines, commas, semicolons or spaces. A CSV
    file (a first line naming an address column, as spreadsheets export it) is read by
    that column; other columns are ignored. Empty lines are skipped.
    """
    try:
        return _parse_bulk(text)
    except csv.Error as error:
        line = getattr(error, "line", None) or 0
        raise Refused("bad_csv", f"the file cannot be read as CSV: {error}", line=line) from None


def _parse_bulk(text: str) -> list[tuple[int, str]]:
    lines = text.removeprefix("\ufeff").splitlines()  # Excel's "CSV UTF-8" begins with a BOM
    if lines and ("," in lines[0] or ";" in lines[0]):
        delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
        header = [
            cell.strip().lower() for cell in next(csv.reader([lines[0]], delimiter=delimiter))
        ]
        column = next((i for i, name in enumerate(header) if name in _HEADER_NAMES), None)
        if column is not None:
            found = []
            reader = csv.reader(io.StringIO("\n".join(lines[1:])), delimiter=delimiter)
            try:
                for row in reader:
                    number = reader.line_num + 1
                    if len(row) > column and row[column].strip():
                        found.append((number, row[column].strip()))
                    elif any(cell.strip() for cell in row):
                        found.append((number, ""))  # reported: no address on this line
            except csv.Error as error:
                error.line = reader.line_num + 1  # type: ignore[attr-defined]
                raise
            return found
    first = 1
    if lines and lines[0].strip().strip('"').lower() in _HEADER_NAMES:
        lines, first = lines[1:], 2  # a one-column CSV: its header is no address
    found = []
    for number, line in enumerate(lines, start=first):
        for item in _SEPARATORS.split(line.strip()):
            if item:
                found.append((number, item))
    return found


def bulk(
    session: Session,
    domain: Domain,
    text: str,
    action: str,
    actor: str,
    client: str | None = None,
) -> list[BulkLine]:
    """Add or remove every address of ``text``; a report line for each.

    Each line stands alone: a refused address changes nothing and does not stop the
    others, and each change is audited like a single one. The addresses are looked up
    a few hundred at a time and the changes written in a few statements, so that a
    list of thousands holds the roster's write lock for a moment, not for seconds.
    """
    if action not in (ADD, REMOVE):
        raise ValueError(action)
    require_selected(domain)
    entries = parse_bulk(text)
    if len(entries) > BULK_LIMIT:
        raise Refused(
            "too_many",
            f"{len(entries)} addresses: at most {BULK_LIMIT} at once",
            count=len(entries),
            limit=BULK_LIMIT,
        )
    addresses = {normalise_address(address) for _, address in entries}
    people = people_by_address(session, domain, sorted(filter(plausible, addresses)))
    ids = sorted({row.id for row in people.values() if row.domain_id == domain.id})
    listed: set[int] = set()
    for part in chunks(ids):
        listed.update(
            session.scalars(
                select(Person.id)
                .join(CoverageEntry, lists_person())
                .where(Person.id.in_(part), Person.domain_id == domain.id)
            )
        )

    report: list[BulkLine] = []
    changed: list[Any] = []
    seen: set[str] = set()
    for number, address in entries:
        try:
            key = typed_address(address)
            if key in seen:
                raise Refused("duplicate", f"{key} is repeated above", address=key)
            seen.add(key)
            row: Any = people.get(key)
            refused = listing_refusal(key, domain, row)
            if refused is not None:
                raise refused
            if action == ADD and row.id in listed:
                raise Refused(
                    "already_listed", f"{row.mail} is already on the list", address=row.mail
                )
            if action == REMOVE and row.id not in listed:
                raise Refused("not_listed", f"{row.mail} is not on the list", address=row.mail)
        except Refused as refusal:
            report.append(
                BulkLine(number, address, False, refusal.code, str(refusal), refusal.params)
            )
            continue
        # Two addresses of one person (address and alias): the second finds them done.
        (listed.add if action == ADD else listed.discard)(row.id)
        changed.append(row)
        done = "added" if action == ADD else "removed"
        report.append(
            BulkLine(number, address, True, done, f"{row.mail} {done}", {"address": row.mail})
        )

    now = utcnow()
    changed_ids = [row.id for row in changed]
    for part in chunks(changed_ids):
        # REMOVE: their entries go. ADD: an entry left from another domain the person
        # has moved out of goes first (a person holds one entry at most).
        going: ColumnElement[bool] = CoverageEntry.person_id.in_(part)
        if action == ADD:
            going = and_(going, CoverageEntry.domain_id != domain.id)
        session.execute(delete(CoverageEntry).where(going))
    if action == ADD:
        for part in chunks(changed, 1000):
            session.execute(
                cast(Table, CoverageEntry.__table__).insert(),
                [
                    {
                        "domain_id": domain.id,
                        "person_id": row.id,
                        "added_by": actor,
                        "added_at": now,
                    }
                    for row in part
                ],
            )
    audit_many(
        session, [listing_event(domain, row, action == ADD, actor, client) for row in changed]
    )
    return report
