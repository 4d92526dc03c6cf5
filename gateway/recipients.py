"""The RCPT address rules that keep the gateway from being an open relay.

An address is refused when it could route the message somewhere other than the domain
it names, as Postfix's ``allow_untrusted_routing = no`` does: ``%``, ``!`` or ``@`` in
the local part (quoted or not: ``user%other@d``, ``other!user@d``, ``"user@other"@d``),
a source route (``@relay:user@d``), an address literal (``user@[1.2.3.4]``), or a domain
that is no host name. Whether the domain is one the roster holds is the caller's
question; it asks with the normalised domain this module returns.

aiosmtpd (1.4.6) parses ``RCPT TO:<@relay:user@d>`` and hands the handler ``user@d``,
the source route dropped without a word. To refuse source routes the receiver passes the
raw argument of RCPT to :func:`source_route` (or to :func:`check_address`, which accepts
it too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from roster.addresses import printable

MAX_ADDRESS = 320
"""Characters of an address at most (64 local, @, 255 domain)."""

_ROUTING = frozenset("%!@")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class Recipient:
    """An address the gateway may accept: the domain in lower-case ASCII (IDNA)."""

    address: str  # local_part@domain
    local_part: str  # as the client wrote it (case kept: it is the primary's to fold)
    domain: str


@dataclass(frozen=True)
class Refusal:
    """The reply that refuses an address, and a short reason for the log."""

    reply: str
    reason: str


def source_route(argument: str) -> bool:
    """True when the raw argument of RCPT (``<@a,@b:user@d>``) carries a source route:
    a colon before the address's last ``@`` outside a quoted string, however the route
    is spelled (the email parser behind aiosmtpd also takes ``<,@a:user@d>`` and
    ``<(comment)@a:user@d>``, and drops the route)."""
    path = _QUOTED.sub('""', argument).split(">", 1)[0]
    return ":" in path.rpartition("@")[0]


def check_address(address: str) -> Recipient | Refusal:
    """The normalised recipient, or the refusal of an address that routes elsewhere.

    ``address`` is what aiosmtpd hands the RCPT hook (``user@domain``), or the raw
    argument (``<@relay:user@domain>``).
    """
    shown = _shown(address)
    if not address.strip().isprintable():
        return Refusal(f"553 5.1.3 {shown}: malformed address", "malformed address")
    if source_route(address):
        return _refused(shown, "source route", "source routes are not accepted")
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if len(address) > MAX_ADDRESS or not address.isprintable():
        return Refusal(f"553 5.1.3 {shown}: malformed address", "malformed address")
    local, at, domain = address.rpartition("@")
    if not (at and local and domain):
        return Refusal(f"553 5.1.3 {shown}: malformed address", "malformed address")
    if _ROUTING.intersection(local):
        # Quoting hides nothing: "user@other" and "user\@other" hold the @ all the same.
        return _refused(
            shown, "routing local part", "'%', '!' and '@' are not accepted in the local part"
        )
    if domain.startswith("["):
        return _refused(shown, "address literal", "address literals are not accepted")
    normal = host_name(domain)
    if normal is None:
        return _refused(shown, "bad domain", "the domain is not a valid host name")
    return Recipient(f"{local}@{normal}", local, normal)


def host_name(domain: str) -> str | None:
    """``domain`` in lower-case ASCII (IDNA for a UTF-8 name), or None when it is not a
    valid host name: letters, digits and inner hyphens in labels of 1-63, at most 253 in
    all, a final label that is not all digits (``1.2.3.4`` is an address, not a name)."""
    name = domain.lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(name) > 253:
        return None
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return None
    return name


def _refused(shown: str, reason: str, words: str) -> Refusal:
    return Refusal(f"550 5.7.1 {shown}: Relay access denied (this is no relay): {words}", reason)


def _shown(address: str) -> str:
    """The address as a reply may quote it: printable ASCII, short, in angle brackets."""
    text = printable(address.strip().strip("<>"), 100)
    text = text.encode("ascii", "replace").decode("ascii")
    return f"<{text}>"


def check_sender(address: str) -> Refusal | None:
    """The refusal of a MAIL FROM address that could not be passed on as it came (control
    characters such as NUL, angle brackets, no domain, too long), or None. The null
    sender ("" or "<>") is fine."""
    if address in ("", "<>"):
        return None
    shown = _shown(address)
    local, at, domain = address.rpartition("@")
    if (
        len(address) > MAX_ADDRESS
        or not address.isprintable()
        or any(c in address for c in "<> ")
        or not (at and local and domain)
    ):
        return Refusal(f"553 5.1.7 {shown}: malformed sender address", "malformed sender")
    return None
