"""Which addresses Continuity may connect to as a domain's primary mail server.

The Continuity host itself is never a primary: an address of this host (loopback,
link-local, unspecified, or one of its own interfaces) would let whoever sets a
primary reach the services that listen only for this host (the roster's database, the
standby store), through the Control Panel's "test connection" today and the gateway's
deliveries tomorrow. The operator allows it where a primary really runs here (the demo,
the tests) with ``[gateway] allow_local_primary = true``, and may refuse further
networks with ``[gateway] deny_primary_networks``.

The check is made on the address actually connected to, after the name is resolved, so
a name that resolves to this host (or is re-pointed to it later) is refused as well:
callers resolve with ``resolve_primary``, check each address with
``check_primary_address`` and connect to that address, never to the name again.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from pathlib import Path

from roster.config import Config

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

THIS_HOST = "this_host"
DENIED = "denied"

# "This network" (RFC 1122 3.2.1.3): Linux connects 0.0.0.0 to this host.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


class PrimaryAddressRefused(Exception):
    """A primary server's address that Continuity does not connect to.

    ``code`` is THIS_HOST (an address of the Continuity host) or DENIED (in a network
    of ``[gateway] deny_primary_networks``, then ``network`` says which).
    """

    def __init__(
        self, code: str, host: str, address: IPAddress | None = None, network: str = ""
    ) -> None:
        self.code, self.host, self.address, self.network = code, host, address, network
        where = f"{host} ({address})" if address is not None and str(address) != host else host
        reasons = {
            THIS_HOST: "is an address of the Continuity host itself",
            DENIED: f"is in {network}, a network refused by [gateway] deny_primary_networks",
        }
        super().__init__(f"{where} {reasons.get(code, code)}")


class PrimaryUnresolved(OSError):
    """A primary's name that resolves to no address (or none in time)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.strerror = message


def check_primary_address(config: Config, address: IPAddress | str, host: str = "") -> None:
    """Refuse (PrimaryAddressRefused) an address a primary server may not have.

    ``address`` is the resolved address about to be connected to; ``host`` is the name
    it came from, for the message.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    host = host or str(ip)
    networks: tuple[IPNetwork, ...] = config.gateway.get("deny_primary_networks", ())
    for network in networks:
        if ip.version == network.version and ip in network:
            raise PrimaryAddressRefused(DENIED, host, ip, str(network))
    if not config.gateway.get("allow_local_primary", False) and is_this_host(ip):
        raise PrimaryAddressRefused(THIS_HOST, host, ip)


def is_this_host(ip: IPAddress) -> bool:
    """True when connecting to ``ip`` would reach this host."""
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return True
    if isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK:
        return True
    if _nonlocal_bind_allowed(ip.version):
        return str(ip) in _interface_addresses()
    # The kernel's own answer, for the addresses of every interface as they are now:
    # a socket can be bound to an address only if it is one of this host's.
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False  # no IPv6 on this host: no IPv6 address of its own either
    with probe:
        try:
            probe.bind((str(ip), 0))
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def _nonlocal_bind_allowed(version: int) -> bool:
    """True when the kernel lets sockets bind to addresses that are not the host's
    (net.ipv4.ip_nonlocal_bind), which would make the bind test say yes to anything."""
    name = "ipv4" if version == 4 else "ipv6"
    try:
        return Path(f"/proc/sys/net/{name}/ip_nonlocal_bind").read_text().strip() != "0"
    except OSError:
        return False


def _interface_addresses() -> set[str]:
    """The addresses of this host's interfaces, as Linux lists them in /proc."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for before, line in zip(lines, lines[1:], strict=False):
        if line.strip().endswith("host LOCAL") and "|--" in before:
            found.add(before.split("|--", 1)[1].strip())
    try:
        rows = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        rows = []
    for row in rows:
        digits = row.split()[0] if row.split() else ""
        if len(digits) == 32:
            found.add(str(ipaddress.IPv6Address(int(digits, 16))))
    return found


def resolve_primary(host: str, port: int, timeout: float) -> list[IPAddress]:
    """The addresses ``host`` resolves to, in the order to try, within ``timeout``
    seconds (a resolver that does not answer must not hold the caller longer).

    A literal address is itself. Raises PrimaryUnresolved when the name has no
    address, or none in time.
    """
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    answer: list[IPAddress] = []
    failed: list[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:
            failed.append(error)
            return
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in answer:
                answer.append(ip)

    # getaddrinfo cannot be interrupted: it runs in a thread that is left to finish
    # on its own if the resolver is slower than the deadline.
    worker = threading.Thread(target=lookup, name="resolve-primary", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise PrimaryUnresolved(f"{host} does not resolve within {timeout:g} s")
    if failed or not answer:
        raise PrimaryUnresolved(f"{host} does not resolve to an address")
    return list(answer)
