"""Password hashing (argon2id) and the emergency password policy."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2id with OWASP's first recommended configuration (Password Storage Cheat Sheet:
# m=19 MiB, t=2, p=1). It costs about 20-30 ms on one core here: slow enough to make
# offline guessing of a stolen hash expensive, fast enough for a sign-in page that must
# stay usable on the day of an outage, when every covered person signs in at once.
# Hashes made with other parameters are rehashed at the next successful sign-in.
HASHER = PasswordHasher(
    time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=Type.ID
)
MIN_LENGTH = 12
MAX_LENGTH = 256


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """True when ``password`` matches ``stored``; never raises for a bad hash."""
    try:
        return HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than today's."""
    try:
        return HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return HASHER.hash("continuity dummy password, never matches anything")


def burn_verify_time(password: str) -> None:
    """Spend the time of one real verification, for addresses that have no hash.

    Unknown and known addresses must cost the same, or timing tells them apart.
    """
    verify_password(_dummy_hash(), password)


def _fold(text: str) -> str:
    """``text`` without case, accents or compatibility forms: "Sofía" and "SOFIA" are
    one name (NFKD splits "í" into "i" and a combining accent, which is dropped)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _contains_identity(password: str, address: str, display_name: str) -> bool:
    """True when the password holds the address, its local part or a part of the name
    (of 4 characters or more), compared without case, accents or separators."""
    folded = _fold(password)
    squeezed = re.sub(r"[\W_]+", "", folded)
    local = _fold(address.partition("@")[0])
    parts = {_fold(address), local, *re.split(r"[\W_]+", local)}
    name_parts = [part for part in re.split(r"[\W_]+", _fold(display_name)) if part]
    parts.update(name_parts)
    # A name written without its spaces or dashes ("SofiaFernandez") is the name too.
    parts.add("".join(name_parts))
    return any(
        len(part) >= 4 and (part in folded or re.sub(r"[\W_]+", "", part) in squeezed)
        for part in parts
    )


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """A small bundled list of the most common passwords (lower case)."""
    text = (Path(__file__).parent / "data" / "common-passwords.txt").read_text(encoding="utf-8")
    return frozenset(
        line.strip().casefold()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def policy_problems(
    password: str,
    confirmation: str,
    *,
    address: str,
    display_name: str,
    directory_password: str | None = None,
) -> list[str]:
    """The reasons an emergency password is refused, as message keys (empty: accepted).

    Keys: too_short, too_long, mismatch, same_as_directory, contains_identity, common.
    """
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append("too_short")
    if len(password) > MAX_LENGTH:
        problems.append("too_long")
    if password != confirmation:
        problems.append("mismatch")
    if directory_password is not None and password == directory_password:
        problems.append("same_as_directory")
    folded = unicodedata.normalize("NFKC", password).casefold()
    if _contains_identity(password, address, display_name):
        problems.append("contains_identity")
    if folded in common_passwords() or folded.rstrip("0123456789!.?") in common_passwords():
        problems.append("common")
    return problems
