"""Checking a directory password: find the person's DN, then bind as them."""

from __future__ import annotations

import enum
import logging

import ldap3
from ldap3.core.exceptions import LDAPBindError, LDAPException, LDAPOperationResult
from ldap3.utils.conv import escape_filter_chars

from roster.config import DirectoryConfig
from roster.ldap import discard, server_pool
from roster.logs import log_event

log = logging.getLogger("continuity.portal.directory")

# Sign-in waits on the directory: it must answer quickly or be treated as down.
CONNECT_TIMEOUT = 3
RECEIVE_TIMEOUT = 5


class BindOutcome(enum.Enum):
    """What the directory said about an address and password."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"


def _connection(
    config: DirectoryConfig, user: str | None, password: str | None
) -> ldap3.Connection:
    connection = ldap3.Connection(
        server_pool(config, connect_timeout=min(config.connect_timeout, CONNECT_TIMEOUT)),
        user=user,
        password=password,
        auto_bind=ldap3.AUTO_BIND_NONE,
        raise_exceptions=True,
        receive_timeout=RECEIVE_TIMEOUT,
        auto_referrals=False,
        read_only=True,
    )
    try:
        connection.open()
        if config.start_tls:
            connection.start_tls()
    except LDAPException:
        discard(connection)
        raise
    return connection


def find_dn(config: DirectoryConfig, address: str) -> tuple[str | None, bool]:
    """Search the directory for the person with this address (mail or alias).

    Returns (dn or None, reachable). The address is escaped: it is whatever was typed.
    """
    value = escape_filter_chars(address)
    terms = [f"({config.mail_attribute}={value})"]
    if config.alias_attribute:
        alias = f"smtp:{value}" if config.alias_attribute.lower() == "proxyaddresses" else value
        terms.append(f"({config.alias_attribute}={alias})")
    search = f"(&{config.user_filter}(|{''.join(terms)}))"
    try:
        connection = _connection(config, config.bind_dn or None, config.bind_password or None)
        try:
            connection.bind()
            connection.search(
                config.base_dn, search, ldap3.SUBTREE, attributes=["1.1"], size_limit=2
            )
            found = [
                r["dn"] for r in connection.response or [] if r.get("type") == "searchResEntry"
            ]
        finally:
            discard(connection)
    except LDAPException as error:
        log_event(
            log,
            logging.WARNING,
            "directory.search_failed",
            source=config.name,
            error=type(error).__name__,
        )
        return None, False
    return (found[0] if len(found) == 1 else None), True


def check_password(config: DirectoryConfig, dn: str, password: str) -> BindOutcome:
    """Bind as ``dn`` with ``password``.

    An empty password is refused here: LDAP would take it as an anonymous bind and
    answer "success".
    """
    if not password or not dn:
        return BindOutcome.REFUSED
    try:
        connection = _connection(config, dn, password)
    except LDAPException as error:
        log_event(
            log,
            logging.WARNING,
            "directory.unreachable",
            source=config.name,
            error=type(error).__name__,
        )
        return BindOutcome.UNREACHABLE
    try:
        connection.bind()
        return BindOutcome.ACCEPTED
    except (LDAPOperationResult, LDAPBindError):
        # The server answered and said no: wrong password, disabled account (AD "data
        # 533"), expired password ... all the same to the person at the sign-in page.
        return BindOutcome.REFUSED
    except LDAPException as error:
        log_event(
            log,
            logging.WARNING,
            "directory.bind_failed",
            source=config.name,
            error=type(error).__name__,
        )
        return BindOutcome.UNREACHABLE
    finally:
        discard(connection)
