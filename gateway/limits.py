"""Limits per client address: concurrent connections, messages and recipients a minute.

The defaults are far above what a busy sending server does, so that only a client gone
wrong (or hostile) meets them; loopback and the configured trusted networks are never
limited. Rates are token buckets (a minute's allowance, refilled evenly), so a client
that sent its minute's worth may go on at the limit's pace, not wait for a window to
end. An IPv6 client is counted by its /64, which one host commonly holds whole.

Memory is bounded: a bucket that has refilled is forgotten (it says nothing a new one
would not), and past ``max_clients`` the least recently seen clients are forgotten too.

Thread-safe: one lock guards the state, so the event loop and worker threads may share
one :class:`ClientLimits`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try again later"
TOO_MANY_MESSAGES = "451 4.7.1 Too many messages from your address this minute, try again later"
TOO_MANY_RECIPIENTS = "451 4.7.1 Too many recipients from your address this minute, try again later"

Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class GatewayLimits:
    """The receiver's ``[gateway]`` settings, with their defaults."""

    trusted_networks: tuple[Network, ...] = ()
    max_connections_per_client: int = 50
    max_messages_per_minute: int = 1_000
    max_recipients_per_minute: int = 5_000
    callout_positive_seconds: float = 3_600.0
    callout_negative_seconds: float = 600.0
    max_message_size: int = 50 * 1024 * 1024


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings (``192.0.2.0/24``, ``2001:db8::/32``, or one address) as networks;
    ValueError naming the entry that is none."""
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ip_network(entry.strip(), strict=False))
        except ValueError as error:
            raise ValueError(f"not a network (CIDR): {entry!r}") from error
    return tuple(networks)


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class ClientLimits:
    """The counts of each client, and the reply refusing it past a limit."""

    def __init__(
        self,
        limits: GatewayLimits | None = None,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or GatewayLimits()
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._connections: dict[str, int] = {}
        self._messages: OrderedDict[str, _Bucket] = OrderedDict()
        self._recipients: OrderedDict[str, _Bucket] = OrderedDict()

    def exempt(self, client_ip: str) -> bool:
        """True for loopback and addresses in the trusted networks."""
        try:
            address = ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback:
            return True
        return any(address in network for network in self.limits.trusted_networks)

    def open_connection(self, client_ip: str) -> str | None:
        """Count a new connection; the 421 reply when the client has too many already
        (then it is not counted). Each counted one needs :meth:`close_connection`."""
        if self.exempt(client_ip):
            return None
        key = _client_key(client_ip)
        with self._lock:
            count = self._connections.get(key, 0)
            if count >= self.limits.max_connections_per_client:
                return TOO_MANY_CONNECTIONS
            self._connections[key] = count + 1
        return None

    def close_connection(self, client_ip: str) -> None:
        """A connection counted by :meth:`open_connection` has ended."""
        if self.exempt(client_ip):
            return
        key = _client_key(client_ip)
        with self._lock:
            count = self._connections.get(key, 0) - 1
            if count > 0:
                self._connections[key] = count
            else:
                self._connections.pop(key, None)

    def allow_message(self, client_ip: str) -> str | None:
        """Count a message (at MAIL); the 451 reply when the client is past its rate."""
        limit = self.limits.max_messages_per_minute
        if self.exempt(client_ip) or self._take(self._messages, client_ip, limit):
            return None
        return TOO_MANY_MESSAGES

    def allow_recipient(self, client_ip: str) -> str | None:
        """Count a recipient (at RCPT); the 451 reply when the client is past its rate."""
        limit = self.limits.max_recipients_per_minute
        if self.exempt(client_ip) or self._take(self._recipients, client_ip, limit):
            return None
        return TOO_MANY_RECIPIENTS

    def tracked(self) -> int:
        """Clients with state kept now (connections or a bucket not yet refilled)."""
        with self._lock:
            return len(self._connections.keys() | self._messages.keys() | self._recipients.keys())

    def _take(self, buckets: OrderedDict[str, _Bucket], client_ip: str, limit: int) -> bool:
        key = _client_key(client_ip)
        now = self._clock()
        rate = limit / 60.0
        with self._lock:
            bucket = buckets.pop(key, None)
            if bucket is None:
                bucket = _Bucket(float(limit), now)
            else:
                bucket.tokens = min(float(limit), bucket.tokens + (now - bucket.stamp) * rate)
                bucket.stamp = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            buckets[key] = bucket  # now the most recently seen
            self._forget(buckets, now, rate, limit)
        return allowed

    def _forget(
        self, buckets: OrderedDict[str, _Bucket], now: float, rate: float, limit: int
    ) -> None:
        """Drop buckets refilled by now (they are the least recently seen, at the front),
        and the oldest ones past max_clients."""
        while buckets:
            key, oldest = next(iter(buckets.items()))
            refilled = oldest.tokens + (now - oldest.stamp) * rate >= limit
            if not refilled and len(buckets) <= self.max_clients:
                return
            del buckets[key]


def _client_key(client_ip: str) -> str:
    """The client as limits count it: its address, or its /64 for IPv6."""
    try:
        address = ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(IPv6Network((address, 64), strict=False))
    return str(address)
