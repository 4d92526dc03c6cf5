"""The TOML configuration, with environment overrides and secrets read from files.

Key names are a contract shared with operators, scripts and docs. Every value can be
overridden by an environment variable: ``CONTINUITY_<TABLE>_<KEY>`` for the single
tables (``CONTINUITY_DATABASE_URL``) and ``CONTINUITY_DIRECTORY_<NAME>_<KEY>`` for a
``[[directory]]`` entry (``CONTINUITY_DIRECTORY_CORP_BIND_PASSWORD``). A secret key
``k`` may instead be given as ``k_file``, the path of a file holding it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_DATABASE_URL = "sqlite:////var/lib/continuity/roster.db"
SECRET_KEYS = frozenset(
    {"bind_password", "master_password", "secret_key", "password", "metrics_token"}
)

PROFILE_ATTRIBUTES: dict[str, dict[str, str]] = {
    "openldap": {
        "id_attribute": "entryUUID",
        "mail_attribute": "mail",
        "alias_attribute": "mailAlternateAddress",
        "name_attribute": "cn",
        "display_name_attribute": "displayName",
        "alternate_contact_attribute": "",
        "disabled_attribute": "",
        "member_attribute": "member",
        "user_filter": "(objectClass=inetOrgPerson)",
    },
    "ad": {
        "id_attribute": "objectGUID",
        "mail_attribute": "mail",
        "alias_attribute": "proxyAddresses",
        "name_attribute": "cn",
        "display_name_attribute": "displayName",
        "alternate_contact_attribute": "",
        "disabled_attribute": "userAccountControl",
        "member_attribute": "member",
        "user_filter": "(&(objectCategory=person)(objectClass=user))",
    },
}


class ConfigError(Exception):
    """The configuration is missing a key or holds a bad value; the message names the key."""


@dataclass(frozen=True)
class DirectoryConfig:
    """One ``[[directory]]`` source."""

    name: str
    urls: tuple[str, ...]
    base_dn: str
    profile: str
    domains: tuple[str, ...]
    bind_dn: str = ""
    bind_password: str = ""
    user_filter: str = ""
    ca_file: str = ""
    start_tls: bool = False
    page_size: int = 1000
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    id_attribute: str = ""
    mail_attribute: str = ""
    alias_attribute: str = ""
    name_attribute: str = ""
    display_name_attribute: str = ""
    alternate_contact_attribute: str = ""
    disabled_attribute: str = ""
    disabled_filter: str = ""
    member_attribute: str = ""
    scope_group: str = ""
    group_base_dn: str = ""
    admin_group: str = ""
    helpdesk_group: str = ""
    max_removal_share: float = 0.10
    full_sync_interval_hours: float = 24.0
    clock_skew_seconds: int = 10
    allow_cleartext_bind: bool = False


@dataclass(frozen=True)
class Config:
    """The whole configuration of one installation."""

    database_url: str = DEFAULT_DATABASE_URL
    directories: tuple[DirectoryConfig, ...] = ()
    standby: dict[str, Any] = field(default_factory=dict)
    gateway: dict[str, Any] = field(default_factory=dict)
    outbound: dict[str, Any] = field(default_factory=dict)
    portal: dict[str, Any] = field(default_factory=dict)
    webmail: dict[str, Any] = field(default_factory=dict)
    demo: dict[str, Any] = field(default_factory=dict)
    sync_lock_seconds: int = 900
    sync_stale_after_minutes: int = 60

    def sources_for(self, domain: str) -> list[str]:
        """The names of the directory sources that feed ``domain``."""
        return [source.name for source in self.directories if domain in source.domains]

    def directory(self, name: str) -> DirectoryConfig:
        """The directory source called ``name``."""
        for source in self.directories:
            if source.name == name:
                return source
        raise ConfigError(f"[[directory]]: no source named {name!r}")


def _env_name(*parts: str) -> str:
    return "CONTINUITY_" + "_".join(re.sub(r"[^A-Za-z0-9]", "_", p).upper() for p in parts)


def _with_secrets(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Replace ``k_file`` entries by the stripped content of the file they name."""
    result = dict(table)
    for key in list(table):
        if key.endswith("_file") and key[: -len("_file")] in SECRET_KEYS:
            path = Path(str(table[key]))
            try:
                result[key[: -len("_file")]] = path.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ConfigError(f"{where}.{key}: cannot read {path}: {error.strerror}") from error
            except UnicodeDecodeError:
                raise ConfigError(f"{where}.{key}: {path} is not UTF-8 text") from None
            del result[key]
    return result


