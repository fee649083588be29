"""Tests for the token-bucket limiter and for telling clients apart (X-Forwarded-For)."""

from __future__ import annotations

import math

import pytest

from clawproxy.config import RateLimitConfig
from clawproxy.errors import RateLimited
from clawproxy.policy.clientaddr import (
    MAX_FORWARDED_HOPS,
    TrustedProxies,
    client_identity,
    forwarded_for,
)
from clawproxy.policy.ratelimit import RateLimiter, rate_identity

# A clock value like loop.time() on a box up for weeks: float error shows at this size.
START_S = 2_000_000.123


class FakeClock:
    def __init__(self, now: float = START_S) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(rate: float, burst: int, clock: FakeClock, **kwargs: int) -> RateLimiter:
    return RateLimiter(rate, burst, clock=clock, **kwargs)


def retry_after(limit: RateLimiter, identity: str) -> int:
    """Seconds the 429 for ``identity`` tells it to wait (and that it is a proper 429)."""
    with pytest.raises(RateLimited) as info:
        limit.check(identity)
    error = info.value
    assert error.status == 429
    assert error.code == "rate_limit_exceeded"
    ((name, value),) = error.headers
    assert name == b"retry-after"
    assert value.isdigit()
    assert int(value) >= 1
    assert f"retry after {int(value)} s" in error.message
    return int(value)


def take(limit: RateLimiter, identity: str, count: int) -> None:
    for _ in range(count):
        limit.check(identity)


# --- the bucket -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "wait_s"),
    [
        (1.0, 1, 1),
        (2.0, 3, 1),  # Half a second to the next token: rounded up to 1.
        (10.0, 10, 1),
        (0.25, 2, 4),  # One token every 4 s.
        (1 / 3, 5, 3),
        (0.1, 1, 10),
    ],
)
def test_burst_then_429_with_the_refill_time(rate: float, burst: int, wait_s: int) -> None:
    clock = FakeClock()
    limit = limiter(rate, burst, clock)
    take(limit, "a", burst)  # A rested client gets the whole burst at one instant.
    assert retry_after(limit, "a") == wait_s
    assert retry_after(limit, "a") == wait_s  # A refused request takes no token.
    clock.advance(0.99 / rate)
    assert retry_after(limit, "a") == 1  # Almost there: still refused, and never "0".
    clock.advance(0.01 / rate)
    limit.check("a")  # Exactly one token is back...
    assert retry_after(limit, "a") == wait_s  # ...and only one.
    assert limit.limited == 4


def test_retry_after_rounds_up_whole_seconds() -> None:
    clock = FakeClock()
    limit = limiter(0.4, 1, clock)  # A token every 2.5 s.
    limit.check("a")
    assert retry_after(limit, "a") == 3
    clock.advance(1.6)
    assert retry_after(limit, "a") == 1
    clock.advance(0.8)
    assert retry_after(limit, "a") == 1


def test_sustained_rate_is_exact_over_time() -> None:
    clock = FakeClock()
    limit = limiter(3.0, 2, clock)
    accepted = 0
    for _ in range(3000):  # 100 s in steps of 1/30 s: 300 tokens plus the burst of 2.
        clock.advance(1 / 30)
        try:
            limit.check("a")
            accepted += 1
        except RateLimited:
            pass
    assert accepted in (301, 302)


def test_refill_never_exceeds_the_burst() -> None:
    clock = FakeClock()
    limit = limiter(5.0, 4, clock)
    take(limit, "a", 4)
    clock.advance(3600)
    take(limit, "a", 4)
    retry_after(limit, "a")


def test_identities_are_isolated() -> None:
    clock = FakeClock()
    limit = limiter(1.0, 3, clock)
    take(limit, "key:alice", 3)
    retry_after(limit, "key:alice")
    take(limit, "key:bob", 3)  # Untouched by alice.
    retry_after(limit, "key:bob")
    clock.advance(1)
    limit.check("key:alice")
    limit.check("key:bob")


def test_idle_buckets_are_dropped() -> None:
    """100k distinct clients, 1 ms apart: only those seen in the last burst/rate seconds
    (0.5 s here, 500 requests) can hold a bucket."""
    clock = FakeClock()
    limit = limiter(10.0, 5, clock)
    peak = 0
    for i in range(100_000):
        clock.advance(0.001)
        limit.check(f"ip:{i}")
        peak = max(peak, len(limit))
    assert peak <= 502
    assert limit.evicted == 0  # The bound came from pruning, not from the cap.
    clock.advance(10)
    limit.check("late")
    assert len(limit) < 500  # Pruning goes on, a few buckets a check.


def test_a_bucket_that_is_not_full_is_kept() -> None:
    clock = FakeClock()
    limit = limiter(1.0, 2, clock)
    take(limit, "busy", 2)
    for i in range(100):
        clock.advance(0.001)
        limit.check(f"other-{i}")
    assert retry_after(limit, "busy") == 1  # Still remembered, still limited.


