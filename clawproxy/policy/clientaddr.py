"""Who is the client? The peer address, or what a trusted proxy says in X-Forwarded-For.

Theory of operation
-------------------
``X-Forwarded-For`` is a comma-separated list that each proxy extends on the right with the
address it received the request from. Only the entries added by proxies we trust are
facts; anything further left may have been written by the client itself. So:

1. If the TCP peer is not a trusted proxy, the header is ignored and the peer is the client.
   A client talking to us directly cannot choose its identity.
2. Otherwise walk the header from the right, skipping trusted proxies; the first address
   that is not trusted is the client (the hop that the innermost trusted proxy saw).
3. A malformed entry met on that walk means a proxy chain we do not understand: the peer
   is used instead, which is the conservative answer (it is never client-chosen).
4. If every entry is trusted, the left-most one is the client (say, a health check sent
   from the proxy host itself).

Several ``X-Forwarded-For`` lines are one list in order (RFC 9110 5.3). At most
``MAX_FORWARDED_HOPS`` entries are examined, so a long header costs a bounded walk.

Addresses are compared and returned in canonical form (``ipaddress``), and an IPv4-mapped
IPv6 peer (``::ffff:127.0.0.1``, seen on a dual-stack ``::`` listener) counts as its IPv4
address, so one client has one spelling. A peer that is not an IP address at all (a Unix
socket, shown as ``-``) is returned unchanged and is never trusted.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Final, NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR_HEADER: Final = b"x-forwarded-for"
# Real chains are one to three proxies deep; beyond this many trusted hops the header is
# more likely an attack on our CPU than a topology.
MAX_FORWARDED_HOPS: Final = 16
# ipaddress takes about 5 us to parse and up to 14 us to format an IPv6 address, and the
# same few peers and proxies come back on every request, so parses are cached with their
# canonical text. Bounded: distinct forwarded addresses only churn it.
PARSE_CACHE_SIZE: Final = 4096


class Address(NamedTuple):
    """A parsed IP address and its canonical text (what identities and logs show)."""

    ip: IPAddress
    text: str


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def parse_address(text: str) -> Address | None:
    """The canonical address for ``text`` (IPv4-mapped IPv6 unwrapped), or None if it is not
    a bare IP address. ``[::1]`` (bracketed IPv6) is accepted; ports are not."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = canonical(ipaddress.ip_address(text))
    except ValueError:
        return None
    return Address(ip, str(ip))


def canonical(ip: IPAddress) -> IPAddress:
    """``ip``, with an IPv4-mapped IPv6 address unwrapped to its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """The set of proxy addresses and networks whose X-Forwarded-For is believed.

    Single addresses live in a set of canonical strings, so the common case (one or two
    loopback entries) is one hash lookup; only networks need an ``in`` test each.
    """

    __slots__ = ("_hosts", "_networks")

    def __init__(self, entries: Iterable[str]) -> None:
        """Build from IP addresses and CIDR networks; raises ValueError naming the index."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for index, entry in enumerate(entries):
            try:
                network = ipaddress.ip_network(entry)
            except ValueError as exc:
                raise ValueError(f"trusted proxy [{index}]: {exc}") from None
            if network.num_addresses == 1:
                hosts.add(str(canonical(network.network_address)))
            else:
                networks.append(network)
        self._hosts = frozenset(hosts)
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._hosts or self._networks)

    def __repr__(self) -> str:
        entries = sorted(self._hosts) + [str(n) for n in self._networks]
        return f"<TrustedProxies {' '.join(entries) or '(none)'}>"

    def contains(self, ip: str) -> bool:
        """True if ``ip`` is a trusted proxy; False for anything that is not an address."""
        if ip in self._hosts:
            return True
        address = parse_address(ip) if self else None
        return address is not None and self.contains_address(address)

    def contains_address(self, address: Address) -> bool:
        """``contains`` for an address that is already parsed."""
        if address.text in self._hosts:
            return True
        # A version mismatch is simply "not in": ipaddress returns False for it.
        return any(address.ip in network for network in self._networks)


def forwarded_for(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """Every X-Forwarded-For entry, left to right across all such header lines, stripped.
    Non-ASCII bytes become U+FFFD, which no address contains, so they read as malformed."""
    entries: list[str] = []
    for name, value in headers:
        if name == FORWARDED_FOR_HEADER:
            text = value.decode("ascii", "replace")
            entries.extend(part.strip() for part in text.split(","))
    return entries


def client_address(
    peer: str, headers: list[tuple[bytes, bytes]], trusted: TrustedProxies
) -> Address | None:
    """The client's address by the rules in the module docstring; None if the peer is not an
    IP address (then the peer string itself is the identity)."""
    peer_address = parse_address(peer)
    if peer_address is None or not trusted or not trusted.contains_address(peer_address):
        return peer_address
    entries = forwarded_for(headers)
    leftmost = peer_address
    for entry in reversed(entries[-MAX_FORWARDED_HOPS:]):
        address = parse_address(entry)
        if address is None:
            return peer_address
        if not trusted.contains_address(address):
            return address
        leftmost = address
    return leftmost


def client_identity(peer: str, headers: list[tuple[bytes, bytes]], trusted: TrustedProxies) -> str:
    """The client's IP address as a canonical string: the peer, unless the peer is a trusted
    proxy, in which case the right-most untrusted X-Forwarded-For address.

    ``peer`` is the TCP peer's address; ``headers`` are the request's (lower-case names).
    """
    address = client_address(peer, headers, trusted)
    return peer if address is None else address.text