def _overlay_env(
    table: dict[str, Any], keys: set[str], prefix: tuple[str, ...], environ: Mapping[str, str]
) -> dict[str, Any]:
    """Apply environment variables named after ``prefix`` and each known key."""
    for key in keys | {k + "_file" for k in keys if k in SECRET_KEYS}:
        value = environ.get(_env_name(*prefix, key))
        if value is not None:
            table[key] = value
            # A secret given in the environment replaces the file's, in either form.
            other = key[: -len("_file")] if key.endswith("_file") else key + "_file"
            if key in SECRET_KEYS or key.endswith("_file"):
                table.pop(other, None)
    return table


def _typed(value: Any, kind: type, where: str) -> Any:
    """Coerce ``value`` (from TOML or the environment) to ``kind`` or fail naming ``where``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if kind is tuple:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


_DIRECTORY_FIELDS: dict[str, type] = {
    "name": str,
    "url": tuple,
    "base_dn": str,
    "profile": str,
    "domains": tuple,
    "bind_dn": str,
    "bind_password": str,
    "user_filter": str,
    "ca_file": str,
    "start_tls": bool,
    "page_size": int,
    "connect_timeout": float,
    "read_timeout": float,
    "id_attribute": str,
    "mail_attribute": str,
    "alias_attribute": str,
    "name_attribute": str,
    "display_name_attribute": str,
    "alternate_contact_attribute": str,
    "disabled_attribute": str,
    "disabled_filter": str,
    "member_attribute": str,
    "scope_group": str,
    "group_base_dn": str,
    "admin_group": str,
    "helpdesk_group": str,
    "max_removal_share": float,
    "full_sync_interval_hours": float,
    "clock_skew_seconds": int,
    "allow_cleartext_bind": bool,
}


def _directory(raw: Mapping[str, Any], index: int, environ: Mapping[str, str]) -> DirectoryConfig:
    """Build one directory source, applying its profile's attribute defaults."""
    name = raw.get("name")
    where = f"[[directory]] #{index + 1}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"{where}.name: missing or not a simple name (letters, digits, -_.)")
    where = f"[[directory]] {name!r}"
    unknown = set(raw) - set(_DIRECTORY_FIELDS) - {k + "_file" for k in SECRET_KEYS}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
    table = _overlay_env(dict(raw), set(_DIRECTORY_FIELDS) - {"name"}, ("directory", name), environ)
    table = _with_secrets(table, where)
    values: dict[str, Any] = {}
    for key, kind in _DIRECTORY_FIELDS.items():
        if key in table:
            values[key] = _typed(table[key], kind, f"{where}.{key}")
    for required in ("url", "base_dn", "profile", "domains"):
        if not values.get(required):
            raise ConfigError(f"{where}.{required}: missing")
    profile = values["profile"]
    if profile not in PROFILE_ATTRIBUTES:
        raise ConfigError(f"{where}.profile: must be 'openldap' or 'ad', got {profile!r}")
    for url in values["url"]:
        if not re.fullmatch(r"ldaps?://[^/\s]+/?", url):
            raise ConfigError(
                f"{where}.url: expected ldap://host[:port] or ldaps://..., got {url!r}"
            )
    for key, default in PROFILE_ATTRIBUTES[profile].items():
        values.setdefault(key, default)
    if values.get("bind_dn") and not values.get("bind_password"):
        raise ConfigError(f"{where}.bind_password: missing (bind_dn is set)")
    if values.get("ca_file") and not Path(values["ca_file"]).is_file():
        raise ConfigError(f"{where}.ca_file: no such file {values['ca_file']!r}")
    plain = [u for u in values["url"] if u.startswith("ldap://")]
    if plain and not values.get("start_tls"):
        if values.get("ca_file"):
            raise ConfigError(
                f"{where}.ca_file: set, but {plain[0]} is plain LDAP; use ldaps:// or start_tls"
            )
        remote = [u for u in plain if not _loopback(u)]
        if remote and values.get("bind_password") and not values.get("allow_cleartext_bind"):
            raise ConfigError(
                f"{where}.start_tls: the bind password would cross the network in clear to"
                f" {remote[0]}; use ldaps:// or start_tls = true"
                " (or allow_cleartext_bind = true on a network you trust)"
            )
    if values.get("page_size", 1000) < 1:
        raise ConfigError(f"{where}.page_size: must be at least 1")
    # Upper bounds: beyond them a value is a typo (and a huge socket timeout overflows).
    bounds = {"connect_timeout": 3600, "read_timeout": 3600, "full_sync_interval_hours": 8760}
    for key, most in bounds.items():
        if key in values and not (math.isfinite(values[key]) and 0 < values[key] <= most):
            raise ConfigError(
                f"{where}.{key}: must be a number above 0 and at most {most}, got {values[key]!r}"
            )
    if values.get("clock_skew_seconds", 0) < 0:
        raise ConfigError(f"{where}.clock_skew_seconds: must be 0 or more")
    if not 0 <= values.get("max_removal_share", 0.1) <= 1:
        raise ConfigError(f"{where}.max_removal_share: must be between 0 and 1")
    values["domains"] = tuple(_ascii_domain(d) for d in values["domains"])
    values["urls"] = values.pop("url")
    return DirectoryConfig(**values)