def test_max_buckets_evicts_the_least_recently_used() -> None:
    clock = FakeClock()
    limit = limiter(1.0, 1, clock, max_buckets=3)
    for name in ("a", "b", "c"):
        limit.check(name)
    retry_after(limit, "a")  # Using "a" (even refused) makes it recent; "b" is now oldest.
    limit.check("d")
    assert len(limit) == 3
    assert limit.evicted == 1
    retry_after(limit, "a")
    retry_after(limit, "c")
    retry_after(limit, "d")
    limit.check("b")  # Evicted, so it starts again with a full bucket.


def test_max_buckets_holds_under_a_flood() -> None:
    clock = FakeClock()
    limit = limiter(0.001, 1, clock, max_buckets=100)
    for i in range(10_000):
        limit.check(f"ip:{i}")
    assert len(limit) == 100
    assert limit.evicted == 9_900
    retry_after(limit, "ip:9999")


def test_snapshot_and_repr() -> None:
    clock = FakeClock()
    limit = limiter(2.0, 1, clock)
    limit.check("a")
    retry_after(limit, "a")
    assert limit.snapshot() == {
        "requests_per_second": 2.0,
        "burst": 1,
        "buckets": 1,
        "limited": 1,
        "evicted": 0,
    }
    assert repr(limit) == "<RateLimiter rate=2/s burst=1 buckets=1 limited=1 evicted=0>"


@pytest.mark.parametrize(
    ("rate", "burst", "max_buckets", "reason"),
    [
        (0.0, 1, 10, "rate must be a positive number"),
        (-1.0, 1, 10, "rate must be a positive number"),
        (math.nan, 1, 10, "rate must be a positive number"),
        (math.inf, 1, 10, "rate must be a positive number"),
        (1.0, 0, 10, "burst must be at least 1"),
        (1.0, 1, 0, "max_buckets must be at least 1"),
    ],
)
def test_bad_settings(rate: float, burst: int, max_buckets: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        RateLimiter(rate, burst, clock=FakeClock(), max_buckets=max_buckets)


def test_from_config() -> None:
    clock = FakeClock()
    assert RateLimiter.from_config(RateLimitConfig(), clock=clock) is None  # Off by default.
    limit = RateLimiter.from_config(RateLimitConfig(requests_per_second=4, burst=2), clock=clock)
    assert limit is not None
    assert (limit.rate, limit.burst) == (4, 2)
    take(limit, "a", 2)
    retry_after(limit, "a")


# --- who is the client --------------------------------------------------------------------

LOOPBACK = TrustedProxies(["127.0.0.1", "::1"])


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x")] + [(b"x-forwarded-for", v.encode()) for v in values]


def test_trusted_proxies_contains() -> None:
    trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "fd00::/8", "::1"])
    for ip in ("127.0.0.1", "10.1.2.3", "fd12::5", "::1", "::ffff:127.0.0.1", "0:0::1"):
        assert trusted.contains(ip), ip
    for ip in ("127.0.0.2", "11.0.0.1", "fe80::1", "-", "", "localhost", "10.0.0.1:80"):
        assert not trusted.contains(ip), ip
    assert not TrustedProxies([]).contains("127.0.0.1")
    assert not TrustedProxies([])
    assert repr(TrustedProxies(["::1", "10.0.0.0/8"])) == "<TrustedProxies ::1 10.0.0.0/8>"


def test_trusted_proxies_names_a_bad_entry() -> None:
    with pytest.raises(ValueError, match=r"trusted proxy \[1\]: .*nope"):
        TrustedProxies(["127.0.0.1", "nope"])


def test_untrusted_peer_cannot_choose_its_identity() -> None:
    headers = xff("1.2.3.4")
    assert client_identity("198.51.100.9", headers, LOOPBACK) == "198.51.100.9"
    assert client_identity("198.51.100.9", headers, TrustedProxies([])) == "198.51.100.9"
    assert client_identity("127.0.0.1", headers, TrustedProxies([])) == "127.0.0.1"


def test_trusted_peer_forwards_the_client() -> None:
    assert client_identity("127.0.0.1", xff("203.0.113.7"), LOOPBACK) == "203.0.113.7"
    assert client_identity("::1", xff(" 203.0.113.7 "), LOOPBACK) == "203.0.113.7"
    assert client_identity("127.0.0.1", xff(), LOOPBACK) == "127.0.0.1"


def test_spoofed_entries_left_of_the_proxy_are_ignored() -> None:
    # The client sent "6.6.6.6"; nginx appended the address it really saw.
    headers = xff("6.6.6.6, 203.0.113.7")
    assert client_identity("127.0.0.1", headers, LOOPBACK) == "203.0.113.7"


def test_multi_hop_chain_and_several_header_lines() -> None:
    trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    headers = xff("6.6.6.6, 203.0.113.7", "10.0.0.2,10.9.9.9")
    assert forwarded_for(headers) == ["6.6.6.6", "203.0.113.7", "10.0.0.2", "10.9.9.9"]
    assert client_identity("127.0.0.1", headers, trusted) == "203.0.113.7"
    # Every hop trusted: the left-most is as far back as we can see.
    assert client_identity("127.0.0.1", xff("10.0.0.5, 10.0.0.2"), trusted) == "10.0.0.5"


