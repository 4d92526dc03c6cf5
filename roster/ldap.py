"""How to reach a configured directory: servers, TLS and timeouts, shared by sync and portal."""

from __future__ import annotations

import contextlib
import ssl

import ldap3

from roster.config import DirectoryConfig


def tls_for(config: DirectoryConfig) -> ldap3.Tls | None:
    """Certificate-checking TLS settings for LDAPS or StartTLS, None for plain LDAP."""
    if not (config.ca_file or config.start_tls or any(u.startswith("ldaps") for u in config.urls)):
        return None
    return ldap3.Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=config.ca_file or None,
        version=ssl.PROTOCOL_TLS_CLIENT,
    )


# After its last round a pool sleeps POOLING_LOOP_TIMEOUT (10 s) before giving up: a
# sign-in would hang that long whenever the directory is down.
ldap3.set_config_parameter("POOLING_LOOP_TIMEOUT", 0)


def server_pool(
    config: DirectoryConfig, connect_timeout: float | None = None
) -> ldap3.ServerPool | ldap3.Server:
    """The source's server, or its servers tried in order, each once."""
    tls = tls_for(config)
    servers = [
        ldap3.Server(
            url,
            get_info=ldap3.NONE,
            tls=tls,
            connect_timeout=connect_timeout or config.connect_timeout,
        )
        for url in config.urls
    ]
    if len(servers) == 1:
        return servers[0]
    # active=1: one round over the servers (True would retry forever). The stubs say
    # bool; ldap3 takes a number of rounds.
    return ldap3.ServerPool(servers, ldap3.FIRST, active=1, exhaust=False)  # type: ignore[arg-type]


def discard(connection: ldap3.Connection) -> None:
    """Close a connection whatever state it is in (ldap3 leaves the socket of a failed
    open behind)."""
    with contextlib.suppress(Exception):
        connection.unbind()
    sock = getattr(connection, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