def _loopback(url: str) -> bool:
    """True for a URL on this host (127.0.0.0/8, ::1, localhost)."""
    host = url.split("://", 1)[1].rstrip("/")
    host = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _ascii_domain(name: str) -> str:
    """A domain as the roster names it: lower case, IDNA for non-ASCII names."""
    text = name.strip().rstrip(".").lower()
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(f"[[directory]].domains: {name!r} is not a valid domain name") from None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read the configuration from ``path`` (or ``CONTINUITY_CONFIG``), then the environment.

    Without any file the defaults apply; a named file that cannot be read is an error.
    Every key is checked here, whatever the command, so a bad value stops any command
    at start rather than the one process that would use it later.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get("CONTINUITY_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        raw = _read_toml(path)
    unknown = set(raw) - set(_TABLES) - {"directory"}
    if unknown:
        raise ConfigError(f"[{sorted(unknown)[0]}]: unknown table")
    for name, checks in _TABLES.items():
        _check_table(raw, name, set(checks))

    database = _overlay_env(dict(raw.get("database", {})), {"url"}, ("database",), environ)
    url = _typed(database.get("url", DEFAULT_DATABASE_URL), str, "[database].url")
    if not re.match(r"(sqlite|postgresql)(\+\w+)?://", url):
        raise ConfigError(
            f"[database].url: expected sqlite:///... or postgresql+psycopg://..., got {url!r}"
        )

    sync = _single_table(raw, "sync", environ)
    lock_seconds = sync.get("lock_seconds", 900)
    stale_after_minutes = sync.get("stale_after_minutes", 60)

    entries = raw.get("directory", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("[[directory]]: must be an array of tables ([[directory]])")
    directories = tuple(_directory(entry, i, environ) for i, entry in enumerate(entries))
    names = [d.name for d in directories]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"[[directory]] {name!r}.name: used by more than one source")

    tables = {name: _single_table(raw, name, environ) for name in _FREE_TABLES}
    return Config(
        database_url=url,
        directories=directories,
        sync_lock_seconds=lock_seconds,
        sync_stale_after_minutes=stale_after_minutes,
        **tables,
    )


_UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tables of a TOML file, or a ConfigError saying why it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path}: {error.strerror}") from error
    if data.startswith(_UTF16_MARKS):
        raise ConfigError(f"--config: {path} is UTF-16 text; save it as UTF-8")
    try:
        # A UTF-8 byte order mark (some editors write one) is no error.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"--config: {path} is not UTF-8 text (byte {error.start + 1}); save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config: {path} is not valid TOML: {error}") from error


