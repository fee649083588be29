"""Per-client rate limiting: a token bucket per identity, answered with 429 and Retry-After.

Theory of operation
-------------------
Each identity has a token bucket of ``burst`` tokens refilled at ``rate`` tokens a second;
a request takes one token or is refused. The bucket is stored as a single float, its
*theoretical arrival time* (TAT, as in the GCRA of ATM traffic policing, which is the same
token bucket written differently): the time at which the bucket would be full again. With
``interval = 1 / rate`` and ``tolerance = (burst - 1) * interval``, a request at ``now``:

    tat = max(stored, now)
    tat - now > tolerance  ->  refuse; one token is back after (tat - now - tolerance) s
    otherwise              ->  accept; store tat + interval

A bucket whose TAT is in the past is full, and a full bucket behaves exactly like no bucket,
so it can be forgotten. The buckets live in an ``OrderedDict`` in least-recently-used order
(moved to the end on every check). The front is the bucket idle the longest; each check pops
at most ``PRUNE_PER_CHECK`` full buckets from the front, which is O(1) and keeps pace with
insertions. A bucket is full at the latest ``burst / rate`` seconds after its last use, so
after pruning only identities seen in that window remain. ``max_buckets`` is the hard cap
against a flood of distinct identities within one window: the least recently used bucket
is evicted (that client gets a fresh, full bucket: under such a flood, memory wins).

One identity's bucket is never read or written on behalf of another; only eviction at the
cap ties them together, and it is counted in ``evicted``.

Off is not a state of this class: ``rate`` must be positive, and ``from_config`` returns
None when ``requests_per_second`` is 0, so the type checker makes callers handle "no
limiter" (and skip working out the identity at all).

``rate_identity`` picks what a bucket belongs to: the API key's label when auth is on (a
client cannot escape its key's limit by changing address), else the client address from
``clientaddr`` (X-Forwarded-For only from trusted proxies). IPv6 clients are counted per
/64, because one host is routinely given a whole /64 and could rotate through it.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from clawproxy.config import RateLimitConfig
from clawproxy.errors import RateLimited
from clawproxy.policy.clientaddr import PARSE_CACHE_SIZE, IPAddress, TrustedProxies, client_address

DEFAULT_MAX_BUCKETS: Final = 65536
# Full buckets dropped per check at most: any number >= 2 outpaces the one insertion a check
# can make, and a small one bounds the work of a single request after a quiet spell.
PRUNE_PER_CHECK: Final = 8
# Retry-After is whole seconds (RFC 9110 10.2.3); telling a client "0" invites a hammering.
MIN_RETRY_AFTER_S: Final = 1
# A request this small a fraction of one token's refill time early counts as on time. The
# TAT is a running sum of floats near a large clock value (loop.time() is seconds since boot),
# so "exactly full" can come out a few ulps over; this absorbs that and nothing more.
SLACK_FRACTION_OF_TOKEN: Final = 1 / 1024
# One IPv6 host usually owns its whole /64 (RFC 4291 interface identifiers, SLAAC).
IPV6_CLIENT_PREFIX_BITS: Final = 64


class RateLimiter:
    """Token buckets keyed by identity, with bounded memory. Single event loop, no locks."""

    __slots__ = (
        "_buckets",
        "_clock",
        "_interval",
        "_max_buckets",
        "_slack",
        "_tolerance",
        "burst",
        "evicted",
        "limited",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float],
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        """``rate`` tokens a second (> 0), ``burst`` tokens a bucket (>= 1); ``clock`` returns
        monotonic seconds (``loop.time`` in the server, a fake in tests)."""
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets!r}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_buckets = max_buckets
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._slack = self._interval * SLACK_FRACTION_OF_TOKEN
        self._buckets: OrderedDict[str, float] = OrderedDict()
        # Counters for metrics: requests refused, and buckets evicted at the cap.
        self.limited = 0
        self.evicted = 0

    @classmethod
    def from_config(
        cls,
        config: RateLimitConfig,
        *,
        clock: Callable[[], float],
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> RateLimiter | None:
        """The limiter for ``gateway.rate_limit``, or None when it is off (rate 0)."""
        if config.requests_per_second == 0:
            return None
        return cls(config.requests_per_second, config.burst, clock=clock, max_buckets=max_buckets)

    def __len__(self) -> int:
        """Buckets held: identities seen recently whose bucket is not known to be full."""
        return len(self._buckets)

    def __repr__(self) -> str:
        return (
            f"<RateLimiter rate={self.rate:g}/s burst={self.burst} buckets={len(self)} "
            f"limited={self.limited} evicted={self.evicted}>"
        )

    def check(self, identity: str) -> None:
        """Take one token from ``identity``'s bucket, or raise RateLimited (429) with a
        ``Retry-After`` of the whole seconds until a token is back."""
        now = self._clock()
        self._prune(now)
        buckets = self._buckets
        stored = buckets.get(identity)
        if stored is None:
            if len(buckets) >= self._max_buckets:
                buckets.popitem(last=False)
                self.evicted += 1
            tat = now
        else:
            buckets.move_to_end(identity)
            tat = stored if stored > now else now
        wait = tat - now - self._tolerance
        if wait > self._slack:
            # Only a known bucket gets here: a new one is full and burst >= 1 token.
            self.limited += 1
            raise self._refusal(wait)
        buckets[identity] = tat + self._interval

    def snapshot(self) -> dict[str, float]:
        """Settings and counters for metrics and the admin page."""
        return {
            "requests_per_second": self.rate,
            "burst": self.burst,
            "buckets": len(self),
            "limited": self.limited,
            "evicted": self.evicted,
        }

    def _prune(self, now: float) -> None:
        buckets = self._buckets
        for _ in range(PRUNE_PER_CHECK):
            if not buckets:
                return
            oldest = next(iter(buckets.values()))
            if oldest > now:
                return  # Not full yet; the ones behind it were used even more recently.
            buckets.popitem(last=False)

    def _refusal(self, wait_s: float) -> RateLimited:
        return rate_limited(self.rate, self.burst, wait_s - self._slack)


def rate_limited(rate: float, burst: int, wait_s: float) -> RateLimited:
    """The 429 for a client that must wait ``wait_s`` seconds for its next token (shared by
    the local buckets and the ones shared through Redis)."""
    retry_after = max(MIN_RETRY_AFTER_S, math.ceil(wait_s))
    return RateLimited(
        f"rate limit exceeded ({rate:g} requests per second, burst {burst}); "
        f"retry after {retry_after} s",
        headers=((b"retry-after", str(retry_after).encode("ascii")),),
    )


def rate_identity(
    key_label: str | None,
    peer: str,
    headers: list[tuple[bytes, bytes]],
    trusted: TrustedProxies,
) -> str:
    """What a request's bucket is keyed by: ``key:LABEL`` when it authenticated with an API
    key, else ``ip:ADDRESS`` (IPv4), ``ip:PREFIX/64`` (IPv6) or ``peer:PEER`` (not an IP).
    The prefixes keep a label from ever sharing a bucket with an address."""
    if key_label is not None:
        return "key:" + key_label
    address = client_address(peer, headers, trusted)
    if address is None:
        return "peer:" + peer
    if address.ip.version == 4:
        return "ip:" + address.text
    return _ipv6_identity(address.ip)


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _ipv6_identity(ip: IPAddress) -> str:
    # Cached: formatting an IPv6 address costs more than the whole bucket check.
    host_bits = 128 - IPV6_CLIENT_PREFIX_BITS
    prefix = ipaddress.IPv6Address(int(ip) >> host_bits << host_bits)
    return f"ip:{prefix}/{IPV6_CLIENT_PREFIX_BITS}"