@pytest.mark.parametrize(
    "value",
    [
        "203.0.113.7, garbage",
        "unknown",
        "203.0.113.7:5555",
        "203.0.113.7, ",
        ",",
        "203.0.113.7 198.51.100.1",
        "::ffff:zz",
        "2001:db8::1%",
    ],
)
def test_garbage_forwarded_for_falls_back_to_the_peer(value: str) -> None:
    assert client_identity("127.0.0.1", xff(value), LOOPBACK) == "127.0.0.1"


def test_non_ascii_forwarded_for_falls_back_to_the_peer() -> None:
    headers = [(b"x-forwarded-for", b"203.0.113.7\xd0\xba")]
    assert client_identity("127.0.0.1", headers, LOOPBACK) == "127.0.0.1"


def test_garbage_left_of_the_client_does_not_matter() -> None:
    assert client_identity("127.0.0.1", xff("garbage, 203.0.113.7"), LOOPBACK) == "203.0.113.7"


def test_ipv6_and_mapped_addresses_are_canonical() -> None:
    assert client_identity("::1", xff("2001:DB8:0:0::1"), LOOPBACK) == "2001:db8::1"
    assert client_identity("::1", xff("[2001:db8::1]"), LOOPBACK) == "2001:db8::1"
    assert client_identity("::ffff:127.0.0.1", xff("2001:db8::2"), LOOPBACK) == "2001:db8::2"
    assert client_identity("::ffff:198.51.100.9", xff("1.2.3.4"), LOOPBACK) == "198.51.100.9"
    assert client_identity("::1", xff("::ffff:203.0.113.7"), LOOPBACK) == "203.0.113.7"
    assert client_identity("2001:db8::9", [], LOOPBACK) == "2001:db8::9"


def test_non_ip_peer_is_returned_as_is() -> None:
    assert client_identity("-", xff("1.2.3.4"), LOOPBACK) == "-"


def test_forwarded_hops_are_capped() -> None:
    trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    hops = ["10.0.0.1"] * (MAX_FORWARDED_HOPS - 1)
    within = xff(", ".join(["203.0.113.7", *hops]))
    assert client_identity("127.0.0.1", within, trusted) == "203.0.113.7"
    beyond = xff(", ".join(["203.0.113.7", "10.0.0.2", *hops]))
    assert client_identity("127.0.0.1", beyond, trusted) == "10.0.0.2"


# --- what a bucket belongs to -------------------------------------------------------------


def test_rate_identity_prefers_the_key_label() -> None:
    assert rate_identity("alice", "198.51.100.9", xff("1.2.3.4"), LOOPBACK) == "key:alice"
    assert rate_identity("127.0.0.1", "127.0.0.1", [], LOOPBACK) != rate_identity(
        None, "127.0.0.1", [], LOOPBACK
    )


def test_rate_identity_by_address() -> None:
    assert rate_identity(None, "198.51.100.9", xff("1.2.3.4"), LOOPBACK) == "ip:198.51.100.9"
    assert rate_identity(None, "127.0.0.1", xff("1.2.3.4"), LOOPBACK) == "ip:1.2.3.4"
    assert rate_identity(None, "-", [], LOOPBACK) == "peer:-"


def test_ipv6_clients_share_their_64() -> None:
    first = rate_identity(None, "2001:db8:1:2:aaaa::1", [], LOOPBACK)
    assert first == "ip:2001:db8:1:2::/64"
    assert rate_identity(None, "2001:db8:1:2:ffff:1:2:3", [], LOOPBACK) == first
    assert rate_identity(None, "2001:db8:1:3::1", [], LOOPBACK) != first
    assert rate_identity(None, "::1", xff("2001:db8:1:2::77"), LOOPBACK) == first


def test_a_limited_key_cannot_escape_by_spoofing_forwarded_for() -> None:
    """RELIABILITY row 31: key A exhausts its bucket, key B is unaffected, and A sending a
    fresh X-Forwarded-For from an untrusted peer (or from anywhere) is still A."""
    clock = FakeClock()
    limit = limiter(1.0, 2, clock)
    take(limit, rate_identity("A", "198.51.100.9", [], LOOPBACK), 2)
    limit.check(rate_identity("B", "198.51.100.9", [], LOOPBACK))
    retry_after(limit, rate_identity("A", "198.51.100.9", xff("1.2.3.4"), LOOPBACK))
    retry_after(limit, rate_identity("A", "127.0.0.1", xff("1.2.3.5"), LOOPBACK))


def test_an_anonymous_client_cannot_escape_by_rotating_forwarded_for() -> None:
    clock = FakeClock()
    limit = limiter(1.0, 2, clock)
    for i in range(2):
        limit.check(rate_identity(None, "198.51.100.9", xff(f"1.2.3.{i}"), LOOPBACK))
    retry_after(limit, rate_identity(None, "198.51.100.9", xff("1.2.3.99"), LOOPBACK))