def _check_table(raw: Mapping[str, Any], name: str, keys: set[str]) -> None:
    """A single table must be a table and hold only keys we know (a typo is an error)."""
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}]: must be a table")
    allowed = keys | {k + "_file" for k in keys if k in SECRET_KEYS}
    for key in table:
        if key not in allowed:
            raise ConfigError(f"[{name}].{key}: unknown key")


def _single_table(raw: Mapping[str, Any], name: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """One single table: the file's keys, the environment's, secrets read, each value checked.

    Only the keys given appear; the part that reads a key supplies its default.
    """
    checks = _TABLES[name]
    given = _overlay_env(dict(raw.get(name, {})), set(checks), (name,), environ)
    table = _with_secrets(given, f"[{name}]")
    return {key: checks[key](value, f"[{name}].{key}") for key, value in table.items()}


# Checks of single-table values: each takes the value (from TOML or the environment) and
# where it came from, and returns it typed or raises a ConfigError naming the key.
Check = Callable[[Any, str], Any]


def _flag(value: Any, where: str) -> bool:
    """true or false (also yes/no, on/off, 1/0 from the environment)."""
    flag: bool = _typed(value, bool, where)
    return flag


def _whole(minimum: int, maximum: int | None = None) -> Check:
    """A whole number within bounds."""

    def check(value: Any, where: str) -> int:
        number: int = _typed(value, int, where)
        if number < minimum:
            raise ConfigError(f"{where}: must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{where}: must be at most {maximum}, got {number}")
        return number

    return check


def _text(value: Any, where: str) -> str:
    """A string with something in it."""
    text: str = _typed(value, str, where).strip()
    if not text:
        raise ConfigError(f"{where}: empty")
    return text


def _secret(minimum_length: int) -> Check:
    """A secret of at least ``minimum_length`` characters (its value is never shown)."""

    def check(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        if len(value) < minimum_length:
            raise ConfigError(
                f"{where}: too short ({len(value)} characters); give at least {minimum_length}"
            )
        return value

    return check


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _valid_host(host: str) -> bool:
    """An IP literal or a host name of RFC 1123 labels."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if len(host) > 253 or host.replace(".", "").isdigit():
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in host.rstrip(".").split("."))


def host_port(value: Any, where: str) -> str:
    """``HOST:PORT`` (an IPv6 host in brackets) with a port from 1 to 65535.

    Also checks the command line's --listen, which would otherwise reach gunicorn (and
    an OverflowError) unchecked.
    """
    text: str = _typed(value, str, where).strip()
    found = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\[\]:\s]+)):(\d{1,10})", text)
    if not found:
        raise ConfigError(
            f"{where}: expected HOST:PORT (an IPv6 address in brackets), got {text!r}"
        )
    host = found.group(1) or found.group(2)
    port = int(found.group(3))
    if found.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IPv6 address") from None
    elif not _valid_host(host):
        raise ConfigError(f"{where}: {host!r} is not a host name or an IP address")
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: the port must be between 1 and 65535, got {port}")
    return text


def _base_url(value: Any, where: str) -> str:
    """An http(s) URL of the portal's own origin: no user, query or fragment."""
    text: str = _typed(value, str, where).strip()
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or not _valid_host(parts.hostname)
        or parts.username is not None
        or parts.query
        or parts.fragment
        or port == -1
        or port == 0
    ):
        raise ConfigError(f"{where}: expected https://host[:port][/path], got {text!r}")
    return text.rstrip("/")


def _mail_address(value: Any, where: str) -> str:
    """local@domain, as a sender."""
    text: str = _typed(value, str, where).strip()
    local, at, domain = text.rpartition("@")
    if not (local and at and _valid_host(domain)) or any(c.isspace() or c in '<>",' for c in text):
        raise ConfigError(f"{where}: expected an email address, got {text!r}")
    return text


def _absolute_path(value: Any, where: str) -> str:
    """An absolute file system path."""
    text = _text(value, where)
    if not Path(text).is_absolute():
        raise ConfigError(f"{where}: expected an absolute path, got {text!r}")
    return text


