"""Reading the directory: paged, escaped, and a failed read is never a short directory."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from roster.addresses import domain_of
from roster.config import DirectoryConfig
from roster.ldap import discard, server_pool
from sync.plan import DirectoryEntry

AD_IN_CHAIN = "1.2.840.113556.1.4.1941"
UAC_ACCOUNTDISABLE = 0x2
FALSE_VALUES = frozenset({"", "0", "false", "no", "off"})


class DirectoryReadError(Exception):
    """The directory could not be read whole; the message says why."""


def connect(config: DirectoryConfig, *, lean: bool = True) -> ldap3.Connection:
    """Bind to the first server of the source that answers, with timeouts and TLS.

    ``lean`` installs the lean entry decoder (the benchmark turns it off to measure
    ldap3's own read).
    """
    pool = server_pool(config)
    connection = None
    try:
        connection = ldap3.Connection(
            pool,
            user=config.bind_dn or None,
            password=config.bind_password or None,
            auto_bind=ldap3.AUTO_BIND_NONE,
            raise_exceptions=True,
            return_empty_attributes=not lean,
            auto_range=not lean,
            receive_timeout=max(1, math.ceil(config.read_timeout)),
            auto_referrals=False,
            read_only=True,
        )
        connection.open()
        if config.start_tls:
            connection.start_tls()
        connection.bind()
        if lean:
            _lean_decoder(connection)
    except LDAPException as error:
        if connection is not None:
            discard(connection)
        raise DirectoryReadError(f"cannot connect to {', '.join(config.urls)}: {error}") from error
    return connection


def _lean_decoder(connection: ldap3.Connection) -> None:
    """Decode search entries to ``{"dn", "raw_attributes"}`` only, names in lower case.

    ldap3 turns every entry into a case-insensitive dict of raw values and another of
    values formatted by schema, and that formatting is more than half of its time on a
    large read. The sync uses only the raw values, so the connection keeps ldap3's own
    BER decoder but skips the rest. Anything but a search entry goes the usual way.
    The connection must not ask ldap3 to touch formatted values afterwards: no empty
    attributes, no automatic range retrieval (see connect).
    """
    strategy = connection.strategy
    usual = strategy.decode_response_fast

    def decode(message: dict[str, Any]) -> dict[str, Any]:
        if message["protocolOp"] != 4:  # searchResEntry
            return usual(message)  # type: ignore[no-any-return]
        payload = message["payload"]
        attributes = {}
        for attribute in payload[1][3]:
            name = bytes(attribute[3][0][3]).decode("ascii", "replace").lower()
            if ";range=" in name:
                # AD cut a long multi-valued attribute short: never use part of a list.
                raise LDAPException(f"the server returned only a range of {name}")
            values = attribute[3][1][3]
            attributes[name] = [bytes(value[3]) for value in values] if values else []
        return {
            "type": "searchResEntry",
            "dn": bytes(payload[0][3]).decode("utf-8", "replace"),
            "raw_attributes": attributes,
        }

    if connection.fast_decoder:
        strategy.decode_response_fast = decode


def server_name(connection: ldap3.Connection) -> str:
    """The URL of the server this connection talks to, for per-server marks."""
    server = connection.server
    scheme = "ldaps" if server.ssl else "ldap"
    return f"{scheme}://{server.host}:{server.port}"


_CONTROL = {c: None for c in range(32) if c != 9} | {127: None}


def _text(raw: Sequence[bytes]) -> str:
    """The first value as text. Control characters (NUL above all: PostgreSQL refuses it
    in text) are dropped; a name or address is never meant to hold them."""
    if not raw:
        return ""
    text = raw[0].decode("utf-8", "replace")
    return text.translate(_CONTROL) if not text.isprintable() else text


class Profile:
    """How one source's entries turn into DirectoryEntry values."""

    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config
        self.ad = config.profile == "ad"
        self.mark_attribute = "uSNChanged" if self.ad else "modifyTimestamp"
        wanted = [
            config.id_attribute,
            config.mail_attribute,
            config.alias_attribute,
            config.display_name_attribute,
            config.name_attribute,
            config.alternate_contact_attribute,
            config.disabled_attribute,
            self.mark_attribute,
        ]
        self.attributes = list(dict.fromkeys(a for a in wanted if a))
        # Entries come with attribute names in lower case (see _lean_decoder).
        self.id_key = config.id_attribute.lower()
        self.mail_key = config.mail_attribute.lower()
        self.alias_key = config.alias_attribute.lower()
        self.display_key = config.display_name_attribute.lower()
        self.name_key = config.name_attribute.lower()
        self.disabled_key = config.disabled_attribute.lower()
        self.alternate_key = config.alternate_contact_attribute.lower()
        self.guid = self.id_key == "objectguid"
        self.proxy = self.alias_key == "proxyaddresses"
        self.uac = self.disabled_key == "useraccountcontrol"

    def entry(self, dn: str, raw: dict[str, list[bytes]], disabled_dns: set[str]) -> DirectoryEntry:
        """Normalise one search result."""
        raw_id = raw.get(self.id_key) or []
        if not raw_id:
            external_id = ""
        elif self.guid and len(raw_id[0]) == 16:
            external_id = str(uuid.UUID(bytes_le=raw_id[0]))
        else:
            external_id = _text(raw_id).lower()
        # Control characters are not stripped from an address, as they are from names:
        # an address holding one is refused, never quietly turned into another address.
        raw_mail = raw.get(self.mail_key) or [b""]
        mail = raw_mail[0].decode("utf-8", "replace").strip().lower()
        aliases: list[str] = []
        for raw_alias in raw.get(self.alias_key, ()) if self.alias_key else ():
            alias = raw_alias.decode("utf-8", "replace").strip()
            if self.proxy:
                # Only secondary SMTP addresses ("smtp:"), not the primary ("SMTP:"),
                # X400 or other types.
                if not alias.startswith("smtp:"):
                    continue
                alias = alias[5:]
            aliases.append(alias.lower())
        display_name = _text(raw.get(self.display_key, ())) or _text(raw.get(self.name_key, ()))
        disabled = False
        if self.disabled_key:
            value = _text(raw.get(self.disabled_key, ())).strip()
            if self.uac:
                disabled = value.isdigit() and bool(int(value) & UAC_ACCOUNTDISABLE)
            else:
                disabled = value.lower() not in FALSE_VALUES
        if disabled_dns and normalise_dn(dn) in disabled_dns:
            disabled = True
        alternate = ""
        if self.alternate_key:
            alternate = _text(raw.get(self.alternate_key, ())).strip().lower()
        return DirectoryEntry(
            external_id=external_id,
            dn=dn,
            mail=mail,
            aliases=tuple(aliases),
            display_name=display_name.strip(),
            disabled=disabled,
            alternate_contact=alternate or None,
        )


def _unescape_dn_value(value: str) -> str:
    """Undo RFC 4514 escapes: ``\\,`` and friends, and ``\\XX`` hex (UTF-8) pairs."""
    if "\\" not in value:
        return value
    out = bytearray()
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            pair = value[index + 1 : index + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(int(pair, 16))
                index += 3
                continue
            char = value[index + 1]
            index += 1
        out.extend(char.encode("utf-8"))
        index += 1
    return out.decode("utf-8", "replace")


def normalise_dn(dn: str) -> str:
    """A DN in one canonical spelling, so that ``\\5C`` and ``\\\\`` compare equal."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPException:
        return dn.lower()
    return "".join(
        f"{attr.lower()}={escape_rdn(_unescape_dn_value(value).lower())}{separator}"
        for attr, value, separator in parts
    )


def user_filter(config: DirectoryConfig, extra: str = "") -> str:
    """The filter for the people of a source, narrowed to the scope group if any."""
    parts = [config.user_filter]
    if config.scope_group and config.profile == "ad":
        parts.append(f"(memberOf:{AD_IN_CHAIN}:={escape_filter_chars(config.scope_group)})")
    if extra:
        parts.append(extra)
    return parts[0] if len(parts) == 1 else "(&" + "".join(parts) + ")"


def paged(
    connection: ldap3.Connection,
    config: DirectoryConfig,
    search_filter: str,
    attributes: list[str],
    base: str | None = None,
) -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    """Every entry matching ``search_filter`` under the base DN, page by page.

    Any error (size or time limit, referral, dropped connection) raises
    DirectoryReadError: a partial read must never look like a small directory.
    """
    try:
        results = connection.extend.standard.paged_search(
            search_base=base or config.base_dn,
            search_filter=search_filter,
            search_scope=ldap3.SUBTREE,
            attributes=attributes,
            paged_size=config.page_size,
            generator=True,
        )
        for item in results:
            if item.get("type") != "searchResEntry":
                continue  # continuation references point at other naming contexts
            yield item["dn"], item["raw_attributes"]
        result = connection.result or {}
        if result.get("result", 0) != 0:
            raise DirectoryReadError(
                f"search ended with {result.get('description')}: {result.get('message')}"
            )
    except LDAPException as error:
        raise DirectoryReadError(
            f"directory read failed: {type(error).__name__}: {error}"
        ) from error


def group_members(connection: ldap3.Connection, config: DirectoryConfig, group_dn: str) -> set[str]:
    """Normalised DNs of everyone in ``group_dn``, following nested groups."""
    if config.profile == "ad":
        found = set()
        for dn, _ in paged(
            connection,
            config,
            f"(&{config.user_filter}(memberOf:{AD_IN_CHAIN}:={escape_filter_chars(group_dn)}))",
            ["1.1"],
        ):
            found.add(normalise_dn(dn))
        return found
    member = config.member_attribute
    groups: dict[str, list[str]] = {}
    base = config.group_base_dn or config.base_dn
    for dn, raw in paged(connection, config, f"({member}=*)", [member], base=base):
        groups[normalise_dn(dn)] = [
            normalise_dn(v.decode("utf-8", "replace")) for v in raw.get(member.lower(), ())
        ]
    found, todo, visited = set(), [normalise_dn(group_dn)], set()
    while todo:
        current = todo.pop()
        if current in visited:
            continue
        visited.add(current)
        for dn in groups.get(current, []):
            if dn in groups:
                todo.append(dn)
            else:
                found.add(dn)
    return found


def openldap_mark(timestamp: str) -> datetime | None:
    """Parse a generalizedTime such as 20261126193000Z (fractions allowed)."""
    text = timestamp.strip().rstrip("Z")
    try:
        return datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def generalized_time(moment: datetime) -> str:
    """Format a UTC moment as an LDAP generalizedTime."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def ad_root(connection: ldap3.Connection) -> tuple[int, str]:
    """The AD server's highestCommittedUSN and dsServiceName, from its rootDSE.

    USNs count per domain controller, so the mark is kept per controller (its
    dsServiceName), not per URL: one name may lead to several controllers.
    """
    try:
        connection.search(
            "", "(objectClass=*)", ldap3.BASE, attributes=["highestCommittedUSN", "dsServiceName"]
        )
        raw = (connection.response or [{}])[0]["raw_attributes"]
        usn = int(raw["highestcommittedusn"][0])
        dsa = raw.get("dsservicename") or [b""]
        return usn, dsa[0].decode("utf-8", "replace")[:255]
    except (LDAPException, IndexError, KeyError, ValueError) as error:
        raise DirectoryReadError(f"cannot read highestCommittedUSN: {error}") from error


class DirectoryRead:
    """One read of a source's people, streamed: entries come as the pages arrive.

    Opening it connects and settles the mode: ``full`` is False only when the
    answering server has a mark to read changes from. ``entries()`` may be iterated
    once; it raises DirectoryReadError whenever the read cannot finish whole, and only
    once it has finished are ``next_mark`` and ``role_members`` known.
    """

    def __init__(
        self,
        config: DirectoryConfig,
        marks: Mapping[str, str] | None,
        progress: Callable[[int], None] | None = None,
        started: datetime | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.started = started or datetime.now(UTC)
        self.profile = Profile(config)
        self.connection = connect(config)
        self.server = server_name(self.connection)
        self.mark_key = self.server
        self.next_usn = 0
        if self.profile.ad:
            try:
                self.next_usn, dsa = ad_root(self.connection)
            except DirectoryReadError:
                self.close()
                raise
            self.mark_key = dsa or self.server
        self.since = marks.get(self.mark_key) if marks is not None else None
        self.full = self.since is None
        self.next_mark = ""
        self.role_members: dict[str, set[str]] = {}
        # Incremental reads only: who changed but no longer qualifies (stable ids), and
        # the scope group's members (normalised DNs), whose membership may have changed
        # without any change to the people's own entries.
        self.departed: set[str] = set()
        self.scope: set[str] | None = None

    def close(self) -> None:
        """Drop the connection (also done when ``entries()`` ends)."""
        discard(self.connection)

    def entries(self) -> Iterator[DirectoryEntry]:
        """Every person in scope (or every changed one), as the directory describes them."""
        config, profile, connection = self.config, self.profile, self.connection
        try:
            extra = ""
            if self.since and profile.ad:
                extra = f"(uSNChanged>={int(self.since) + 1})"
            elif self.since:
                extra = f"(modifyTimestamp>={escape_filter_chars(self.since)})"
            scope: set[str] | None = None
            if config.scope_group and (not profile.ad or not self.full):
                scope = group_members(connection, config, config.scope_group)
                if not self.full:
                    self.scope = scope
            if profile.ad:
                scope = None  # the search filter itself holds AD's scope
            disabled_dns: set[str] = set()
            if config.disabled_filter:
                search = user_filter(config, config.disabled_filter)
                for dn, _ in paged(connection, config, search, ["1.1"]):
                    disabled_dns.add(normalise_dn(dn))

            newest = ""
            read = 0
            for dn, raw in paged(
                connection, config, user_filter(config, extra), profile.attributes
            ):
                read += 1
                if self.progress and read % config.page_size == 0:
                    self.progress(read)
                if scope is not None and normalise_dn(dn) not in scope:
                    if not self.full:
                        self.departed.add(profile.entry(dn, raw, set()).external_id)
                    continue
                if not profile.ad:
                    # generalizedTime strings of one server share a format, so they sort
                    # as text; parsing 100,000 of them would cost more than the read.
                    stamp = _text(raw.get("modifytimestamp", ()))
                    if stamp > newest:
                        newest = stamp
                yield profile.entry(dn, raw, disabled_dns)
            if self.progress:
                self.progress(read)
            if extra:
                # Entries that changed and left the filter (or AD's scope group): a
                # full run would not find them, so they go now, not at the next one.
                outside = f"(&(!{user_filter(config)}){extra})"
                for dn, raw in paged(connection, config, outside, [config.id_attribute]):
                    self.departed.add(profile.entry(dn, raw, set()).external_id)
            self.departed.discard("")
            for role, group in (("admin", config.admin_group), ("helpdesk", config.helpdesk_group)):
                if group:
                    self.role_members[role] = group_members(connection, config, group)
        finally:
            self.close()
        self.next_mark = str(self.next_usn) if profile.ad else self._timestamp_mark(newest)

    def claimants(
        self, addresses: Collection[str], domains: Collection[str]
    ) -> dict[str, set[str]]:
        """The stable ids of the entries in scope that claim each of ``addresses`` (as
        their address or an alias), for an incremental run's plan (sync.plan)."""
        config, profile = self.config, self.profile
        found: dict[str, set[str]] = {}
        connection = connect(config)
        try:
            wanted = sorted(set(addresses))
            for start in range(0, len(wanted), 50):
                part = wanted[start : start + 50]
                terms = []
                for address in part:
                    value = escape_filter_chars(address)
                    terms.append(f"({config.mail_attribute}={value})")
                    if config.alias_attribute:
                        prefix = "smtp:" if profile.proxy else ""
                        terms.append(f"({config.alias_attribute}={prefix}{value})")
                search = user_filter(config, "(|" + "".join(terms) + ")")
                for dn, raw in paged(connection, config, search, profile.attributes):
                    if self.scope is not None and normalise_dn(dn) not in self.scope:
                        continue
                    entry = profile.entry(dn, raw, set())
                    if not entry.external_id or domain_of(entry.mail) not in domains:
                        continue  # a full run would skip it: it claims nothing
                    for address in {entry.mail, *entry.aliases} & set(part):
                        found.setdefault(address, set()).add(entry.external_id)
        finally:
            discard(connection)
        return found

    def _timestamp_mark(self, newest: str) -> str:
        """Where the next OpenLDAP read starts.

        No later than this run did (less the allowed clock skew), so that changes made
        while this run was reading are read again, not missed; and no later than just
        after the newest change seen, which costs nothing in a quiet directory.
        """
        floor = self.started - timedelta(seconds=self.config.clock_skew_seconds)
        newest_seen = openldap_mark(newest) if newest else None
        if newest_seen is not None:
            floor = min(floor, newest_seen + timedelta(seconds=1))
        return generalized_time(floor)
