"""The standby store's users file: the covered addresses Dovecot lets exist.

Dovecot (deploy/dovecot/dovecot.conf) reads this file as its passdb: one address per
line, no password. LMTP to an address not in it answers 550 5.1.1 and the portal's
master user cannot sign in as it. The gateway writes it from the roster, so Dovecot
never reads the roster's database and works the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.orm import Session

from roster.logs import log_event
from roster.retention import emptying_addresses
from roster.standby import covered_addresses

log = logging.getLogger("continuity.gateway")

DEFAULT_USERS_FILE = "/var/lib/continuity-standby/continuity-users"
FILE_MODE = 0o640

# The characters of Dovecot's auth_username_chars in deploy/dovecot/dovecot.conf, less
# "@" and ".": ASCII atext without "/" (the name is part of a path), "%", and nothing
# that the users file (":" separates fields, "#" starts a comment) or LMTP would read
# another way. A quoted or non-ASCII local part has no standby mailbox.
_LOCAL = re.compile(r"[A-Za-z0-9!$&'*+=?^_`{|}~-][A-Za-z0-9!#$&'*+=?^_`{|}~.-]{0,63}")
_DOMAIN = re.compile(
    r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
    re.IGNORECASE,
)


def is_mailbox_address(address: str) -> bool:
    """True when ``address`` can name a standby mailbox: an unquoted ASCII local part
    of safe characters (not starting with "." or "#") and a host name."""
    local, at, domain = address.rpartition("@")
    return bool(at and _LOCAL.fullmatch(local) and _DOMAIN.fullmatch(domain))


def users_file_content(addresses: Iterable[str]) -> tuple[bytes, list[str]]:
    """The file's bytes for ``addresses`` (lower-cased, sorted, each once) and the
    addresses left out because they cannot name a mailbox."""
    kept: set[str] = set()
    left_out: list[str] = []
    for address in addresses:
        normal = address.strip().lower()
        if is_mailbox_address(normal):
            kept.add(normal)
        else:
            left_out.append(address)
    return "".join(f"{address}\n" for address in sorted(kept)).encode("ascii"), left_out


def write_users_file(path: str | os.PathLike[str], addresses: Iterable[str]) -> bool:
    """Make the users file at ``path`` list exactly ``addresses``; True if it changed.

    Nothing is written when the file already says the same. Otherwise a temporary file
    in the same directory is written, flushed to disk and renamed over the old one, so
    Dovecot reads either the old list or the new one, never half of one, and the
    directory is flushed so the rename survives a power loss. Addresses that cannot
    name a mailbox are left out and logged.
    """
    target = Path(path)
    content, left_out = users_file_content(addresses)
    if left_out:
        log_event(
            log,
            logging.WARNING,
            "standby_users_left_out",
            count=len(left_out),
            first=repr(left_out[0])[:200],
        )
    try:
        old = target.stat()
        if target.read_bytes() == content:
            return False
    except FileNotFoundError:
        old = None
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if old is not None:
            _move_time_on(temporary, old)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    log_event(
        log, logging.INFO, "standby_users_written", path=str(target), users=content.count(b"\n")
    )
    return True


def _move_time_on(temporary: str, old: os.stat_result) -> None:
    """Give the new file a modification second later than the old one's.

    Dovecot rereads a passwd-file only when its size or its modification time in whole
    seconds differs from what it last read: a list of the same size written within the
    same second (bob@ replaced by eve@) would otherwise go unnoticed until the next change.
    """
    new = os.stat(temporary)
    if int(new.st_mtime) <= int(old.st_mtime):
        later = (int(old.st_mtime) + 1) * 1_000_000_000
        os.utime(temporary, ns=(new.st_atime_ns, later))


def refresh_users_file(session: Session, path: str | os.PathLike[str]) -> bool:
    """Write the roster's covered addresses to the users file, and the mailboxes retention
    is emptying (their grace is over: the master user must sign in to empty them); True
    if it changed."""
    return write_users_file(path, [*covered_addresses(session), *emptying_addresses(session)])