def _networks(value: Any, where: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of networks in CIDR notation ("10.0.0.0/8", "2001:db8::/32"); from the
    environment, comma-separated."""
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list):
        raise ConfigError(f'{where}: expected a list of networks like ["10.0.0.0/8"]')
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(_text(item, where), strict=False))
        except ValueError:
            raise ConfigError(
                f"{where}: {item!r} is not a network (CIDR, e.g. 10.0.0.0/8)"
            ) from None
    return tuple(networks)


# Every key of the single tables and its check. A key added here is checked by every
# command; its default lives where it is read.
_TABLES: dict[str, dict[str, Check]] = {
    "database": {"url": _text},
    "sync": {"lock_seconds": _whole(1, 7 * 24 * 3600), "stale_after_minutes": _whole(1)},
    "standby": {
        "imap": host_port,
        "imap_tls": _flag,
        "ca_file": _absolute_path,
        "lmtp": host_port,
        "master_user": _text,
        "master_password": _secret(1),
        "users_file": _absolute_path,
        "copy_connections": _whole(1, 64),
        "retention_days": _whole(1, 36500),
        "uncovered_grace_days": _whole(0, 3650),
    },
    "gateway": {
        "listen": host_port,
        "spool_dir": _absolute_path,
        "hostname": _text,
        "tls_cert_file": _absolute_path,
        "tls_key_file": _absolute_path,
        "ca_file": _absolute_path,
        "max_message_size": _whole(1024),
        "receive_memory_mb": _whole(1),
        "allow_local_primary": _flag,
        "deny_primary_networks": _networks,
        "trusted_networks": _networks,
        "max_connections_per_client": _whole(1),
        "max_messages_per_minute": _whole(1),
        "max_recipients_per_minute": _whole(1),
        "callout_positive_seconds": _whole(0),
        "callout_negative_seconds": _whole(0),
        "delivery_workers": _whole(1, 64),
        "copy_workers": _whole(1, 64),
        "claim_seconds": _whole(5),
        "delay_warning_hours": _whole(1),
        "max_queue_days": _whole(1),
        "max_held_days": _whole(1),
        "tracking_days": _whole(1, 36500),
        "keep_bodies_days": _whole(0, 36500),
    },
    "outbound": {
        "relay": host_port,
        "username": _text,
        "password": _secret(1),
        "sender": _mail_address,
        "operator_address": _mail_address,
    },
    "portal": {
        "secret_key": _secret(32),
        "base_url": _base_url,
        "listen": host_port,
        # gunicorn's worker processes (`continuity serve`; --workers wins).
        "workers": _whole(1, 64),
        "secure_cookies": _flag,
        "access_log": _flag,
        # Upper bounds keep a typo from making sessions or codes live for years (and
        # the portal's timedelta from overflowing at start).
        "session_idle_minutes": _whole(1, 7 * 24 * 60),
        "session_lifetime_hours": _whole(1, 30 * 24),
        "reset_code_hours": _whole(1, 7 * 24),
        "trusted_proxies": _whole(0, 10),
        # Who may read /metrics: a bearer token, and networks let in without one.
        "metrics_token": _secret(32),
        "metrics_networks": _networks,
    },
    "webmail": {
        # What one person may send, in recipients per hour (a stolen emergency password
        # is no spam cannon), and the largest upload of a message's attachments.
        "recipients_per_hour": _whole(1, 100_000),
        "max_upload_mb": _whole(1, 1024),
        # The portal's IMAP connections to the standby store: per person, per portal
        # process in all, and how long an unused one stays open.
        "connections_per_person": _whole(1, 8),
        "connections": _whole(1, 10_000),
        "idle_seconds": _whole(5, 3600),
    },
    # Written only by `continuity demo` into its own configuration: the portal's demo
    # page (take a stand-in primary down, bring it back) exists only where this is on.
    "demo": {"enabled": _flag, "control_dir": _absolute_path},
}
# The tables the Config keeps as plain dicts of checked values.
_FREE_TABLES = ("standby", "gateway", "outbound", "portal", "webmail", "demo")
