"""How to reach a configured directory: servers, TLS and timeouts, shared by sync and portal."""

from __future__ import annotations

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


def server_pool(config: DirectoryConfig, connect_timeout: float | None = None) -> ldap3.ServerPool:
    """The source's servers, tried in order, each once (``active=True`` would retry forever)."""
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
    # The stubs say bool; ldap3 takes a number of rounds.
    return ldap3.ServerPool(servers, ldap3.FIRST, active=1, exhaust=False)  # type: ignore[arg-type]
