"""Mail addresses: the pure rules every part shares (no database, no server)."""

from __future__ import annotations


def domain_of(address: str) -> str:
    """The domain part of a mail address, as the roster names domains (IDNA, ASCII)."""
    domain = address.rpartition("@")[2]
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def printable(text: str, limit: int) -> str:
    """``text`` without control characters, cut to ``limit``: safe to store or log."""
    if not text.isprintable():
        text = "".join(c for c in text if c.isprintable())
    return text[:limit]


def plausible(address: str) -> bool:
    """True when ``address`` could be someone's: local@domain, printable, at most 320
    characters. Anything else is answered without asking the database."""
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and len(address) <= 320 and address.isprintable()
